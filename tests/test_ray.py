"""Ray: env workers as actors on a local instance (num_cpus=2) give the local workers' result.

CI installs the ``ray`` extra and sets ``REQUIRE_RAY=1``, so there these
tests run; elsewhere, without Ray, they skip.
"""

from __future__ import annotations

import builtins
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from esper_kernel.compose.discovery import Selection
from esper_kernel.episode.env import EnvConfig, build_registry
from esper_kernel.infra.errors import EsperError
from esper_kernel.infra.telemetry import null_log
from esper_kernel.tamiyo.train import PPOConfig, TrainOptions, train_ppo

if os.environ.get("REQUIRE_RAY") != "1":
    pytest.importorskip("ray")

TINY = EnvConfig(epochs=2, train_size=64, val_size=32, batch_size=32)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    from esper_kernel.tamiyo.raypool import init_ray

    ray = init_ray(None, num_cpus=2)
    yield ray
    ray.shutdown()


def test_ray_actors_give_the_local_workers_result(local_ray: Any, tmp_path: Path) -> None:
    reg = build_registry(TINY, Selection())
    cfg = PPOConfig(episodes=4, n_envs=2, hidden=16, update_epochs=2, group_size=2, seed=5)
    weights = {}
    returns = {}
    for name, opts in {
        "processes": TrainOptions(workers=2, eval_every=2, eval_seeds=(0, 1)),
        "ray": TrainOptions(workers=2, eval_every=2, eval_seeds=(0, 1), ray=""),
    }.items():
        out = tmp_path / name / "policy.pt"
        returns[name] = train_ppo(TINY, reg, cfg, null_log(), out, options=opts).episode_returns
        weights[name] = torch.load(out, weights_only=True)["state_dict"]
    assert returns["ray"] == returns["processes"]
    assert all(torch.equal(weights["ray"][k], weights["processes"][k]) for k in weights["ray"])


def test_missing_ray_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from esper_kernel.tamiyo import raypool

    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "ray", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(EsperError) as info:
        raypool.require_ray()
    assert str(info.value) == 'Ray is not installed; install the extra with: pip install "esper-kernel[ray]"'


def test_sweep_on_ray_tune_gives_the_local_pools_table(local_ray: Any, tmp_path: Path) -> None:
    from test_sweep import check_sweep, run_sweep

    on_ray = run_sweep(tmp_path / "ray", "--ray")
    assert on_ray["sweep"]["engine"] == "ray-tune"
    check_sweep(on_ray, tmp_path / "ray")
    local = run_sweep(tmp_path / "local", "--workers", "2")
    for a, b in zip(on_ray["policies"], local["policies"], strict=True):
        assert [s["return"] for s in a["per_seed"]] == [s["return"] for s in b["per_seed"]]
