"""``python -m bench``: run the figures, print one table. See :mod:`bench` for the options."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence

import torch

from bench.timing import Row, Settings
from esper_kernel.infra.memory import keep_freed_memory

#: Figure key -> module with ``run(settings) -> list[Row]``, in the order they print.
FIGURES: dict[str, str] = {
    "policy": "bench.policy_rate",
    "masking": "bench.masking",
    "lever_epoch": "bench.lever_epoch",
    "registry": "bench.registry_direct",
    "dormant": "bench.dormant_slots",
    "seed": "bench.training_seed",
    "compile": "bench.compile_graphs",
    "env": "bench.env_steps",
    "threads": "bench.threads",
    "seed_epoch": "bench.seed_epoch",
    "floor": "bench.floor",
    "counterfactual": "bench.counterfactual",
    "startup": "bench.startup",
    "scale": "bench.scale",
}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def machine() -> str:
    return (
        f"{_cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads, python {platform.python_version()}"
    )


def table(rows: Sequence[Row]) -> str:
    head = ("figure", "measured", "baseline", "ratio", "target", "result")
    body = [
        (
            r.figure,
            r.measured,
            r.baseline,
            r.ratio_text or ("-" if r.ratio is None else f"{r.ratio:.3f}x"),
            r.target,
            r.verdict,
        )
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    notes = [f"- {r.figure}: {n}" for r in rows for n in r.notes]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smoke pass: few, short repeats; numbers are not figures")
    p.add_argument("--only", default=None, help=f"comma-separated figure keys: {', '.join(FIGURES)}")
    # One thread by default: on a shared machine an op's parallel region waits for its slowest thread,
    # and a descheduled thread costs a whole timeslice (log_softmax of a [1, 10, 8] tensor: median 3 us,
    # mean 80 us with 2 threads under load 5), so the figures would measure the scheduler.
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1; 0: torch's own)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats per timing (default 9, quick 3)")
    args = p.parse_args(argv)
    keys = list(FIGURES) if args.only is None else [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in FIGURES]
    if unknown:
        p.error(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(FIGURES)}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # As `esper` does for itself; both sides of every pair run in this one process, so both get it.
    kept = keep_freed_memory()
    settings = Settings.make(args.quick, args.repeats)
    print(f"machine: {machine()}")
    print(f"load average at start: {_load()}")
    print(f"allocator: {'freed memory kept (esper_kernel.infra.memory)' if kept else 'glibc defaults'}")
    print(f"mode: {'quick (smoke; not figures)' if settings.quick else 'full'}, {settings.repeats} repeats", flush=True)
    rows: list[Row] = []
    started = time.perf_counter()
    for k in keys:
        t0 = time.perf_counter()
        run: Callable[[Settings], list[Row]] = importlib.import_module(FIGURES[k]).run
        got = run(settings)
        rows += got
        print(f"  [{k}] {time.perf_counter() - t0:.1f} s, load {_load()}", file=sys.stderr, flush=True)
    print()
    print(table(rows))
    print()
    print(f"load average at end: {_load()}; total {time.perf_counter() - started:.0f} s")
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
