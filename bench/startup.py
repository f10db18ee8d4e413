"""Figures: start-up costs a user waits through before any work.

- ``esper levers list`` and ``esper tasks list``: CPU seconds of the whole
  command in a fresh interpreter (median of the repeats), beside ``esper
  --help`` in the same run; and whether torch was imported (it must not be).
- The worker pool of ``esper train --workers 2``: wall seconds from asking
  for the pool (``EnvPool.processes``, 2 envs on 2 workers, in a fresh
  interpreter that has built what ``esper train`` builds first) until both
  workers have reset their first episode, ready to step. Twice: with the
  workers forked from the command (the default where it is safe, see
  ``esper_kernel.infra.workers``), which includes importing whatever of
  ``esper_kernel.preload`` the command had not yet; and from a cold fork
  server (the fallback), which includes the server's own imports.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys

from bench.timing import Row, Settings
from esper_kernel.infra.workers import START_ENV

KEY = "startup"
_HOW = {
    "fork": "forked from the command (the default on Linux)",
    "forkserver": "cold fork server (ESPER_START_METHOD=forkserver, the fallback)",
}
LIST_TARGET = 0.6
POOL_TARGET = 3.0

_TORCH_PROBE = "; import sys; print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
_CLI = (
    "import sys; from click.testing import CliRunner; from esper_kernel.cli import main; "
    "r = CliRunner().invoke(main, sys.argv[1:]); assert r.exit_code == 0, r.output" + _TORCH_PROBE
)
_POOL = """
import time, sys
import torch
from esper_kernel.settings.config import EnvConfig
from esper_kernel.episode.env import build_registry
from esper_kernel.compose.registry import Selection
from esper_kernel.tamiyo.envpool import EnvPool
from esper_kernel.infra.telemetry import null_log
cfg = EnvConfig(epochs=3, train_size=128, val_size=64) if sys.argv[1] == "quick" else EnvConfig()
sel = Selection.from_env()
reg = build_registry(cfg, sel)
# esper train builds the policy's optimizer (which imports torch._dynamo) before it asks for the pool.
torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
t0 = time.perf_counter()
pool = EnvPool.processes(cfg, reg, sel, 0, n_envs=2, workers=2, log=null_log())
built = time.perf_counter() - t0
pool.reset([0, 1], [0, 0])
print(built, time.perf_counter() - t0)
pool.close()
"""


def _child_cpu(args: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """CPU seconds (user + system) of one child process, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    full = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, check=False, env=full)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr[-1500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, proc.stdout


def _listing_rows(settings: Settings) -> list[Row]:
    repeats = 1 if settings.quick else 5
    commands = {"levers list": ["levers", "list"], "tasks list": ["tasks", "list"], "--help": ["--help"]}
    cpu: dict[str, list[float]] = {k: [] for k in commands}
    torch_seen: dict[str, bool] = dict.fromkeys(commands, False)
    for _ in range(repeats):
        for name, args in commands.items():
            got, out = _child_cpu(["-c", _CLI, *args])
            cpu[name].append(got)
            torch_seen[name] |= "NO-TORCH" not in out
    rows = []
    help_s = statistics.median(cpu["--help"])
    for name in ("levers list", "tasks list"):
        med = statistics.median(cpu[name])
        rows.append(
            Row(
                key=KEY,
                figure=f"esper {name}: CPU of the whole command, fresh interpreter",
                measured=f"{med:.2f} CPU s" + (" (imported torch)" if torch_seen[name] else ", no torch"),
                baseline=f"{help_s:.2f} CPU s (esper --help)",
                ratio=med / help_s,
                target=f"<= {LIST_TARGET:g} s, no torch",
                passed=med <= LIST_TARGET and not torch_seen[name],
                notes=(f"median of {repeats}",),
            )
        )
    return rows


def _pool_row(settings: Settings, method: str) -> Row:
    repeats = 1 if settings.quick else 3
    built: list[float] = []
    ready: list[float] = []
    for _ in range(repeats):
        _, out = _child_cpu(["-c", _POOL, "quick" if settings.quick else "full"], {START_ENV: method})
        b, r = (float(v) for v in out.split())
        built.append(b)
        ready.append(r)
    med = statistics.median(ready)
    return Row(
        key=KEY,
        figure=f"worker pool start-up in esper train: 2 workers, {_HOW[method]}, until both have reset an episode",
        measured=f"{med:.2f} s wall",
        baseline=f"{statistics.median(built):.2f} s of it to build the shards",
        ratio=None,
        target=f"<= {POOL_TARGET:g} s",
        passed=med <= POOL_TARGET if method == "fork" else None,
        notes=(f"median of {repeats} fresh interpreters",),
    )


def run(settings: Settings) -> list[Row]:
    return [*_listing_rows(settings), _pool_row(settings, "fork"), _pool_row(settings, "forkserver")]
