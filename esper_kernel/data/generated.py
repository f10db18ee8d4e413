"""The generated tasks: ``pairs`` (the growth task), ``shapes`` and ``sequences``, made from a seed, never read.

``docs/tasks.md`` says how each is built and why ``pairs`` is built the way it is.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from esper_kernel.data.tasks import (
    IMAGE_SIZE,
    TaskData,
    TaskError,
    check_sizes,
    split_generator,
)

# --------------------------------------------------------------------------------------

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
    size = IMAGE_SIZE
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
    n, size = xs_n.shape[0], IMAGE_SIZE
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
    n, size = xs_n.shape[0], IMAGE_SIZE
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
    n, size = labels.shape[0], IMAGE_SIZE
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
    check_sizes(n_train=n_train, n_val=n_val)
    splits: list[tuple[Tensor, Tensor]] = []
    for stream, n in ((0, n_train), (1, n_val)):
        g = split_generator(seed, stream)
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
    check_sizes(n_train=n_train, n_val=n_val, n_pairs=n_pairs)
    if not (math.isfinite(noise) and noise >= 0):
        raise TaskError(f"noise must be a finite number >= 0, got {noise}")
    splits: list[tuple[Tensor, Tensor]] = []
    for stream, n in ((0, n_train), (1, n_val)):
        g = split_generator(seed, stream)
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
    check_sizes(n_train=n_train, n_val=n_val, seq_len=seq_len)
    if vocab_size < 2:
        raise TaskError(f"vocab_size must be >= 2, got {vocab_size}")
    markov = _markov_table(vocab_size, split_generator(seed, 2))
    splits: list[Tensor] = []
    for stream, n in ((0, n_train), (1, n_val)):
        g = split_generator(seed, stream)
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
