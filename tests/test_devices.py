"""--device and --amp plumbing, checked on the CPU (a GPU run is bench/gpu.py's job)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import torch
from click.testing import CliRunner as ClickRunner

from esper_kernel.cli import main
from esper_kernel.compose.discovery import Selection
from esper_kernel.episode.env import EnvConfig, MorphoEnv, build_registry, load_task
from esper_kernel.infra import checkpoint
from esper_kernel.infra.devices import DeviceError, resolve_device
from esper_kernel.infra.telemetry import null_log
from esper_kernel.settings.config import RunConfig, structure_config

TINY = EnvConfig(epochs=2, train_size=64, val_size=32, batch_size=32)
NO_CUDA = not torch.cuda.is_available()


def _episode(cfg: EnvConfig) -> list[tuple[float, float]]:
    """(reward, train loss) of every epoch of a waiting episode."""
    reg = build_registry(cfg, Selection())
    env = MorphoEnv(cfg, reg, load_task(cfg, 0), null_log())
    env.reset(5)
    wait = reg.space.encode([{"op": "wait"}])[0]
    out = []
    for _ in range(cfg.epochs):
        step = env.step(wait)
        out.append((step.reward, step.epoch.train_loss))
    return out


def test_auto_is_cuda_only_where_torch_sees_a_gpu() -> None:
    assert resolve_device("auto").type == ("cpu" if NO_CUDA else "cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_unknown_device_names_the_choices() -> None:
    with pytest.raises(DeviceError, match="unknown device 'tpu'; choose cpu, cuda"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        EnvConfig(device="tpu")
    with pytest.raises(Exception, match=r"env: unknown device 'gpu'"):
        structure_config({"env": {"device": "gpu"}})


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_one_line_before_anything_is_written(tmp_path: Path) -> None:
    for cmd in (["run", "--quiet"], ["train"]):
        out = tmp_path / cmd[0]
        result = ClickRunner().invoke(main, [*cmd, "--device", "cuda", "--out", str(out)])
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "sees no CUDA GPU" in lines[0], result.output
        assert not out.exists()


def test_auto_on_this_machine_gives_the_explicit_device_result() -> None:
    explicit = "cpu" if NO_CUDA else "cuda"
    assert _episode(attrs.evolve(TINY, device="auto")) == _episode(attrs.evolve(TINY, device=explicit))


def test_amp_runs_bf16_autocast_and_changes_the_numbers() -> None:
    plain = _episode(TINY)
    amp = _episode(attrs.evolve(TINY, amp=True))
    assert all(math.isfinite(r) and math.isfinite(loss) for r, loss in amp)
    assert amp != plain  # bf16 really ran: the host's arithmetic changed


def test_run_checkpoint_keeps_the_cuda_random_state_slot(tmp_path: Path) -> None:
    result = ClickRunner().invoke(
        main, ["run", "--quiet", "--epochs", "1", "--device", "auto", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    state = checkpoint.load(tmp_path / "r" / "checkpoint.pt")
    assert "cuda_rng" in state
    assert (state["cuda_rng"] is None) == NO_CUDA
    assert RunConfig().env.device == "cpu" and state["config"]["env"]["device"] == "auto"


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_gpu_bench_says_no_cuda_and_exits_0() -> None:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu"], cwd=root, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("no CUDA:")
