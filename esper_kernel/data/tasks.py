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

Nothing here downloads anything: the two loaders read only what is already on disk and
raise :class:`TaskError` naming the expected path when it is missing.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import torch
from torch import Tensor

from esper_kernel.data.taskplugins import TaskError as TaskError  # re-exported: it has always been found here

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "TaskData",
    "TaskError",
    "get_task",
    "load_cifar10",
    "load_mnist1d",
    "load_text",
    "make_pairs",
    "make_sequences",
    "make_shapes",
]

Topology = Literal["cnn", "transformer"]

#: Per-channel mean and standard deviation of the CIFAR-10 training set (pixels in [0, 1]).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

_IMAGE_SIZE = 32
_SHAPES_CLASSES = 10
_SHAPES_CLASS_NAMES: tuple[str, ...] = (
    "disc",
    "ring",
    "filled_square",
    "square_outline",
    "filled_triangle",
    "triangle_outline",
    "plus",
    "x_cross",
    "horizontal_stripes",
    "vertical_stripes",
)


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
        _check_batch_size(batch_size)
        order = torch.randperm(self.n_train, generator=generator)
        for start in range(0, self.n_train, batch_size):
            idx = order[start : start + batch_size]
            yield self.train_x[idx], self.train_y[idx]

    def val_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield the validation set in its stored order, in batches of ``batch_size``."""
        _check_batch_size(batch_size)
        for start in range(0, self.n_val, batch_size):
            yield self.val_x[start : start + batch_size], self.val_y[start : start + batch_size]


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise TaskError(f"batch_size must be >= 1, got {batch_size}")


def _check_sizes(**sizes: int) -> None:
    for key, value in sizes.items():
        if value < 1:
            raise TaskError(f"{key} must be >= 1, got {value}")


def _split_generator(seed: int, stream: int) -> torch.Generator:
    # Train, val and shared structure draw from separate streams so that changing n_val
    # leaves the training set unchanged (and vice versa).
    mixed = (seed * 1_000_003 + stream * 7_919) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


# --------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _rotate(u: Tensor, v: Tensor, angle: Tensor) -> tuple[Tensor, Tensor]:
    c = torch.cos(angle)[:, None, None]
    s = torch.sin(angle)[:, None, None]
    return c * u + s * v, -s * u + c * v


def _polygon_sdf(u: Tensor, v: Tensor, sides: int) -> Tensor:
    """Distance-like field of a regular polygon with inradius 1 (negative inside)."""
    d = torch.full_like(u, -math.inf)
    for k in range(sides):
        a = 2 * math.pi * k / sides + math.pi / 2
        d = torch.maximum(d, u * math.cos(a) + v * math.sin(a) - 1.0)
    return d


def _bar_cross_sdf(u: Tensor, v: Tensor, half_width: Tensor) -> Tensor:
    w = half_width[:, None, None]
    horizontal = torch.maximum(v.abs() - w, u.abs() - 1.0)
    vertical = torch.maximum(u.abs() - w, v.abs() - 1.0)
    return torch.minimum(horizontal, vertical)


def _shape_sdf(label: int, u: Tensor, v: Tensor, g: torch.Generator) -> Tensor:
    """Signed field (negative inside) of class ``label`` in shape-local units.

    ``u``/``v`` are ``[n, H, W]`` coordinates in which the shape has radius about 1.
    """
    n = u.shape[0]
    # Outline thickness and bar widths are drawn per image so that "filled" vs "outline"
    # is decided by interior emptiness, not by a fixed stroke width.
    stroke = _uniform(n, 0.12, 0.28, g)[:, None, None]
    if label in (0, 1):
        d = torch.sqrt(u * u + v * v) - 1.0
    elif label in (2, 3):
        d = torch.maximum(u.abs(), v.abs()) - 0.85
    elif label in (4, 5):
        d = _polygon_sdf(u, v, 3) * 2.0 + 0.9
    elif label == 6:
        return _bar_cross_sdf(u, v, _uniform(n, 0.15, 0.3, g))
    elif label == 7:
        r = math.sqrt(0.5)
        return _bar_cross_sdf(r * (u + v), r * (v - u), _uniform(n, 0.15, 0.3, g))
    else:
        # Stripes inside a square patch; the local frame is already rotated, so class 8
        # varies along v (horizontal bands) and class 9 along u (vertical bands).
        freq = _uniform(n, 2.5, 4.0, g)[:, None, None]
        phase = _uniform(n, 0.0, 2 * math.pi, g)[:, None, None]
        axis = v if label == 8 else u
        bands = -torch.sin(axis * freq * math.pi + phase) - 0.1
        patch = torch.maximum(u.abs(), v.abs()) - 1.0
        return torch.maximum(bands * 0.3, patch)
    if label % 2 == 1:
        return d.abs() - stroke
    return d


def _segment_sdf(x: Tensor, y: Tensor, p0: Tensor, p1: Tensor) -> Tensor:
    """Distance from each pixel to a segment per image; ``p0``/``p1`` are ``[n, 2]`` pixels."""
    ax, ay = p0[:, 0, None, None], p0[:, 1, None, None]
    bx, by = p1[:, 0, None, None], p1[:, 1, None, None]
    dx, dy = bx - ax, by - ay
    t = ((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy).clamp_min(1e-6)
    t = t.clamp(0.0, 1.0)
    return torch.sqrt((x - ax - t * dx) ** 2 + (y - ay - t * dy) ** 2)


def _render_shapes(labels: Tensor, g: torch.Generator) -> Tensor:
    """Render one image per label into ``[N, 3, 32, 32]`` pixels in roughly [0, 1].

    The parts draw from ``g`` in a fixed order (background, clutter, shape,
    its colour, noise): the same seed gives the same images.
    """
    n = labels.shape[0]
    size = _IMAGE_SIZE
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    xs_n = xs.expand(n, size, size)
    ys_n = ys.expand(n, size, size)
    img = _background(xs_n, ys_n, g)
    img = _clutter(img, xs_n, ys_n, g)
    alpha = _shape_alpha(labels, xs_n, ys_n, g)
    img = _paint_shape(img, alpha, g)
    noise_std = _uniform(n, 0.03, 0.12, g)[:, None, None, None]
    img = img + noise_std * torch.randn(img.shape, generator=g)
    return img.clamp(0.0, 1.0)


def _background(xs_n: Tensor, ys_n: Tensor, g: torch.Generator) -> Tensor:
    """A linear gradient between two random colours along a random direction, ``[n, 3, size, size]``."""
    n, size = xs_n.shape[0], _IMAGE_SIZE
    c0 = torch.rand(n, 3, generator=g)
    c1 = torch.rand(n, 3, generator=g)
    theta = _uniform(n, 0.0, 2 * math.pi, g)
    ramp = (
        (xs_n - size / 2) * torch.cos(theta)[:, None, None] + (ys_n - size / 2) * torch.sin(theta)[:, None, None]
    ) / size + 0.5
    ramp = ramp.clamp(0.0, 1.0)[:, None]
    return c0[:, :, None, None] * (1 - ramp) + c1[:, :, None, None] * ramp


def _clutter(img: Tensor, xs_n: Tensor, ys_n: Tensor, g: torch.Generator, n_clutter: int = 2) -> Tensor:
    """Random line segments over ``img``.

    They resemble pieces of crosses, stripes and outlines, so the net must use
    the shape's global structure rather than any edge.
    """
    n, size = xs_n.shape[0], _IMAGE_SIZE
    for _ in range(n_clutter):
        p0 = torch.rand(n, 2, generator=g) * size
        length = _uniform(n, 4.0, 12.0, g)
        ang = _uniform(n, 0.0, 2 * math.pi, g)
        p1 = p0 + torch.stack([torch.cos(ang), torch.sin(ang)], dim=1) * length[:, None]
        width = _uniform(n, 0.5, 1.2, g)[:, None, None]
        dist = _segment_sdf(xs_n, ys_n, p0, p1)
        alpha = torch.sigmoid((width - dist) * 3.0)[:, None]
        colour = torch.rand(n, 3, generator=g)[:, :, None, None]
        img = img * (1 - alpha) + colour * alpha
    return img


def _shape_alpha(labels: Tensor, xs_n: Tensor, ys_n: Tensor, g: torch.Generator) -> Tensor:
    """Each image's shape as coverage ``[n, 1, size, size]``: random centre, radius and rotation.

    Rotation is unrestricted for shapes whose class is rotation-invariant in
    spirit (discs, squares, triangles) and limited for plus/x/stripe classes,
    whose identity is their orientation.
    """
    n, size = labels.shape[0], _IMAGE_SIZE
    radius = _uniform(n, 5.0, 11.0, g)
    cx = size / 2 + (torch.rand(n, generator=g) * 2 - 1) * (size / 2 - radius - 1)
    cy = size / 2 + (torch.rand(n, generator=g) * 2 - 1) * (size / 2 - radius - 1)
    free_angle = _uniform(n, 0.0, 2 * math.pi, g)
    small_angle = _uniform(n, -math.radians(20), math.radians(20), g)
    oriented = labels >= 6
    angle = torch.where(oriented, small_angle, free_angle)
    u0 = (xs_n - cx[:, None, None]) / radius[:, None, None]
    v0 = (ys_n - cy[:, None, None]) / radius[:, None, None]
    u, v = _rotate(u0, v0, angle)
    sdf = torch.empty(n, size, size)
    for label in range(_SHAPES_CLASSES):
        idx = (labels == label).nonzero(as_tuple=True)[0]
        if idx.numel():
            sdf[idx] = _shape_sdf(label, u[idx], v[idx], g)
    # Anti-aliased edge about one pixel wide (sdf is in units of the radius).
    return torch.sigmoid(-sdf * radius[:, None, None] * 2.0)[:, None]


def _paint_shape(img: Tensor, alpha: Tensor, g: torch.Generator) -> Tensor:
    """The shape in a random colour pushed away from the background at the shape's centre.

    So a shape is never invisible by construction (noise and clutter still hide it some).
    """
    fg = torch.rand(img.shape[0], 3, generator=g)
    bg_mid = img.mean(dim=(2, 3))
    low_contrast = (fg - bg_mid).norm(dim=1) < 0.45
    fg = torch.where(low_contrast[:, None], (bg_mid + 0.5) % 1.0, fg)
    return img * (1 - alpha) + fg[:, :, None, None] * alpha


def _balanced_labels(n: int, n_classes: int, g: torch.Generator) -> Tensor:
    labels = torch.arange(n) % n_classes
    return labels[torch.randperm(n, generator=g)]


def make_shapes(seed: int, n_train: int = 2048, n_val: int = 512) -> TaskData:
    """Generate the ``shapes`` image classification task.

    Ten classes of 32x32 RGB images -- disc, ring, filled square, square outline, filled
    triangle, triangle outline, plus, diagonal cross, horizontal stripes, vertical stripes --
    drawn at random position, size, rotation and colour over a gradient background with
    random line-segment clutter and pixel noise. Classes are balanced: counts differ by at
    most one. Pixels are normalised with the per-channel mean/std of the training split.

    The result is a pure function of ``(seed, n_train)`` for the training split and of
    ``(seed, n_val)`` for the validation split.
    """
    _check_sizes(n_train=n_train, n_val=n_val)
    splits: list[tuple[Tensor, Tensor]] = []
    for stream, n in ((0, n_train), (1, n_val)):
        g = _split_generator(seed, stream)
        labels = _balanced_labels(n, _SHAPES_CLASSES, g)
        splits.append((_render_shapes(labels, g), labels))
    (train_x, train_y), (val_x, val_y) = splits
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return TaskData(
        name="shapes",
        topology="cnn",
        train_x=((train_x - mean) / std).contiguous(),
        train_y=train_y,
        val_x=((val_x - mean) / std).contiguous(),
        val_y=val_y,
        num_classes=_SHAPES_CLASSES,
        seq_len=None,
    )


# --------------------------------------------------------------------------------------
# pairs: the default growth task
# --------------------------------------------------------------------------------------

_PAIRS_SIZE = 12
#: The (dy, dx) offset between the two marks of a pair, one per class within each kind.
PAIR_OFFSETS: tuple[tuple[int, int], ...] = ((0, 4), (4, 0), (4, 4), (4, -4), (2, 4))
_PAIR_CLASSES = 2 * len(PAIR_OFFSETS)


#: Lit pixels stay this far from the edge, see :func:`_render_pairs`.
_PAIR_MARGIN = 2


def _render_pairs(labels: Tensor, noise: float, n_pairs: int, g: torch.Generator) -> Tensor:
    n = labels.shape[0]
    size = _PAIRS_SIZE
    img = torch.randn(n, 3, size, size, generator=g) * noise
    offsets = torch.tensor(PAIR_OFFSETS)[labels % len(PAIR_OFFSETS)]
    dy, dx = offsets[:, 0], offsets[:, 1]
    bar = (labels >= len(PAIR_OFFSETS)).long()
    rows = torch.arange(n)

    def mark(y: Tensor, x: Tensor, colour: Tensor) -> None:
        # A dot is one pixel; a bar adds the pixel below it.
        img[rows, :, y, x] += colour
        img[rows, :, y + bar, x] += colour * bar[:, None].float()

    # Every lit pixel stays _PAIR_MARGIN pixels inside the edge, so no 3x3 window that
    # touches the zero padding ever sees a mark: a 3x3-view host with global pooling is then
    # blind to where marks fall, though where they fall depends on the offset. Marks that
    # reached the border were such a cue, and the host alone crept up instead of plateauing
    # (+1.9 points over the last third, 10 seeds). What a 3x3 view can still count, how often
    # marks of different pairs meet, it learns within the first few epochs.
    lo, hi = _PAIR_MARGIN, size - _PAIR_MARGIN
    y_lo, y_hi = lo + (-dy).clamp(min=0), hi - bar - dy.clamp(min=0)
    x_lo, x_hi = lo + (-dx).clamp(min=0), hi - dx.clamp(min=0)
    for _ in range(n_pairs):
        y0 = y_lo + (torch.rand(n, generator=g) * (y_hi - y_lo)).long()
        x0 = x_lo + (torch.rand(n, generator=g) * (x_hi - x_lo)).long()
        colour = torch.rand(n, 3, generator=g) * 0.8 + 0.6
        mark(y0, x0, colour)
        mark(y0 + dy, x0 + dx, colour)
    return img


def make_pairs(seed: int, n_train: int = 1024, n_val: int = 512, noise: float = 0.2, n_pairs: int = 3) -> TaskData:
    """Generate the ``pairs`` growth task.

    Each 3x12x12 image holds ``n_pairs`` pairs of marks of one class, each pair in its own
    random colour and place at least two pixels inside the edges, over Gaussian pixel noise
    of standard deviation ``noise``. A mark
    is a dot (one pixel) for classes 0-4 and a short bar (two pixels) for classes 5-9; within
    each kind the class is the pair's offset, one of :data:`PAIR_OFFSETS`, all four pixels
    apart along some axis. Classes are balanced.

    Every 3x3 window holds at most one mark of a pair, and every mark looks alike, so a
    network that sees 3x3 windows can tell dots from bars (20%) and nothing more: the offset
    needs a receptive field of at least 5x5. That gap is what growth fills (docs/tasks.md).

    Pure function of ``(seed, n_train)`` for the training split and of ``(seed, n_val)`` for
    the validation split, given the other arguments. Pixels are normalised per channel with
    the training split's mean and standard deviation.
    """
    _check_sizes(n_train=n_train, n_val=n_val, n_pairs=n_pairs)
    if not (math.isfinite(noise) and noise >= 0):
        raise TaskError(f"noise must be a finite number >= 0, got {noise}")
    splits: list[tuple[Tensor, Tensor]] = []
    for stream, n in ((0, n_train), (1, n_val)):
        g = _split_generator(seed, stream)
        labels = _balanced_labels(n, _PAIR_CLASSES, g)
        splits.append((_render_pairs(labels, noise, n_pairs, g), labels))
    (train_x, train_y), (val_x, val_y) = splits
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return TaskData(
        name="pairs",
        topology="cnn",
        train_x=((train_x - mean) / std).contiguous(),
        train_y=train_y,
        val_x=((val_x - mean) / std).contiguous(),
        val_y=val_y,
        num_classes=_PAIR_CLASSES,
        seq_len=None,
    )


# --------------------------------------------------------------------------------------
# sequences
# --------------------------------------------------------------------------------------


def _markov_table(vocab_size: int, g: torch.Generator) -> Tensor:
    """A sparse transition matrix: each token has 2 or 3 successors with random weights."""
    probs = torch.zeros(vocab_size, vocab_size)
    for tok in range(vocab_size):
        k = min(vocab_size, 2 + int(torch.randint(0, 2, (1,), generator=g)))
        succ = torch.randperm(vocab_size, generator=g)[:k]
        probs[tok, succ] = torch.rand(k, generator=g) + 0.2
    return probs / probs.sum(dim=1, keepdim=True)


def _generate_sequences(n: int, length: int, vocab_size: int, markov: Tensor, g: torch.Generator) -> Tensor:
    """``n`` sequences of ``length`` tokens, each one of three kinds chosen uniformly."""
    t = torch.arange(length)
    kind = torch.randint(0, 3, (n,), generator=g)

    # Kind 0: arithmetic progression mod V with a per-sequence start and non-zero step.
    start = torch.randint(0, vocab_size, (n,), generator=g)
    step = torch.randint(1, max(vocab_size, 2), (n,), generator=g)
    progression = (start[:, None] + step[:, None] * t) % vocab_size

    # Kind 1: a random segment of period 2..8 repeated across the sequence.
    max_period = 8
    pattern = torch.randint(0, vocab_size, (n, max_period), generator=g)
    period = torch.randint(2, max_period + 1, (n,), generator=g)
    repeat = pattern.gather(1, t[None, :] % period[:, None])

    # Kind 2: a walk on the shared sparse Markov chain.
    walk = torch.empty(n, length, dtype=torch.long)
    walk[:, 0] = torch.randint(0, vocab_size, (n,), generator=g)
    for i in range(1, length):
        walk[:, i] = torch.multinomial(markov[walk[:, i - 1]], 1, generator=g).squeeze(1)

    out = torch.where((kind == 0)[:, None], progression, repeat)
    return torch.where((kind == 2)[:, None], walk, out)


def make_sequences(
    seed: int,
    n_train: int = 2048,
    n_val: int = 256,
    seq_len: int = 32,
    vocab_size: int = 32,
) -> TaskData:
    """Generate the ``sequences`` causal language-modelling task.

    Each sequence is, with equal probability, an arithmetic progression mod ``vocab_size``
    (random start and step), a random segment of period 2..8 repeated, or a walk on a sparse
    random Markov chain (2-3 successors per token) shared by the whole data set. A model can
    identify the kind from a short prefix, after which most tokens are predictable.

    ``x`` is ``[N, seq_len]`` int64 and ``y`` is ``x`` shifted left by one with the next
    token appended. Deterministic in ``seed`` and the sizes; the Markov chain depends only
    on ``(seed, vocab_size)``.
    """
    _check_sizes(n_train=n_train, n_val=n_val, seq_len=seq_len)
    if vocab_size < 2:
        raise TaskError(f"vocab_size must be >= 2, got {vocab_size}")
    markov = _markov_table(vocab_size, _split_generator(seed, 2))
    splits: list[Tensor] = []
    for stream, n in ((0, n_train), (1, n_val)):
        g = _split_generator(seed, stream)
        splits.append(_generate_sequences(n, seq_len + 1, vocab_size, markov, g))
    train, val = splits
    return TaskData(
        name="sequences",
        topology="transformer",
        train_x=train[:, :-1].contiguous(),
        train_y=train[:, 1:].contiguous(),
        val_x=val[:, :-1].contiguous(),
        val_y=val[:, 1:].contiguous(),
        num_classes=vocab_size,
        seq_len=seq_len,
    )


# --------------------------------------------------------------------------------------
# CIFAR-10
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
    return data.reshape(-1, 3, _IMAGE_SIZE, _IMAGE_SIZE), labels


def _as_uint8_rows(data: Any, path: Path) -> Tensor:
    # The official files hold a numpy array; going through bytes keeps this module free of
    # a hard numpy dependency while still accepting nested lists from hand-made files.
    if hasattr(data, "tobytes") and hasattr(data, "shape"):
        shape = tuple(int(s) for s in data.shape)
        flat = torch.frombuffer(bytearray(data.astype("uint8").tobytes()), dtype=torch.uint8)
        tensor = flat.reshape(shape)
    else:
        tensor = torch.as_tensor(data, dtype=torch.uint8)
    if tensor.dim() != 2 or tensor.shape[1] != 3 * _IMAGE_SIZE * _IMAGE_SIZE:
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
