"""Assert that an `esper run` output directory's run.started event lists exactly the expected levers.

Usage: python tox/check_run.py OUT_DIR [LEVER,LEVER,...]   (no second argument, or "-", means no levers)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    out = Path(argv[1])
    expected = sorted(n for n in (argv[2] if len(argv) > 2 and argv[2] != "-" else "").split(",") if n)
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines() if line.strip()]
    started = [e for e in events if e.get("event") == "run.started"]
    if len(started) != 1:
        print(f"{out}: expected one run.started event, found {len(started)}", file=sys.stderr)
        return 1
    got = sorted(lv["name"] for lv in started[0]["levers"])
    failed = started[0].get("failed_levers") or []
    if got != expected or failed:
        print(f"{out}: run.started levers {got} (failed {failed}), expected {expected}", file=sys.stderr)
        return 1
    if not (out / "summary.json").exists():
        print(f"{out}: no summary.json: the run did not finish", file=sys.stderr)
        return 1
    print(f"{out}: levers {got or 'none'} as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
