"""Tests for esper_kernel.data.tasks: generated tasks, local-data loaders and the registry."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from esper_kernel.data.generated import make_sequences, make_shapes
from esper_kernel.data.local import load_cifar10, load_text
from esper_kernel.data.tasks import CIFAR10_MEAN, CIFAR10_STD, TaskData, TaskError, get_task
from esper_kernel.infra.errors import EsperError


@pytest.fixture(scope="module")
def shapes() -> TaskData:
    return make_shapes(0)


# --------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------


def test_shapes_tensors_have_documented_shapes_dtypes_and_normalisation(shapes: TaskData) -> None:
    assert shapes.topology == "cnn"
    assert shapes.num_classes == 10
    assert shapes.seq_len is None
    assert shapes.train_x.shape == (2048, 3, 32, 32)
    assert shapes.val_x.shape == (512, 3, 32, 32)
    assert shapes.train_x.dtype == torch.float32
    assert shapes.train_y.dtype == torch.long
    assert shapes.train_y.shape == (2048,)
    assert torch.isfinite(shapes.train_x).all() and torch.isfinite(shapes.val_x).all()
    channel_mean = shapes.train_x.mean(dim=(0, 2, 3))
    channel_std = shapes.train_x.std(dim=(0, 2, 3))
    assert torch.allclose(channel_mean, torch.zeros(3), atol=1e-4)
    assert torch.allclose(channel_std, torch.ones(3), atol=1e-3)
    # Validation is normalised with the training statistics, so it is close but not exact.
    assert shapes.val_x.mean(dim=(0, 2, 3)).abs().max() < 0.1


def test_shapes_classes_are_balanced(shapes: TaskData) -> None:
    train_counts = torch.bincount(shapes.train_y, minlength=10)
    val_counts = torch.bincount(shapes.val_y, minlength=10)
    assert train_counts.sum() == 2048 and val_counts.sum() == 512
    assert int(train_counts.max() - train_counts.min()) <= 1
    assert int(val_counts.max() - val_counts.min()) <= 1
    assert int(shapes.train_y.min()) == 0 and int(shapes.train_y.max()) == 9


def test_shapes_is_deterministic_in_seed() -> None:
    a = make_shapes(7, n_train=64, n_val=32)
    b = make_shapes(7, n_train=64, n_val=32)
    c = make_shapes(8, n_train=64, n_val=32)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.val_y, b.val_y)
    assert not torch.equal(a.train_x, c.train_x)
    assert not torch.equal(a.val_x, c.val_x)


def test_shapes_train_split_does_not_depend_on_val_size() -> None:
    a = make_shapes(3, n_train=40, n_val=10)
    b = make_shapes(3, n_train=40, n_val=30)
    assert torch.equal(a.train_y, b.train_y)
    assert torch.equal(a.train_x, b.train_x)


def test_shapes_train_and_val_images_differ(shapes: TaskData) -> None:
    flat_train = shapes.train_x[:200].flatten(1)
    flat_val = shapes.val_x[:200].flatten(1)
    assert torch.cdist(flat_val, flat_train).min() > 1.0


def _tiny_cnn(width: int = 16) -> nn.Module:
    def block(c_in: int, c_out: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(
        block(3, width),
        block(width, width),
        block(width, width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 10),
    )


def _val_accuracy(model: nn.Module, task: TaskData) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in task.val_batches(256):
            correct += int((model(x).argmax(dim=1) == y).sum())
    return correct / task.n_val


def test_shapes_is_learnable_but_not_trivial(shapes: TaskData) -> None:
    # Measured on 2 CPU threads: a width-16 net reaches ~0.30-0.40 val accuracy after 5
    # epochs and a width-48 one ~0.60 after 12, so the task is learnable with ample headroom
    # for growth. Here a width-12 net for 3 epochs (~1 s) reaches ~0.28-0.32.
    torch.manual_seed(0)
    model = _tiny_cnn(width=12)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        model.train()
        for x, y in shapes.batches(64, gen):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    accuracy = _val_accuracy(model, shapes)
    assert accuracy > 2 * (1 / 10)
    assert accuracy < 0.95


# --------------------------------------------------------------------------------------
# batching
# --------------------------------------------------------------------------------------


def test_batches_cover_every_training_example_once_in_shuffled_order() -> None:
    task = make_sequences(0, n_train=50, n_val=10, seq_len=4, vocab_size=1000)
    rows = {tuple(r.tolist()): i for i, r in enumerate(task.train_x)}
    assert len(rows) == 50  # with vocab 1000 every row is distinct, so rows identify examples
    batches = list(task.batches(16, torch.Generator().manual_seed(1)))
    assert [len(x) for x, _ in batches] == [16, 16, 16, 2]
    seen = [rows[tuple(r.tolist())] for x, _ in batches for r in x]
    assert sorted(seen) == list(range(50))
    assert seen != list(range(50))
    for x, y in batches:
        for xr, yr in zip(x, y, strict=True):
            assert torch.equal(task.train_y[rows[tuple(xr.tolist())]], yr)

    again = list(task.batches(16, torch.Generator().manual_seed(1)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    other = list(task.batches(16, torch.Generator().manual_seed(2)))
    assert not torch.equal(batches[0][0], other[0][0])


def test_val_batches_are_in_stored_order() -> None:
    task = make_sequences(0, n_train=8, n_val=10, seq_len=4)
    batches = list(task.val_batches(4))
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([x for x, _ in batches]), task.val_x)
    assert torch.equal(torch.cat([y for _, y in batches]), task.val_y)


def test_batch_size_must_be_positive(shapes: TaskData) -> None:
    with pytest.raises(TaskError, match="batch_size must be >= 1"):
        next(shapes.val_batches(0))


# --------------------------------------------------------------------------------------
# sequences
# --------------------------------------------------------------------------------------


def test_sequences_shapes_dtypes_range_and_shifted_targets() -> None:
    task = make_sequences(0)
    assert task.topology == "transformer"
    assert task.num_classes == 32 and task.seq_len == 32
    assert task.train_x.shape == task.train_y.shape == (2048, 32)
    assert task.val_x.shape == task.val_y.shape == (256, 32)
    for t in (task.train_x, task.train_y, task.val_x, task.val_y):
        assert t.dtype == torch.long
        assert int(t.min()) >= 0 and int(t.max()) < 32
    assert torch.equal(task.train_y[:, :-1], task.train_x[:, 1:])
    assert torch.equal(task.val_y[:, :-1], task.val_x[:, 1:])


def test_sequences_respect_custom_sizes() -> None:
    task = make_sequences(1, n_train=10, n_val=3, seq_len=7, vocab_size=5)
    assert task.train_x.shape == (10, 7) and task.val_x.shape == (3, 7)
    assert task.num_classes == 5 and task.seq_len == 7
    assert int(task.train_x.max()) < 5


def test_sequences_are_deterministic_in_seed() -> None:
    a = make_sequences(4, n_train=32, n_val=8)
    b = make_sequences(4, n_train=32, n_val=8)
    c = make_sequences(5, n_train=32, n_val=8)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert not torch.equal(a.train_x, c.train_x)


def _is_progression(seq: torch.Tensor, vocab: int) -> bool:
    steps = (seq[1:] - seq[:-1]) % vocab
    return bool((steps == steps[0]).all())


def _is_periodic(seq: torch.Tensor, max_period: int = 8) -> bool:
    return any(torch.equal(seq[p:], seq[:-p]) for p in range(2, max_period + 1))


def test_sequences_have_predictable_structure() -> None:
    vocab = 32
    task = make_sequences(0, n_train=600, n_val=8, vocab_size=vocab)
    full = torch.cat([task.train_x, task.train_y[:, -1:]], dim=1)
    kinds = {"progression": 0, "periodic": 0, "other": 0}
    successors: dict[int, set[int]] = {}
    for seq in full:
        if _is_progression(seq, vocab):
            kinds["progression"] += 1
        elif _is_periodic(seq):
            kinds["periodic"] += 1
        else:
            kinds["other"] += 1
            for a, b in zip(seq[:-1].tolist(), seq[1:].tolist(), strict=True):
                successors.setdefault(a, set()).add(b)
    # Roughly a third of each kind (600 draws: each count is within a wide band of 200).
    assert all(120 < count < 280 for count in kinds.values()), kinds
    # The remaining sequences are walks on a sparse chain: few successors per token,
    # whereas uniformly random tokens would give nearly all 32.
    assert max(len(s) for s in successors.values()) <= 3


def test_sequences_reject_bad_sizes() -> None:
    with pytest.raises(TaskError, match="vocab_size must be >= 2"):
        make_sequences(0, vocab_size=1)
    with pytest.raises(TaskError, match="n_train must be >= 1"):
        make_sequences(0, n_train=0)
    with pytest.raises(TaskError, match="n_val must be >= 1"):
        make_shapes(0, n_val=0)


# --------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------


def _write_cifar_batch(path: Path, images: torch.Tensor, labels: list[int]) -> None:
    np = pytest.importorskip("numpy")
    # Same layout as the official files: bytes keys, uint8 [N, 3072] numpy array.
    payload: dict[bytes, Any] = {
        b"batch_label": b"testing batch",
        b"labels": labels,
        b"data": np.asarray(images.reshape(len(labels), -1).numpy(), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    with path.open("wb") as fh:
        pickle.dump(payload, fh, protocol=2)


def _make_cifar_dir(root: Path, batches: list[str], n: int = 20) -> dict[str, tuple[Any, Any]]:
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, tuple[Any, Any]] = {}
    g = torch.Generator().manual_seed(len(batches))
    for name in batches:
        images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=g).tolist()
        _write_cifar_batch(root / name, images, labels)
        written[name] = (images, labels)
    return written


def _denormalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.uint8)


def test_cifar10_roundtrips_values_labels_and_normalisation(tmp_path: Path) -> None:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    written = _make_cifar_dir(tmp_path / "cifar-10-batches-py", names)
    task = load_cifar10(tmp_path)

    assert task.topology == "cnn" and task.num_classes == 10 and task.seq_len is None
    assert task.train_x.shape == (100, 3, 32, 32) and task.val_x.shape == (20, 3, 32, 32)
    assert task.train_x.dtype == torch.float32 and task.train_y.dtype == torch.long
    expected_train = torch.cat([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    expected_labels: list[int] = []
    for i in range(1, 6):
        expected_labels += written[f"data_batch_{i}"][1]
    assert torch.equal(_denormalise(task.train_x), expected_train)
    assert task.train_y.tolist() == expected_labels
    assert torch.equal(_denormalise(task.val_x), written["test_batch"][0])
    assert task.val_y.tolist() == written["test_batch"][1]
    # A pixel equal to 255 * mean must normalise to 0; 0 to -mean/std.
    raw = written["test_batch"][0][0, 0, 0, 0].item()
    assert task.val_x[0, 0, 0, 0].item() == pytest.approx((raw / 255 - CIFAR10_MEAN[0]) / CIFAR10_STD[0], abs=1e-5)


def test_cifar10_reads_flat_directory_partial_batches_and_limits(tmp_path: Path) -> None:
    written = _make_cifar_dir(tmp_path, ["data_batch_1", "data_batch_3", "test_batch"], n=10)
    task = load_cifar10(tmp_path)
    assert task.n_train == 20 and task.n_val == 10
    assert task.train_y.tolist() == written["data_batch_1"][1] + written["data_batch_3"][1]

    limited = load_cifar10(tmp_path, n_train=15, n_val=4)
    assert limited.n_train == 15 and limited.n_val == 4
    assert torch.equal(limited.train_x, task.train_x[:15])
    assert torch.equal(limited.val_y, task.val_y[:4])


@pytest.mark.parametrize("missing", ["data_batch_1", "test_batch"])
def test_cifar10_missing_file_names_expected_path(tmp_path: Path, missing: str) -> None:
    present = [n for n in ("data_batch_1", "data_batch_2", "test_batch") if n != missing]
    _make_cifar_dir(tmp_path, present, n=2)
    with pytest.raises(TaskError) as info:
        load_cifar10(tmp_path)
    message = str(info.value)
    assert str(tmp_path / missing) in message
    assert "cifar-10-batches-py" in message and "does not download" in message


def test_cifar10_rejects_malformed_pickle(tmp_path: Path) -> None:
    _make_cifar_dir(tmp_path, ["data_batch_1"], n=2)
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(TaskError, match="test_batch is not a readable CIFAR-10 pickle"):
        load_cifar10(tmp_path)


# --------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------

_TEXT = "Grüße aus Köln — naïve café, 東京 → 🙂. " * 8


def _decode(task: TaskData, tokens: torch.Tensor) -> str:
    return "".join(task.vocab[i] for i in tokens.tolist())


def test_text_vocab_windows_and_shifted_targets(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(_TEXT, encoding="utf-8")
    task = load_text(path, seq_len=16, n_val_frac=0.25)

    assert task.topology == "transformer" and task.seq_len == 16
    assert task.vocab == tuple(sorted(set(_TEXT)))
    assert task.num_classes == len(task.vocab)
    n_windows = (len(_TEXT) - 1) // 16
    assert task.n_train + task.n_val == n_windows
    assert task.n_val == round(n_windows * 0.25)
    # Windows are consecutive, non-overlapping pieces of the text, validation last.
    x = torch.cat([task.train_x, task.val_x])
    y = torch.cat([task.train_y, task.val_y])
    assert _decode(task, x.flatten()) == _TEXT[: n_windows * 16]
    assert _decode(task, y.flatten()) == _TEXT[1 : n_windows * 16 + 1]
    assert task.train_x.dtype == torch.long


def test_text_directory_concatenates_txt_files_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("ωωωω", encoding="utf-8")
    (tmp_path / "a.txt").write_text("abcd", encoding="utf-8")
    (tmp_path / "ignored.md").write_text("zzzz", encoding="utf-8")
    task = load_text(tmp_path, seq_len=3, n_val_frac=0.5)
    assert task.vocab == ("a", "b", "c", "d", "ω")
    decoded = _decode(task, task.train_x.flatten()) + _decode(task, task.val_x.flatten())
    assert decoded == "abcdωω"


def test_text_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"no \*\.txt files in .*does not download"):
        load_text(tmp_path)

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff\xfe broken")
    with pytest.raises(TaskError, match=r"bad\.txt is not valid UTF-8"):
        load_text(tmp_path)

    short = tmp_path / "short" / "s.txt"
    short.parent.mkdir()
    short.write_text("x" * 20, encoding="utf-8")
    with pytest.raises(TaskError, match=r"not enough text in .*short: 20 characters.*at least 21"):
        load_text(short.parent, seq_len=10)

    with pytest.raises(TaskError, match="does not exist"):
        load_text(tmp_path / "nowhere")
    with pytest.raises(TaskError, match="n_val_frac"):
        load_text(short, seq_len=2, n_val_frac=1.0)


# --------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------


def test_the_builtin_tasks_are_entry_points_of_esper_kernel() -> None:
    from esper_kernel.data.taskplugins import list_tasks

    listing = list_tasks()
    found = {t.name: (t.task.topology, t.distribution) for t in listing.tasks}
    assert found == {
        "pairs": ("cnn", "esper-kernel"),
        "shapes": ("cnn", "esper-kernel"),
        "sequences": ("transformer", "esper-kernel"),
        "cifar10": ("cnn", "esper-kernel"),
        "text": ("transformer", "esper-kernel"),
        "mnist1d": ("cnn1d", "esper-kernel"),
    }
    assert listing.failures == ()


def test_get_task_builds_generated_tasks_with_sizes() -> None:
    task = get_task("sequences", seed=2, n_train=6, n_val=2, seq_len=5, vocab_size=7)
    assert torch.equal(task.train_x, make_sequences(2, 6, 2, 5, 7).train_x)
    shapes_task = get_task("shapes", seed=2, n_train=20, n_val=10)
    assert shapes_task.train_x.shape == (20, 3, 32, 32)


def test_get_task_reads_local_data(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text(_TEXT, encoding="utf-8")
    task = get_task("text", seed=0, data_dir=tmp_path, seq_len=8)
    assert task.name == "text" and task.seq_len == 8


def test_get_task_errors() -> None:
    with pytest.raises(EsperError, match="unknown task 'mnist'; installed tasks: cifar10, mnist1d, pairs, sequences"):
        get_task("mnist", seed=0)
    for name in ("cifar10", "text"):
        with pytest.raises(TaskError, match="--data-dir is required"):
            get_task(name, seed=0)
    with pytest.raises(TaskError, match="does not accept seq_len; it accepts: n_train, n_val"):
        get_task("shapes", seed=0, seq_len=3)


def test_text_honours_train_and_val_sizes_and_refuses_more_than_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(_TEXT, encoding="utf-8")
    whole = load_text(path, seq_len=8)
    part = load_text(path, seq_len=8, n_train=5, n_val=2)
    assert (part.n_train, part.n_val) == (5, 2)
    assert torch.equal(part.train_x, whole.train_x[:5]) and torch.equal(part.val_x, whole.val_x[:2])
    with pytest.raises(TaskError, match=f"n_train={whole.n_train + 1}, but the training split of .* holds only"):
        load_text(path, seq_len=8, n_train=whole.n_train + 1)


def test_text_validation_text_never_appears_in_training(tmp_path: Path) -> None:
    # Every character distinct from its neighbours' windows: a validation window found in training is a leak.
    text = "".join(chr(0x4E00 + i) for i in range(400))
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    task = load_text(tmp_path, seq_len=10, n_val_frac=0.2)
    # (The last training target is the first validation character: next-character prediction across the cut.)
    seen = {t for w in task.train_x.tolist() for t in w}
    assert not seen & ({t for w in task.val_x.tolist() for t in w} | {t for w in task.val_y.tolist() for t in w})
    assert len(task.vocab) == 400


def test_cifar10_refuses_more_examples_than_its_batches_hold(tmp_path: Path) -> None:
    _make_cifar_dir(tmp_path, ["data_batch_1", "test_batch"], n=10)
    with pytest.raises(TaskError, match=r"n_val=11, but .*test_batch holds only 10 examples"):
        load_cifar10(tmp_path, n_val=11)
