"""Training tasks for Esper: generated benchmarks and loaders for local data sets.

The builtin tasks are registered as ``esper.tasks`` entry points (:mod:`esper_kernel.builtin_tasks`):

* ``pairs`` -- the default growth task: generated 10-class 3x12x12 images of dot or bar pairs
  at fixed offsets (:func:`make_pairs`), paired with a host whose receptive field is too small
  to see a pair whole; ``docs/tasks.md`` says why it is built that way.
* ``shapes`` -- a generated 10-class 3x32x32 image classification task (:func:`make_shapes`).
* ``sequences`` -- generated token sequences for a causal language model
  (:func:`make_sequences`).
* ``cifar10`` -- CIFAR-10 read from the python-pickle files on local disk (:func:`load_cifar10`),
  through an unpickler that admits only the types those files use.
* ``text`` -- a character-level language model task over local UTF-8 text (:func:`load_text`).
* ``mnist1d`` -- MNIST-1D generated locally by the ``mnist1d`` package (:func:`load_mnist1d`).

The builders live in :mod:`esper_kernel.data.generated` and :mod:`esper_kernel.data.local`;
this module holds what every task is (:class:`TaskData`) and finds one by name.
Nothing here downloads anything: the two loaders read only what is already on disk and
raise :class:`TaskError` naming the expected path when it is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import attrs
import torch
from torch import Tensor

from esper_kernel.data.taskplugins import TaskError as TaskError  # re-exported: it has always been found here
from esper_kernel.infra.errors import PluginError

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "TaskData", "TaskError", "get_task"]

Topology = Literal["cnn", "transformer"]

#: Per-channel mean and standard deviation of the CIFAR-10 training set (pixels in [0, 1]).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

#: The side of the 32x32 image tasks (shapes, CIFAR-10).
IMAGE_SIZE = 32


@attrs.frozen
class TaskData:
    """A train/validation split of one task, held entirely in memory.

    Image tasks (``topology == "cnn"``): ``*_x`` are float32 ``[N, 3, 32, 32]``, normalised
    per channel; ``*_y`` are int64 class indices ``[N]`` in ``[0, num_classes)``.

    Token tasks (``topology == "transformer"``): ``*_x`` and ``*_y`` are int64 ``[N, seq_len]``
    with ``y[:, t]`` the token that follows ``x[:, t]`` (so ``y[:, :-1] == x[:, 1:]``);
    ``num_classes`` is the vocabulary size.
    """

    name: str
    topology: str
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    num_classes: int
    seq_len: int | None
    #: For character-level text, ``vocab[i]`` is the character of token ``i``; empty otherwise.
    vocab: tuple[str, ...] = ()

    @property
    def n_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def n_val(self) -> int:
        return int(self.val_x.shape[0])

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield one epoch of training batches in an order shuffled by ``generator``.

        Every training example appears exactly once; the last batch is smaller when
        ``batch_size`` does not divide the training set size.
        """
        check_batch_size(batch_size)
        order = torch.randperm(self.n_train, generator=generator)
        for start in range(0, self.n_train, batch_size):
            idx = order[start : start + batch_size]
            yield self.train_x[idx], self.train_y[idx]

    def problem(self) -> str | None:
        """What makes this data untrainable, in one line (None: nothing): checked on every task's data.

        A plugin's labels outside ``[0, num_classes)`` would otherwise stop the run deep in
        ``cross_entropy``, and NaN inputs would train a host to chance without a word.
        """
        if self.num_classes < 2:
            return f"num_classes is {self.num_classes}; a task needs at least 2 classes"
        for split, x, y in (("training", self.train_x, self.train_y), ("validation", self.val_x, self.val_y)):
            if len(x) == 0:
                return f"its {split} split is empty"
            if len(x) != len(y):
                return f"its {split} split has {len(x)} inputs but {len(y)} labels"
            if y.dtype != torch.long:
                return f"its {split} labels are {y.dtype}, not torch.int64 class indices"
            if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
                return (
                    f"its {split} labels run from {int(y.min())} to {int(y.max())}, "
                    f"outside [0, {self.num_classes}) for num_classes {self.num_classes}"
                )
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                return f"its {split} inputs hold NaN or infinite values"
        return None

    def val_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield the validation set in its stored order, in batches of ``batch_size``."""
        check_batch_size(batch_size)
        for start in range(0, self.n_val, batch_size):
            yield self.val_x[start : start + batch_size], self.val_y[start : start + batch_size]


def check_built(data: object, who: str) -> TaskData:
    """``data`` as a task's ``build()`` returned it: a :class:`TaskData` fit to train on, or one line naming ``who``."""
    if not isinstance(data, TaskData):
        raise PluginError(f"{who} built a {type(data).__name__}, not a TaskData")
    if (problem := data.problem()) is not None:
        raise PluginError(f"{who} built data that cannot be trained on: {problem}")
    return data


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise TaskError(f"batch_size must be >= 1, got {batch_size}")


def check_sizes(**sizes: int) -> None:
    for key, value in sizes.items():
        if value < 1:
            raise TaskError(f"{key} must be >= 1, got {value}")


def split_generator(seed: int, stream: int) -> torch.Generator:
    # Train, val and shared structure draw from separate streams so that changing n_val
    # leaves the training set unchanged (and vice versa).
    mixed = (seed * 1_000_003 + stream * 7_919) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


# --------------------------------------------------------------------------------------
# shapes


# --------------------------------------------------------------------------------------


def get_task(name: str, *, seed: int, data_dir: Path | None = None, **sizes: Any) -> TaskData:
    """Build the data of the task plugin registered as ``name`` (see :mod:`esper_kernel.data.taskplugins`).

    ``sizes`` are passed to the task's builder and must be among its ``size_params``.
    ``seed`` only affects generated tasks. Raises :class:`TaskError` (a ``ValueError``)
    for an unsupported size argument or a data task without ``data_dir``, and
    :class:`~esper_kernel.infra.errors.PluginError` for an unknown or broken task.
    """
    from esper_kernel.data.taskplugins import build_data, find_task

    data: TaskData = build_data(find_task(name), seed, None if data_dir is None else Path(data_dir), sizes)
    return data
