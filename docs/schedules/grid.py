"""The documented grid of growth schedules ``esper sweep`` searches (``docs/eval.md``, Schedules).

Every combination of a blueprint, a lever timing and a number of slots is one
schedule: germinate that blueprint in slot 0 at epoch 0 (and in slots 1, 2 at
epochs 1, 2 when three slots grow), each seed fossilized as soon as it may be
(a fossilize step from the earliest epoch the kernel's timeline allows, with a
window to the episode's end). Written as files by::

    python docs/schedules/grid.py docs/schedules/grid

and searched by ``esper sweep --policies 'schedule:docs/schedules/grid/*.toml'``.

MNIST-1D's 1-D blueprints are other names (``wide``, ``dilated4``, ``dilated``,
``conv_small`` widen its view), so its grid is the same design over those, with
the fast timing only (the default one leaves a 20-epoch episode 11 epochs for a
seed to pay off, and the fast one was the better on ``pairs`` too)::

    python docs/schedules/grid.py docs/schedules/grid-mnist1d mnist1d

It lives beside the files it writes, not in the kernel: it names the builtin
levers' choices, and the kernel never names a lever.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from esper_kernel.tamiyo.schedule import Schedule, ScheduleStep

__all__ = ["BLUEPRINTS", "GRIDS", "MNIST1D_BLUEPRINTS", "SLOTS", "TIMINGS", "grid_schedules", "write_grid"]

#: Blueprints that widen a CNN host's view, from the largest view to the smallest (docs/tasks.md).
BLUEPRINTS = ("dilated", "conv_heavy", "conv_light", "depthwise")
#: Lever timings: the quickest seed (dwell 1 epoch, a 3-epoch blend) and the builtin levers' defaults (3, 5).
TIMINGS: Mapping[str, tuple[dict[str, str], int]] = {
    "fast": ({"dwell": "MINIMAL", "tempo": "FAST"}, 5),
    "default": ({}, 9),
}
SLOTS = (1, 3)
#: The 1-D blueprints that widen MNIST-1D's 1-sample view, from the widest view (docs/tasks.md).
MNIST1D_BLUEPRINTS = ("dilated4", "wide", "dilated", "conv_small")
#: Per grid: its blueprints and timings.
GRIDS: Mapping[str, tuple[Sequence[str], Mapping[str, tuple[dict[str, str], int]]]] = {
    "cnn": (BLUEPRINTS, TIMINGS),
    "mnist1d": (MNIST1D_BLUEPRINTS, {"fast": TIMINGS["fast"]}),
}
#: Epochs a fossilize step may wait for its seed to become fossilizable.
WINDOW = 40


def grid_schedules(
    blueprints: Sequence[str] = BLUEPRINTS,
    timings: Mapping[str, tuple[dict[str, str], int]] = TIMINGS,
    slots: Sequence[int] = SLOTS,
) -> list[Schedule]:
    """Every blueprint x timing x slot count, as schedules named ``BLUEPRINT-TIMING-Nslot``."""
    out = []
    for bp, (timing, (levers, ready)), n in itertools.product(blueprints, timings.items(), slots):
        steps: list[ScheduleStep] = []
        for slot in range(n):
            choices = (("blueprint", bp), *levers.items())
            steps.append(ScheduleStep(len(steps) + 1, slot, "germinate", slot, choices))
        for slot in range(n):
            steps.append(ScheduleStep(len(steps) + 1, slot + ready, "fossilize", slot, window=WINDOW))
        out.append(Schedule(f"{bp}-{timing}-{n}slot", tuple(steps), "grid"))
    return out


def write_grid(out: Path, grid: str = "cnn") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    blueprints, timings = GRIDS[grid]
    for schedule in grid_schedules(blueprints, timings):
        path = out / f"{schedule.name}.toml"
        path.write_text(schedule.to_toml("Written by python docs/schedules/grid.py (docs/eval.md)."), "utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    args = sys.argv[1:]
    for p in write_grid(Path(args[0] if args else "docs/schedules/grid"), args[1] if len(args) > 1 else "cnn"):
        print(p)
