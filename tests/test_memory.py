"""An `esper` process and its workers keep freed memory instead of page-faulting it back every batch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from esper_kernel.infra.memory import OPT_OUT
from esper_kernel.infra.workers import map_jobs

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator thresholds are Linux-only")

#: An "epoch" the way a host's batches allocate: tensors of several sizes, all freed together, again and again.
_EPOCHS = """
import resource, torch
def minflt():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def epoch():
    xs = [torch.ones(mib << 18) for mib in (1, 3, 6, 12, 24, 2, 5)]  # float32: mib MiB each
    del xs
def faults():
    epoch()
    f0 = minflt()
    for _ in range(20):
        epoch()
    return minflt() - f0
"""


def _faults_after_cli(opt_out: bool) -> int:
    # Through the real entry point: `esper levers list` runs the group callback that fixes the allocator.
    script = _EPOCHS + textwrap.dedent("""
        import contextlib, io
        from esper_kernel.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            main(["levers", "list"], standalone_mode=False)
        print(faults())
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if opt_out:
        env[OPT_OUT] = "0"
    else:
        env.pop(OPT_OUT, None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def test_an_esper_command_stops_refaulting_the_memory_an_epoch_frees() -> None:
    kept, default = _faults_after_cli(opt_out=False), _faults_after_cli(opt_out=True)
    # Measured: kept 0-256 faults, glibc's defaults 14,826-251,274 (20 epochs of 53 MiB).
    assert default > 5000, f"the allocation loop no longer shows the problem (default {default} faults)"
    assert kept * 10 < default, f"kept {kept} faults vs {default} with {OPT_OUT}=0"


def _worker_faults(_: int) -> int:
    namespace: dict[str, object] = {}
    exec(_EPOCHS, namespace)  # the very loop the CLI test runs in its child, here inside a pool worker
    fn = namespace["faults"]
    assert callable(fn)
    return int(fn())


def test_pool_workers_keep_freed_memory_too() -> None:
    faults = map_jobs(_worker_faults, [0, 1], workers=2)
    assert max(faults) < 5000, f"worker faults per 20 epochs: {faults}"
