"""Incubation: a hidden seed learns a bounded step, so blending it in does not wreck the host.

While a seed incubates (alpha 0, incubate 1) its output changes nothing, so the
task gradient it learns from never tells it to stop growing. Before the
incubation pull (``esper_kernel.grow.slots._IncubationPull``), a wide 1-D seed's
output reached 1,000x the host's features in two MNIST-1D epochs and blending
it in sent accuracy to chance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from esper_kernel.commands.run import run
from esper_kernel.episode.env import EnvConfig
from esper_kernel.grow import slots as slots_module
from esper_kernel.grow.blueprints import build_seed
from esper_kernel.grow.slots import SeedSlot
from esper_kernel.settings.config import RunConfig


def _rms(t: torch.Tensor) -> float:
    return float(t.pow(2).mean().sqrt())


def _incubate(blueprint: str, steps: int) -> tuple[float, float, float]:
    """A seed incubated against a fixed linear loss (what alpha 0 gives it): its output RMS over the
    features' RMS, and the cosine of its output with the loss's descent direction."""
    torch.manual_seed(0)
    slot = SeedSlot(16, "cnn1d")
    slot.germinate(build_seed("cnn1d", blueprint, 16), "linear")
    x = torch.randn(32, 16, 40).relu()
    # d loss / d slot output: fixed, as nothing the seed does is visible; scaled like a mean loss's gradient.
    w = torch.randn(32, 16, 40)
    opt = torch.optim.SGD(slot.seed_parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        out = slot(x)
        assert torch.equal(out, x)  # incubating: the host's output is untouched
        (out * w).mean().mul(10).backward()
        opt.step()
    assert slot.seed is not None
    with torch.no_grad():
        s = slot.seed(x)
    cos = float(torch.nn.functional.cosine_similarity(s.flatten(), -w.flatten(), dim=0))
    return _rms(s) / _rms(x), cos, slots_module.INCUBATION_REACH


@pytest.mark.parametrize("blueprint", ["wide", "dilated", "conv_small"])
def test_an_incubating_seed_learns_the_descent_step_at_a_bounded_size(blueprint: str) -> None:
    ratio, cos, reach = _incubate(blueprint, steps=300)
    assert ratio <= reach, f"{blueprint}: output {ratio:.2f}x the features, reach {reach}"
    assert cos > 0.15, f"{blueprint}: the seed did not learn the descent direction (cosine {cos:.2f})"


def test_without_the_pull_the_same_seed_grows_without_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    # The control: an infinite reach is no pull at all, the linearised loss alone.
    monkeypatch.setattr(slots_module, "INCUBATION_REACH", math.inf)
    ratio, _, _ = _incubate("wide", steps=100)
    assert ratio > 100


def _wide_seed_accuracies(tmp_path: Path) -> list[float]:
    plan = tmp_path / "wide.toml"
    plan.write_text(
        'name = "wide"\n\n[[step]]\nepoch = 0\nop = "germinate"\nslot = 0\nblueprint = "wide"\n'
        'dwell = "MINIMAL"\ntempo = "FAST"\n',
        encoding="utf-8",
    )
    env = EnvConfig(task="mnist1d", epochs=5, batch_size=64)  # the full split: a smaller one is too noisy
    out = tmp_path / "run"
    run(RunConfig(env=env, policy=f"schedule:{plan}", out=str(out), seed=101))
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    epochs = [e for e in events if e.get("event") == "epoch.completed"]
    assert [e["stages"][0] for e in epochs[:2]] == ["TRAINING", "BLENDING"]  # epochs 0-1 incubate
    return [float(e["val_accuracy"]) for e in epochs]


def test_blending_a_wide_seed_does_not_drop_accuracy_below_its_pre_blend_value(tmp_path: Path) -> None:
    pytest.importorskip("mnist1d", reason="the mnist1d extra is not installed")
    acc = _wide_seed_accuracies(tmp_path)
    pre, blending = acc[1], acc[2:5]  # alpha ramps over epochs 2-4 (FAST tempo: 3 epochs)
    assert min(blending) >= pre - 0.05, f"pre-blend {pre:.3f}, while blending {blending}"
    assert acc[-1] > pre + 0.05, f"the seed should lift the host once blended in: {acc}"
