"""The builtin tasks, registered as ``esper.tasks`` entry points by the esper-kernel distribution.

Importing this module imports no torch and builds nothing: each task's data and
host are built by functions that import :mod:`esper_kernel.data.tasks` and
:mod:`esper_kernel.grow.hosts` only when a run asks for that task. ``docs/tasks.md``
states, per task, why its starting host is growth-ready.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from esper_kernel.data.taskplugins import HostShape, Task

if TYPE_CHECKING:
    from esper_kernel.data.tasks import TaskData
    from esper_kernel.grow.hosts import Host


def _cnn(layout: dict[str, Any]) -> Any:
    def host(shape: HostShape, slots: int, width: int | None) -> Host:
        from esper_kernel.grow.hosts import CNNHostConfig, build_host

        cfg = {**layout, **({} if width is None else {"width": width})}
        return build_host(
            "cnn", CNNHostConfig(in_channels=shape.in_channels, num_classes=shape.num_classes, blocks=slots, **cfg)
        )

    return host


def _cnn1d(layout: dict[str, Any]) -> Any:
    def host(shape: HostShape, slots: int, width: int | None) -> Host:
        from esper_kernel.grow.hosts import CNN1DHostConfig, build_host

        cfg = {**layout, **({} if width is None else {"width": width})}
        return build_host(
            "cnn1d", CNN1DHostConfig(in_channels=shape.in_channels, num_classes=shape.num_classes, blocks=slots, **cfg)
        )

    return host


def _transformer(dim: int, heads: int = 4, window: int | None = None) -> Any:
    def host(shape: HostShape, slots: int, width: int | None) -> Host:
        from esper_kernel.grow.hosts import TransformerHostConfig, build_host

        d = dim if width is None else width
        # Any width is a legal control: take the most heads (up to the task's) that divide it.
        h = max(n for n in range(1, heads + 1) if d % n == 0)
        return build_host(
            "transformer",
            TransformerHostConfig(
                vocab_size=shape.num_classes, dim=d, heads=h, layers=slots, max_len=shape.seq_len or 32, window=window
            ),
        )

    return host


def _pairs(seed: int, data_dir: Path | None, **sizes: Any) -> TaskData:
    from esper_kernel.data.generated import make_pairs

    return make_pairs(seed, **sizes)


def _shapes(seed: int, data_dir: Path | None, **sizes: Any) -> TaskData:
    from esper_kernel.data.generated import make_shapes

    # 1024/512 is what every run trained on before tasks were plugins (make_shapes' own is 2048).
    return make_shapes(seed, **{"n_train": 1024, "n_val": 512, **sizes})


def _sequences(seed: int, data_dir: Path | None, **sizes: Any) -> TaskData:
    from esper_kernel.data.generated import make_sequences

    return make_sequences(seed, **{"n_train": 1024, "n_val": 512, **sizes})


def _cifar10(seed: int, data_dir: Path | None, **sizes: Any) -> TaskData:
    from esper_kernel.data.local import load_cifar10

    assert data_dir is not None  # build_data checks this first
    return load_cifar10(data_dir, **sizes)


def _text(seed: int, data_dir: Path | None, **sizes: Any) -> TaskData:
    from esper_kernel.data.local import load_text

    assert data_dir is not None  # build_data checks this first
    return load_text(data_dir, **sizes)


def _mnist1d(seed: int, data_dir: Path | None, **sizes: Any) -> TaskData:
    from esper_kernel.data.local import load_mnist1d

    return load_mnist1d(**sizes)


#: A 3x3 stem then 1x1 blocks at full resolution: the receptive field (3x3) is too small for any
#: pair, so the host alone stalls near 20% and every spatial seed widens its view.
_NARROW_VIEW = {"block_kernel": 1, "downsample": False}

PAIRS = Task(
    name="pairs",
    topology="cnn",
    description="generated 10-class 3x12x12 dot/bar pairs at fixed offsets: the growth task (docs/tasks.md)",
    build=_pairs,
    host=_cnn({"width": 8, **_NARROW_VIEW}),
    default_width=8,
    widths=(4, 8, 16, 32, 64),
    host_rule="receptive field 3x3 (1x1 blocks, no downsampling), smaller than any pair",
)
SHAPES = Task(
    name="shapes",
    topology="cnn",
    description="generated 10-class 3x32x32 shapes with clutter and noise",
    build=_shapes,
    host=_cnn({"width": 16}),
    default_width=16,
    widths=(4, 8, 16, 32),
    host_rule="none yet: the full 3x3 host (width 16); not growth-ready",
)
SEQUENCES = Task(
    name="sequences",
    topology="transformer",
    description="generated token sequences: progressions, repeats, Markov walks",
    build=_sequences,
    host=_transformer(64),
    default_width=64,
    widths=(16, 32, 64, 128),
    size_params=("n_train", "n_val", "seq_len", "vocab_size"),
    host_rule="none yet: the default transformer (dim 64); not growth-ready",
)
CIFAR10 = Task(
    name="cifar10",
    topology="cnn",
    description="CIFAR-10 from local python-pickle batches",
    build=_cifar10,
    host=_cnn({"width": 8, **_NARROW_VIEW}),
    default_width=8,
    widths=(4, 8, 16, 32),
    requires_data_dir=True,
    host_rule="receptive field 3x3 (1x1 blocks, no downsampling): colour and texture only, no object shape",
)
#: A host whose attention sees only the current character is a bigram model: alone it plateaus near the
#: bigram bound (2.47 nats/char on Macbeth), at any width; the seeds that add context lift it.
TEXT = Task(
    name="text",
    topology="transformer",
    description="character-level LM over a local UTF-8 file or a directory of *.txt files",
    build=_text,
    host=_transformer(32, heads=2, window=1),
    default_width=32,
    widths=(16, 32, 64, 96),
    metric="val_loss",
    requires_data_dir=True,
    size_params=("n_train", "n_val", "seq_len"),
    blueprints=("attention", "conv1d"),
    host_rule="context 1 character (attention window 1), a bigram model at any width; attention, conv1d add context",
)
MNIST1D = Task(
    name="mnist1d",
    topology="cnn1d",
    description="MNIST-1D (Greydanus 2020) generated locally by mnist1d.make_dataset: 4,000 train / 1,000 test",
    build=_mnist1d,
    host=_cnn1d({"width": 16, "stem_kernel": 1, "block_kernel": 1}),
    default_width=16,
    widths=(8, 16, 32, 64, 128),
    host_rule="receptive field 1 sample of 40 (1-wide stem and blocks): it sees amplitudes, never a shape",
    extra="mnist1d",
)
