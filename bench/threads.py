"""Figure: ``esper run`` wall time with one other CPU-bound process running, by thread setting.

Three runs of the default ``esper run`` cut to ``--epochs 8`` (a fifth of
the default 40: with torch's threads beside a busy process the full run took
over 15 minutes on the shared 2-core machine; ``--epochs 1`` and a small
task with ``--quick``),
each a fresh ``esper`` process with ``OMP_NUM_THREADS`` unset so the
command's own default applies, interleaved in every repeat:

- quiet: nothing else of ours running;
- busy: a ``while True: pass`` process running beside it;
- busy, torch's threads: the same, with ``--threads 0`` (torch's default pool,
  one thread per core), the behaviour before the default became 1.

Targets: busy <= 1.5x quiet with the default. The torch-threads row is
reported: it is the collapse the default avoids.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.timing import Row, Settings, median

KEY = "threads"

_SPIN = "while True: pass"
_QUICK_CONFIG = "seed = 0\n[env]\ntrain_size = 128\nval_size = 64\nepochs = 1\n"


#: A run slower than this is reported as "> LIMIT s" rather than waited for.
LIMIT_S = 600.0


def _run_seconds(args: list[str], busy: bool, out: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS" and not k.startswith("ESPER_")}
    spinner = subprocess.Popen([sys.executable, "-c", _SPIN]) if busy else None
    try:
        t0 = time.perf_counter()
        try:
            subprocess.run(
                [sys.executable, "-m", "esper_kernel.cli", "run", "--quiet", "--out", str(out), *args],
                env=env,
                check=True,
                capture_output=True,
                timeout=LIMIT_S,
            )
        except subprocess.TimeoutExpired:
            return LIMIT_S
        return time.perf_counter() - t0
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def run(settings: Settings) -> list[Row]:
    # One repeat: the torch-threads side alone can take minutes.
    repeats = 1
    with tempfile.TemporaryDirectory() as tmp:
        base: list[str] = ["--epochs", "8"]
        if settings.quick:
            cfg = Path(tmp) / "quick.toml"
            cfg.write_text(_QUICK_CONFIG, encoding="utf-8")
            base = ["--config", str(cfg)]
        cases = {
            "quiet": (base, False),
            "busy": (base, True),
            "busy_torch": ([*base, "--threads", "0"], True),
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        for r in range(repeats):
            order = list(cases) if r % 2 == 0 else list(cases)[::-1]
            for k in order:
                args, busy = cases[k]
                times[k].append(_run_seconds(args, busy, Path(tmp) / k))
    quiet, busy, busy_torch = (median(times[k]) for k in cases)
    what = "esper run --epochs 1 (small task)" if settings.quick else "esper run --epochs 8 (else default)"
    cores = os.cpu_count()
    return [
        Row(
            key=KEY,
            figure=f"{what}, default threads, one busy process vs quiet",
            measured=f"{busy:.1f} s",
            baseline=f"{quiet:.1f} s (quiet)",
            ratio=busy / quiet,
            target="<= 1.5x",
            passed=busy / quiet <= 1.5,
            notes=(f"{cores} cores; wall time of the whole command, process start included",),
        ),
        Row(
            key=KEY,
            figure=f"{what}, one busy process: torch's threads vs default (1)",
            measured=f"{'> ' if busy_torch >= LIMIT_S else ''}{busy_torch:.1f} s (--threads 0)",
            baseline=f"{busy:.1f} s (default)",
            ratio=busy_torch / busy,
            target="reported",
            passed=None,
        ),
    ]
