"""Host networks: small, fixed models with seed slots between their blocks.

Two families are provided, deliberately small by default so experiments run on
a CPU:

* :class:`CNNHost` -- a conv-BN-ReLU image classifier, ``[B, C, H, W] -> [B, classes]``.
* :class:`CNN1DHost` -- the same for signals, ``[B, C, L] -> [B, classes]`` (MNIST-1D).
* :class:`TransformerHost` -- a GPT-style causal LM, ``[B, T] long -> [B, T, vocab]``.

Both expose the same surface: ``slots`` (a ``ModuleList`` of
:class:`~esper_kernel.grow.slots.SeedSlot`), ``topology``, ``slot_dims`` and
``host_parameters()``.
"""

from __future__ import annotations

from typing import TypeAlias

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from esper_kernel.grow.slots import SeedSlot

__all__ = [
    "MAX_WIDTH_FACTOR",
    "CNN1DHost",
    "CNN1DHostConfig",
    "CNNHost",
    "CNNHostConfig",
    "Host",
    "HostConfig",
    "TransformerHost",
    "TransformerHostConfig",
    "build_host",
]


def _positive(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, got {value}")


@attrs.frozen
class CNNHostConfig:
    """Shape of a :class:`CNNHost`.

    Attributes:
        in_channels: Image channels.
        num_classes: Output logits.
        width: Channels of the stem and first block; each later block doubles it, up to
            ``MAX_WIDTH_FACTOR * width`` so that adding slots never multiplies the host's size.
        blocks: Number of conv blocks, each followed by one seed slot.
        block_kernel: Kernel size of the blocks' convolutions (odd). 1 keeps the host's
            receptive field at the stem's 3x3, which the growth task relies on.
        downsample: Whether later blocks halve the resolution and double the channels; without
            it every block keeps the stem's width and resolution.
    """

    in_channels: int = attrs.field(default=3, validator=_positive)
    num_classes: int = attrs.field(default=10, validator=_positive)
    width: int = attrs.field(default=16, validator=_positive)
    blocks: int = attrs.field(default=3, validator=_positive)
    block_kernel: int = attrs.field(default=3, validator=_positive)
    downsample: bool = True

    def __attrs_post_init__(self) -> None:
        if self.block_kernel % 2 == 0:
            raise ValueError(f"block_kernel must be odd, got {self.block_kernel}")


@attrs.frozen
class CNN1DHostConfig:
    """Shape of a :class:`CNN1DHost`: :class:`CNNHostConfig`'s fields for signals ``[B, C, L]``.

    ``stem_kernel`` is the stem's width; with ``block_kernel`` 1 it is the host's whole receptive
    field, which is how a 1-D host is made under capacity (a seed's convs then widen it).
    """

    in_channels: int = attrs.field(default=1, validator=_positive)
    num_classes: int = attrs.field(default=10, validator=_positive)
    width: int = attrs.field(default=16, validator=_positive)
    blocks: int = attrs.field(default=3, validator=_positive)
    block_kernel: int = attrs.field(default=3, validator=_positive)
    stem_kernel: int = attrs.field(default=3, validator=_positive)
    downsample: bool = False

    def __attrs_post_init__(self) -> None:
        for key in ("block_kernel", "stem_kernel"):
            if getattr(self, key) % 2 == 0:
                raise ValueError(f"{key} must be odd, got {getattr(self, key)}")


@attrs.frozen
class TransformerHostConfig:
    """Shape of a :class:`TransformerHost`.

    Attributes:
        vocab_size: Token vocabulary (input ids and output logits).
        dim: Model width; must be divisible by ``heads``.
        heads: Attention heads per block.
        layers: Transformer blocks, each followed by one seed slot.
        max_len: Longest sequence the position embedding covers.
        window: Positions each token's attention sees, itself included (None: all earlier ones).
            ``window=1`` is a host with no context at all: it predicts from the current token only.
    """

    vocab_size: int = attrs.field(default=32, validator=_positive)
    dim: int = attrs.field(default=64, validator=_positive)
    heads: int = attrs.field(default=4, validator=_positive)
    layers: int = attrs.field(default=3, validator=_positive)
    max_len: int = attrs.field(default=64, validator=_positive)
    window: int | None = attrs.field(default=None, validator=attrs.validators.optional(_positive))

    def __attrs_post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")


HostConfig: TypeAlias = CNNHostConfig | CNN1DHostConfig | TransformerHostConfig


#: The widest CNN block, as a multiple of the configured width.
MAX_WIDTH_FACTOR = 4


class _SlottedHost(nn.Module):
    """Shared surface of the hosts: slots and the host/seed parameter split."""

    topology: str
    slots: nn.ModuleList
    slot_dims: tuple[int, ...]

    def host_parameters(self) -> list[nn.Parameter]:
        """All parameters except those of live seeds and their gates.

        Fossilized seeds are part of the host and are included.
        """
        seed_ids = {id(p) for slot in self.seed_slots() for p in slot.seed_parameters()}
        return [p for p in self.parameters() if id(p) not in seed_ids]

    def seed_slots(self) -> list[SeedSlot]:
        """The slots, typed as :class:`SeedSlot` (``slots`` is a plain ModuleList)."""
        out: list[SeedSlot] = []
        for slot in self.slots:
            assert isinstance(slot, SeedSlot)
            out.append(slot)
        return out


class CNNHost(_SlottedHost):
    """Image classifier with a seed slot after every block.

    ``stem (3x3 conv-BN-ReLU, width)`` -> ``blocks`` x ``(3x3 conv-BN-ReLU, slot)``
    -> global average pool -> linear. The first block keeps width and
    resolution; each later block doubles the channels and halves the
    resolution (stride 2). ``slot_dims[i]`` is the channel count at slot ``i``.
    """

    def __init__(self, config: CNNHostConfig | None = None) -> None:
        super().__init__()
        cfg = config or CNNHostConfig()
        self.config = cfg
        self.topology = "cnn"
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_channels, cfg.width, 3, padding=1, bias=False),
            nn.BatchNorm2d(cfg.width),
            nn.ReLU(),
        )
        dims: list[int] = []
        blocks: list[nn.Module] = []
        cin = cfg.width
        for i in range(cfg.blocks):
            # Doubling stops at MAX_WIDTH_FACTOR x width: without a cap, every extra slot
            # doubled the widest block, and --slots 8 grew the host to 100M+ parameters.
            grow = i > 0 and cfg.downsample
            cout, stride = (min(2 * cin, MAX_WIDTH_FACTOR * cfg.width), 2) if grow else (cin, 1)
            k = cfg.block_kernel
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(),
                )
            )
            dims.append(cout)
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.slot_dims = tuple(dims)
        self.slots = nn.ModuleList(SeedSlot(d, "cnn") for d in dims)
        self.head = nn.Linear(cin, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block, slot in zip(self.blocks, self.slots, strict=True):
            h = slot(block(h))
        out: torch.Tensor = self.head(h.mean(dim=(2, 3)))
        return out

    def forward_from(self, slot: int, h: torch.Tensor) -> torch.Tensor:
        """The rest of :meth:`forward` from slot ``slot``'s input ``h`` (block ``slot``'s output) on."""
        h = self.slots[slot](h)
        for block, later in zip(self.blocks[slot + 1 :], self.slots[slot + 1 :], strict=True):
            h = later(block(h))
        out: torch.Tensor = self.head(h.mean(dim=(2, 3)))
        return out


class CNN1DHost(_SlottedHost):
    """Signal classifier with a seed slot after every block (:class:`CNNHost` with one axis fewer).

    ``stem (conv-BN-ReLU, stem_kernel wide)`` -> ``blocks`` x ``(conv-BN-ReLU, slot)`` -> global
    average pool over the signal -> linear. With ``downsample`` later blocks halve the length
    and double the channels (capped at ``MAX_WIDTH_FACTOR * width``).
    """

    def __init__(self, config: CNN1DHostConfig | None = None) -> None:
        super().__init__()
        cfg = config or CNN1DHostConfig()
        self.config = cfg
        self.topology = "cnn1d"
        self.stem = nn.Sequential(
            nn.Conv1d(cfg.in_channels, cfg.width, cfg.stem_kernel, padding=cfg.stem_kernel // 2, bias=False),
            nn.BatchNorm1d(cfg.width),
            nn.ReLU(),
        )
        dims: list[int] = []
        blocks: list[nn.Module] = []
        cin, k = cfg.width, cfg.block_kernel
        for i in range(cfg.blocks):
            grow = i > 0 and cfg.downsample
            cout, stride = (min(2 * cin, MAX_WIDTH_FACTOR * cfg.width), 2) if grow else (cin, 1)
            blocks.append(
                nn.Sequential(
                    nn.Conv1d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
                    nn.BatchNorm1d(cout),
                    nn.ReLU(),
                )
            )
            dims.append(cout)
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.slot_dims = tuple(dims)
        self.slots = nn.ModuleList(SeedSlot(d, "cnn1d") for d in dims)
        self.head = nn.Linear(cin, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block, slot in zip(self.blocks, self.slots, strict=True):
            h = slot(block(h))
        out: torch.Tensor = self.head(h.mean(dim=2))
        return out


class _CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        #: Positions a token attends to, itself included (None: every earlier one); the FLOPs count reads it.
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(x).chunk(3, dim=-1))
        if self.window == 1:
            # Attending to itself alone is the identity on v (softmax over one score is 1).
            att = v
        elif self.window is None or self.window >= t:
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            pos = torch.arange(t, device=x.device)
            lag = pos[:, None] - pos[None, :]
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=(lag >= 0) & (lag < self.window))
        out: torch.Tensor = self.proj(att.transpose(1, 2).reshape(b, t, d))
        return out


class _Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, dim: int, heads: int, window: int | None = None) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _CausalSelfAttention(dim, heads, window)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        out: torch.Tensor = x + self.mlp(self.ln2(x))
        return out


class TransformerHost(_SlottedHost):
    """GPT-style causal language model with a seed slot after every block.

    Token + learned position embeddings -> ``layers`` pre-LN blocks (causal
    multi-head self-attention and a 4x GELU MLP), each followed by a seed slot
    (so there are exactly ``layers`` slots; the last sits between the final
    block and the final LayerNorm) -> final LayerNorm -> linear head.
    ``slot_dims`` is ``(dim,) * layers``.
    """

    def __init__(self, config: TransformerHostConfig | None = None) -> None:
        super().__init__()
        cfg = config or TransformerHostConfig()
        self.config = cfg
        self.topology = "transformer"
        self.max_len = cfg.max_len
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.blocks = nn.ModuleList(_Block(cfg.dim, cfg.heads, cfg.window) for _ in range(cfg.layers))
        self.slot_dims = (cfg.dim,) * cfg.layers
        self.slots = nn.ModuleList(SeedSlot(cfg.dim, "transformer") for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.max_len:
            raise ValueError(f"sequence length {t} exceeds max_len {self.max_len}")
        pos = torch.arange(t, device=idx.device)
        h = self.tok_emb(idx) + self.pos_emb(pos)
        for block, slot in zip(self.blocks, self.slots, strict=True):
            h = slot(block(h))
        out: torch.Tensor = self.head(self.ln_f(h))
        return out

    def forward_from(self, slot: int, h: torch.Tensor) -> torch.Tensor:
        """The rest of :meth:`forward` from slot ``slot``'s input ``h`` (block ``slot``'s output) on."""
        h = self.slots[slot](h)
        for block, later in zip(self.blocks[slot + 1 :], self.slots[slot + 1 :], strict=True):
            h = later(block(h))
        out: torch.Tensor = self.head(self.ln_f(h))
        return out


Host: TypeAlias = CNNHost | CNN1DHost | TransformerHost


def build_host(topology: str, config: HostConfig | None = None) -> Host:
    """Build a host for ``topology`` (``"cnn"`` or ``"transformer"``).

    ``config`` defaults to the topology's default config.

    Raises:
        ValueError: unknown topology, or a config of the other topology's type.
    """
    if topology == "cnn":
        if config is not None and not isinstance(config, CNNHostConfig):
            raise ValueError(f"cnn host needs a CNNHostConfig, got {type(config).__name__}")
        return CNNHost(config)
    if topology == "cnn1d":
        if config is not None and not isinstance(config, CNN1DHostConfig):
            raise ValueError(f"cnn1d host needs a CNN1DHostConfig, got {type(config).__name__}")
        return CNN1DHost(config)
    if topology == "transformer":
        if config is not None and not isinstance(config, TransformerHostConfig):
            raise ValueError(f"transformer host needs a TransformerHostConfig, got {type(config).__name__}")
        return TransformerHost(config)
    raise ValueError(f"unknown topology {topology!r}; known topologies: cnn, cnn1d, transformer")
