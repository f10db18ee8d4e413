"""The tasks of data on this machine: CIFAR-10's python batches, a UTF-8 text corpus, MNIST-1D generated locally.

Nothing here downloads anything: a loader reads only what is already on disk
(or, for MNIST-1D, what the ``mnist1d`` package generates) and raises
:class:`~esper_kernel.data.tasks.TaskError` naming the expected path when it is missing.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from esper_kernel.data.tasks import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGE_SIZE,
    TaskData,
    TaskError,
)

# --------------------------------------------------------------------------------------


def _cifar_dir(data_dir: Path) -> Path:
    nested = data_dir / "cifar-10-batches-py"
    return nested if nested.is_dir() else data_dir


#: Every global a CIFAR-10 batch pickle refers to: numpy's array reconstruction (numpy 1
#: and 2 spell its module differently) and the codec protocol 2 uses for bytes.
_CIFAR_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch and nothing else.

    Unpickling calls whatever callables the file names, so a crafted
    ``data_batch_1`` could run code. Only the globals a batch is made of are
    resolved; anything else is refused before it is imported or called.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: a CIFAR-10 batch holds only arrays, lists, bytes and numbers"
            )
        if module == "numpy.core.multiarray":
            # numpy 2 warns on the old module path; the object is the same.
            try:
                import numpy._core.multiarray as multiarray
            except ImportError:
                return super().find_class(module, name)
            return multiarray._reconstruct
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[Tensor, Tensor]:
    """Read one CIFAR-10 pickle into uint8 ``[N, 3, 32, 32]`` images and int64 labels."""
    try:
        with path.open("rb") as fh:
            raw: Any = _CifarUnpickler(fh, encoding="bytes").load()
    except Exception as exc:
        # Any failure to parse is the file's fault, whatever part of pickle noticed it.
        raise TaskError(f"{path} is not a readable CIFAR-10 pickle: {type(exc).__name__}: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise TaskError(f"{path} is not a CIFAR-10 batch: expected a dict")

    def field(key: str) -> Any:
        # The official files have bytes keys; re-pickled copies often have str keys.
        for k in (key.encode(), key):
            if k in raw:
                return raw[k]
        raise TaskError(f"{path} is not a CIFAR-10 batch: missing key {key!r}")

    try:
        data = torch.as_tensor(_as_uint8_rows(field("data"), path))
        labels = torch.as_tensor(list(field("labels")), dtype=torch.long)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise TaskError(f"{path} is not a CIFAR-10 batch: {type(exc).__name__}: {exc}") from exc
    if data.shape[0] != labels.shape[0]:
        raise TaskError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    if labels.numel() and (labels.min() < 0 or labels.max() > 9):
        raise TaskError(f"{path}: labels must be in [0, 9]")
    return data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE), labels


def _as_uint8_rows(data: Any, path: Path) -> Tensor:
    # The official files hold a numpy array; going through bytes keeps this module free of
    # a hard numpy dependency while still accepting nested lists from hand-made files.
    if hasattr(data, "tobytes") and hasattr(data, "shape"):
        shape = tuple(int(s) for s in data.shape)
        flat = torch.frombuffer(bytearray(data.astype("uint8").tobytes()), dtype=torch.uint8)
        tensor = flat.reshape(shape)
    else:
        tensor = torch.as_tensor(data, dtype=torch.uint8)
    if tensor.dim() != 2 or tensor.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE:
        raise TaskError(f"{path}: 'data' must be [N, 3072] uint8, got {tuple(tensor.shape)}")
    return tensor


def _first(x: Tensor, y: Tensor, n: int | None, key: str, where: str) -> tuple[Tensor, Tensor]:
    """The first ``n`` examples; more than there are is refused, never silently fewer."""
    if n is None:
        return x, y
    if n < 1:
        raise TaskError(f"{key} must be >= 1, got {n}")
    if n > x.shape[0]:
        raise TaskError(f"{key}={n}, but {where} holds only {x.shape[0]} examples")
    return x[:n], y[:n]


def _normalise_cifar(images: Tensor) -> Tensor:
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return ((images.float() / 255.0 - mean) / std).contiguous()


def load_cifar10(data_dir: Path, n_train: int | None = None, n_val: int | None = None) -> TaskData:
    """Load CIFAR-10 from the python-pickle files already on disk; never downloads.

    The batches are looked up in ``data_dir/cifar-10-batches-py/`` if that directory exists,
    otherwise in ``data_dir`` itself. ``data_batch_1`` and ``test_batch`` are required; every
    other ``data_batch_<k>`` present is also loaded (in order of ``k``), so a partial copy
    still works. The training split is the data batches, the validation split is
    ``test_batch``; ``n_train``/``n_val`` keep only the first that many of each.

    Pixels are scaled to [0, 1] and normalised with :data:`CIFAR10_MEAN`/:data:`CIFAR10_STD`.
    """
    root = _cifar_dir(Path(data_dir))
    for required in ("data_batch_1", "test_batch"):
        if not (root / required).is_file():
            raise TaskError(
                f"CIFAR-10 file {root / required} not found. Place the extracted "
                "'cifar-10-batches-py' files (data_batch_1..5, test_batch) in "
                f"{Path(data_dir)} or {Path(data_dir) / 'cifar-10-batches-py'}; "
                "Esper does not download data sets."
            )
    for key, value in (("n_train", n_train), ("n_val", n_val)):
        if value is not None and value < 1:
            raise TaskError(f"{key} must be >= 1, got {value}")

    batch_paths = sorted(
        (p for p in root.glob("data_batch_*") if p.name.removeprefix("data_batch_").isdigit()),
        key=lambda p: int(p.name.removeprefix("data_batch_")),
    )
    train_parts = [_read_cifar_batch(p) for p in batch_paths]
    train_x = torch.cat([x for x, _ in train_parts])
    train_y = torch.cat([y for _, y in train_parts])
    val_x, val_y = _read_cifar_batch(root / "test_batch")
    train_x, train_y = _first(train_x, train_y, n_train, "n_train", f"the training batches in {root}")
    val_x, val_y = _first(val_x, val_y, n_val, "n_val", f"{root / 'test_batch'}")
    return TaskData(
        name="cifar10",
        topology="cnn",
        train_x=_normalise_cifar(train_x),
        train_y=train_y.contiguous(),
        val_x=_normalise_cifar(val_x),
        val_y=val_y.contiguous(),
        num_classes=10,
        seq_len=None,
    )


# --------------------------------------------------------------------------------------
# character-level text
# --------------------------------------------------------------------------------------


def _read_text(data_dir: Path) -> str:
    if data_dir.is_file():
        files = [data_dir]
    elif data_dir.is_dir():
        files = sorted(data_dir.glob("*.txt"))
        if not files:
            raise TaskError(
                f"no *.txt files in {data_dir}; place UTF-8 text files there (Esper does not download data sets)"
            )
    else:
        raise TaskError(f"text data path {data_dir} does not exist")
    parts: list[str] = []
    for path in files:
        try:
            parts.append(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise TaskError(f"{path} is not valid UTF-8: {exc}") from exc
    return "".join(parts)


def load_text(
    data_dir: Path,
    seq_len: int = 64,
    n_val_frac: float = 0.1,
    n_train: int | None = None,
    n_val: int | None = None,
) -> TaskData:
    """Build a character-level causal LM task from local UTF-8 text; never downloads.

    ``data_dir`` is a text file or a directory whose ``*.txt`` files are concatenated in
    name order. The vocabulary is the sorted set of characters (token ``i`` is
    ``vocab[i]``). The text is cut into non-overlapping windows of ``seq_len`` characters,
    each with its next-character targets; the last ``n_val_frac`` of the windows (at least
    one) form the validation split, so validation text is never seen in training.
    At least ``2 * seq_len + 1`` characters are needed (one window per split).
    ``n_train``/``n_val`` keep the first that many windows of each split; asking for more
    windows than the text holds is refused.
    """
    if seq_len < 1:
        raise TaskError(f"seq_len must be >= 1, got {seq_len}")
    if not 0.0 < n_val_frac < 1.0:
        raise TaskError(f"n_val_frac must be in (0, 1), got {n_val_frac}")
    path = Path(data_dir)
    text = _read_text(path)
    n_windows = (len(text) - 1) // seq_len if text else 0
    if n_windows < 2:
        raise TaskError(
            f"not enough text in {path}: {len(text)} characters, need at least "
            f"{2 * seq_len + 1} for one training and one validation sequence of "
            f"seq_len={seq_len}"
        )
    vocab = tuple(sorted(set(text)))
    index = {ch: i for i, ch in enumerate(vocab)}
    tokens = torch.tensor([index[ch] for ch in text], dtype=torch.long)
    x = tokens[: n_windows * seq_len].view(n_windows, seq_len)
    y = tokens[1 : n_windows * seq_len + 1].view(n_windows, seq_len)
    val_windows = min(n_windows - 1, max(1, round(n_windows * n_val_frac)))
    split = n_windows - val_windows
    where = f"{path} ({len(text):,} characters, seq_len {seq_len})"
    train_x, train_y = _first(x[:split], y[:split], n_train, "n_train", f"the training split of {where}")
    val_x, val_y = _first(x[split:], y[split:], n_val, "n_val", f"the validation split of {where}")
    return TaskData(
        name="text",
        topology="transformer",
        train_x=train_x.contiguous(),
        train_y=train_y.contiguous(),
        val_x=val_x.contiguous(),
        val_y=val_y.contiguous(),
        num_classes=len(vocab),
        seq_len=seq_len,
        vocab=vocab,
    )


# --------------------------------------------------------------------------------------
# MNIST-1D
# --------------------------------------------------------------------------------------

#: The standard split of ``mnist1d.make_dataset()`` with its default arguments.
MNIST1D_TRAIN, MNIST1D_TEST, MNIST1D_LENGTH = 4000, 1000, 40
_MNIST1D_CACHE: dict[str, tuple[Tensor, Tensor, Tensor, Tensor]] = {}


def _mnist1d_arrays() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``mnist1d.make_dataset()`` with its default arguments, once per process.

    ``make_dataset`` generates the data from templates in about a second; it never
    downloads (``get_dataset`` would, so it is never called). It seeds numpy's and
    Python's global generators, so their state is put back afterwards.
    """
    if "default" not in _MNIST1D_CACHE:
        import random

        import numpy as np
        from mnist1d.data import make_dataset

        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            ds = make_dataset()
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        _MNIST1D_CACHE["default"] = (
            torch.as_tensor(np.asarray(ds["x"], dtype=np.float32))[:, None, :],
            torch.as_tensor(np.asarray(ds["y"], dtype=np.int64)),
            torch.as_tensor(np.asarray(ds["x_test"], dtype=np.float32))[:, None, :],
            torch.as_tensor(np.asarray(ds["y_test"], dtype=np.int64)),
        )
    return _MNIST1D_CACHE["default"]


def load_mnist1d(n_train: int | None = None, n_val: int | None = None) -> TaskData:
    """MNIST-1D (Greydanus 2020) as ``make_dataset()`` generates it: signals ``[N, 1, 40]``.

    The split is the package's standard one, 4,000 training and 1,000 test signals (the
    test signals are the validation split, as the published accuracies are measured on
    them); ``n_train``/``n_val`` keep the first that many of each, and more is refused.
    The data does not depend on the episode seed: every seed sees the same benchmark.
    Needs the ``mnist1d`` extra (``pip install 'esper-kernel[mnist1d]'``).
    """
    train_x, train_y, val_x, val_y = _mnist1d_arrays()
    train_x, train_y = _first(train_x, train_y, n_train, "n_train", "MNIST-1D's training split")
    val_x, val_y = _first(val_x, val_y, n_val, "n_val", "MNIST-1D's test split")
    return TaskData(
        name="mnist1d",
        topology="cnn1d",
        train_x=train_x.contiguous(),
        train_y=train_y.contiguous(),
        val_x=val_x.contiguous(),
        val_y=val_y.contiguous(),
        num_classes=10,
        seq_len=None,
    )


# --------------------------------------------------------------------------------------
# registry
