"""Figure: forward+backward with one TRAINING seed against the same seed wired into the host by hand.

Candidate: the default CNN host with a seed germinated in slot 0 (the
largest feature map, so the slot's elementwise work is at its most
expensive) and moved to TRAINING by the kernel's lifecycle: alpha 0,
incubate 1, isolated. Baseline: a hand-written forward over the very same
modules that does only what TRAINING needs: the seed sees the detached
features and joins the output through ``s - s.detach()``.
"""

from __future__ import annotations

import torch
from torch import nn

from bench import fixtures, host_fixtures
from bench.timing import Row, Settings, fmt_time, interleaved, median, ratio_of
from esper_kernel.compose.stages import Op, Stage
from esper_kernel.episode.env import EnvConfig
from esper_kernel.grow.blueprints import blueprint_names
from esper_kernel.grow.hosts import CNNHost
from esper_kernel.grow.lifecycle import Lifecycle, LifecycleConfig

KEY = "seed"
TARGET = 1.1
SLOT = 0


class HandWiredIncubator(nn.Module):
    """The host's own blocks with one seed spliced in by hand after block ``slot``."""

    def __init__(self, host: CNNHost, seed: nn.Module, slot: int) -> None:
        super().__init__()
        self.stem = host.stem
        self.blocks = host.blocks
        self.head = host.head
        self.seed = seed
        self.slot = slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == self.slot:
                s = self.seed(h.detach())
                h = h + (s - s.detach())
        out: torch.Tensor = self.head(h.mean(dim=(2, 3)))
        return out


def training_host(blueprint: str) -> tuple[CNNHost, nn.Module]:
    cfg = EnvConfig()
    host = host_fixtures.default_host()
    reg = fixtures.registry(cfg)
    lc = Lifecycle(host, reg, LifecycleConfig(max_epochs=cfg.epochs), log=fixtures.NullLog())
    space = reg.space
    decision = space.decode(
        space.encode([{"op": Op.GERMINATE.name.lower(), "slot": f"s{SLOT}", "blueprint": blueprint}])
    )[0]
    lc.apply(decision, 0)
    seed = lc.seeds[SLOT]
    assert seed is not None
    lc._move(seed, Stage.TRAINING, 1, "bench")
    slot = host.seed_slots()[SLOT]
    assert slot.seed is not None and float(slot.alpha) == 0.0 and float(slot.incubate) == 1.0
    return host, slot.seed


def run(settings: Settings) -> list[Row]:
    blueprint = "conv_small" if "conv_small" in blueprint_names("cnn") else blueprint_names("cnn")[0]
    host, seed = training_host(blueprint)
    hand = HandWiredIncubator(host, seed, SLOT)
    x, y = host_fixtures.batch()
    host.train()
    host_fixtures.fwd_bwd(host, x, y)
    g_kernel = [p.grad.clone() for p in seed.parameters() if p.grad is not None]
    host_fixtures.fwd_bwd(hand, x, y)
    g_hand = [p.grad.clone() for p in seed.parameters() if p.grad is not None]
    if len(g_kernel) != len(g_hand) or not all(torch.allclose(a, b) for a, b in zip(g_kernel, g_hand, strict=True)):
        raise AssertionError("hand-wired incubator gives the seed other gradients than the slot")
    t = interleaved(
        {
            "slot": lambda: host_fixtures.fwd_bwd(host, x, y),
            "hand": lambda: host_fixtures.fwd_bwd(hand, x, y),
        },
        # A 2% target on a ~80 ms step under shared load needs several calls per sample and many samples.
        settings.heavier(repeats=15, sample_s=0.25),
    )
    r = ratio_of(t, "slot", "hand")
    return [
        Row(
            key=KEY,
            figure=f"fwd+bwd, one TRAINING seed ({blueprint}, slot {SLOT}) vs hand-wired",
            measured=fmt_time(median(t["slot"])),
            baseline=fmt_time(median(t["hand"])) + " (hand forward)",
            ratio=r,
            target=f"<= {TARGET:g}x",
            passed=r <= TARGET,
        )
    ]
