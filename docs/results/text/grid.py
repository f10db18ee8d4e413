"""The text task's schedule grid: ``docs/schedules/grid.py``'s grid over the transformer blueprints.

Its two timings and 1 or 3 slots, for the two blueprints the text task offers
(``attention`` and ``conv1d``, the seeds that add context). Written by::

    python docs/results/text/grid.py docs/results/text/grid
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "schedules"))
from grid import grid_schedules

BLUEPRINTS = ("attention", "conv1d")

if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/text/grid")
    out.mkdir(parents=True, exist_ok=True)
    for schedule in grid_schedules(blueprints=BLUEPRINTS):
        path = out / f"{schedule.name}.toml"
        path.write_text(schedule.to_toml("Written by python docs/results/text/grid.py (docs/growth.md)."), "utf-8")
        print(path)
