"""An `esper` process and its workers keep freed memory instead of page-faulting it back every batch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from esper_kernel.infra.memory import OPT_OUT

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator thresholds are Linux-only")

#: An "epoch" the way a host's batches allocate: tensors of several sizes, all freed together, again and again.
_EPOCHS = """
import resource, torch
def minflt():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def epoch():
    xs = [torch.ones(mib << 18) for mib in (1, 3, 6, 12, 24, 24, 24, 5)]  # float32: mib MiB each
    del xs
def faults():
    for _ in range(3):  # until the heap has grown to hold an epoch
        epoch()
    f0 = minflt()
    for _ in range(20):
        epoch()
    return minflt() - f0
"""


def _faults_in_fresh_process(tail: str, opt_out: bool) -> int:
    # A fresh interpreter: its heap holds only the imports, so glibc's defaults show the problem and the
    # pytest process's own heap history (which can raise glibc's dynamic thresholds) cannot mask it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if opt_out:
        env[OPT_OUT] = "0"
    else:
        env.pop(OPT_OUT, None)
    script = _EPOCHS + textwrap.dedent(tail)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


#: Through the real entry point: `esper levers list` runs the group callback that fixes the allocator.
_AFTER_CLI = """
    import contextlib, io
    from esper_kernel.cli import main
    with contextlib.redirect_stdout(io.StringIO()):
        main(["levers", "list"], standalone_mode=False)
    print(faults())
"""

#: The same loop inside each of two pool workers; the parent itself never fixes its allocator.
_IN_WORKERS = """
    from esper_kernel.infra.workers import map_jobs
    torch.set_num_threads(1)  # as every esper command does; with more, the pool is forked from a server instead
    def job(_):
        return faults()
    print(max(map_jobs(job, [0, 1], workers=2)))
"""


@pytest.mark.parametrize("tail", [_AFTER_CLI, _IN_WORKERS], ids=["cli", "pool-workers"])
def test_esper_stops_refaulting_the_memory_an_epoch_frees(tail: str) -> None:
    # Under glibc's defaults whether a run trims its heap every epoch is luck (measured: 270,720 faults in
    # about two runs of three, 0 in the rest, by address layout), so the control gets tries; kept must hold on all.
    kept = max(_faults_in_fresh_process(tail, opt_out=False) for _ in range(3))
    tries = (_faults_in_fresh_process(tail, opt_out=True) for _ in range(10))
    default = next((f for f in tries if f > 5000), 0)
    assert default > 5000, "in 10 runs under glibc's defaults the allocation loop never showed the problem"
    assert kept * 10 < default, f"kept {kept} faults vs {default} with {OPT_OUT}=0"
