"""Figure: forward+backward of the default CNN host with its 3 dormant slots against the same host with none.

The baseline is a deep copy of the host (same weights) whose slots are
replaced by ``nn.Identity``: what the host would cost if it had never been
given slots.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from bench import host_fixtures
from bench.timing import Row, Settings, fmt_time, interleaved, median, ratio_of

KEY = "dormant"
TARGET = 1.02


def run(settings: Settings) -> list[Row]:
    host = host_fixtures.default_host()
    bare = copy.deepcopy(host)
    bare.slots = nn.ModuleList(nn.Identity() for _ in bare.slots)
    # An identical copy of the slotted host timed as a third side: its ratio to the host is the noise floor.
    twin = copy.deepcopy(host)
    x, y = host_fixtures.batch()
    for m in (host, bare, twin):
        m.train()
    with torch.no_grad():
        # BatchNorm in train mode uses batch statistics, so both give the same output from the same weights.
        if not torch.equal(host(x), bare(x)):
            raise AssertionError("dormant host and slot-free copy disagree")
    t = interleaved(
        {
            "slots": lambda: host_fixtures.fwd_bwd(host, x, y),
            "bare": lambda: host_fixtures.fwd_bwd(bare, x, y),
            "twin": lambda: host_fixtures.fwd_bwd(twin, x, y),
        },
        # A 2% target on a ~80 ms step under shared load needs several calls per sample and many samples.
        settings.heavier(repeats=15, sample_s=0.25),
    )
    r = ratio_of(t, "slots", "bare")
    noise = ratio_of(t, "twin", "slots")
    return [
        Row(
            key=KEY,
            figure="fwd+bwd, CNN host with 3 DORMANT slots vs no slots",
            measured=fmt_time(median(t["slots"])),
            baseline=fmt_time(median(t["bare"])) + " (slots = Identity)",
            ratio=r,
            target=f"<= {TARGET:g}x",
            passed=r <= TARGET,
            notes=(
                f"batch {x.shape[0]}x{tuple(x.shape[1:])}; A/A control (identical slotted copy / host): {noise:.3f}x",
            ),
        )
    ]
