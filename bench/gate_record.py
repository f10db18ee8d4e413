"""Record what a measurement change must not change, and compare two records.

Per seed, a default ``esper run`` (heuristic, 40 epochs): final accuracy,
return, every decision, every gate evaluation with its values
(contributions included) and the seeds' fates::

    PYTHONPATH=OLD_CHECKOUT python -m bench.gate_record 0,1,2 before.json
    python -m bench.gate_record 0,1,2 after.json
    python -m bench.gate_record --compare before.json after.json

Not a figure of ``python -m bench``: a check run by hand around a change to the epoch loop.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import esper_kernel
from esper_kernel.commands import run as esper_run
from esper_kernel.infra.telemetry import read_events
from esper_kernel.settings.config import RunConfig

KEYS = ("acc", "ret", "gates", "decisions", "seeds")


def record(seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.process_time()
        summary = esper_run.run(RunConfig(seed=seed, out=f"{d}/run"))
        cpu = time.process_time() - t0
        events = read_events(Path(d) / "run" / "events.jsonl")
    gates = [
        (e["epoch"], e["seed_id"], e["gate"], e["passed"], e.get("values"))
        for e in events
        if e["event"] == "seed.gate_evaluated"
    ]
    decisions = [(e["epoch"], e["op"], e.get("choices")) for e in events if e["event"] == "decision"]
    return {
        "seed": seed,
        "acc": summary["final_val_accuracy"],
        "ret": summary["return"],
        "cpu": cpu,
        "gates": gates,
        "decisions": decisions,
        "seeds": summary["seeds"],
    }


def _episodes(path: str) -> dict[int, dict[str, Any]]:
    return {e["seed"]: e for e in json.loads(Path(path).read_text(encoding="utf-8"))["episodes"]}


def compare(before: str, after: str) -> int:
    b, a = _episodes(before), _episodes(after)
    bad = 0
    for s in sorted(b):
        differ = [k for k in KEYS if b[s][k] != a[s][k]]
        bad += bool(differ)
        verdict = "identical" if not differ else "DIFFERENT: " + ", ".join(differ)
        print(f"seed {s}: final acc {b[s]['acc']} / {a[s]['acc']}, {len(b[s]['gates'])} gate evaluations, {verdict}")
    return 1 if bad else 0


def main(argv: list[str]) -> int:
    if argv[0] == "--compare":
        return compare(argv[1], argv[2])
    torch.set_num_threads(1)
    out: dict[str, Any] = {"code": esper_kernel.__file__, "episodes": []}
    for seed in (int(s) for s in argv[0].split(",")):
        out["episodes"].append(record(seed))
        print(seed, out["episodes"][-1]["acc"], flush=True)
    Path(argv[1]).write_text(json.dumps(out), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
