"""Figure: the per-step lever work through the registry against the six levers hand-wired.

Both sides do the same work on the same fixture and are checked to return
equal masks, decisions and fields; what differs is only the path: the
registry's composed hooks, mask validation and ActionSpace against plain
function calls, masks ANDed by hand and decoding by hand.
"""

from __future__ import annotations

from bench import lever_work
from bench.timing import Row, Settings, fmt_time, interleaved, median, ratio_of

KEY = "registry"
TARGET = 1.2


def run(settings: Settings) -> list[Row]:
    step = lever_work.make_step()
    hand = lever_work.HandWired(step)
    lever_work.check_equal(lever_work.through_registry(step), hand(step))
    t = interleaved({"registry": lambda: lever_work.through_registry(step), "direct": lambda: hand(step)}, settings)
    r = ratio_of(t, "registry", "direct")
    return [
        Row(
            key=KEY,
            figure="lever work via registry vs hand-wired",
            measured=fmt_time(median(t["registry"])),
            baseline=fmt_time(median(t["direct"])) + " (direct calls)",
            ratio=r,
            target=f"<= {TARGET:g}x",
            passed=r <= TARGET,
        )
    ]
