"""The divergence guard: a host pinned at chance by a live seed loses that seed, named on the console and report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import esper_kernel.grow.lifecycle as lifecycle
from esper_kernel.commands.outdir import EVENTS, SUMMARY
from esper_kernel.commands.run import run
from esper_kernel.compose.seeds import SeedState
from esper_kernel.compose.stages import Stage
from esper_kernel.episode.divergence import CHANCE_MARGIN, DIVERGED_EPOCHS, find_divergence, find_pinned_host
from esper_kernel.infra.telemetry import read_events
from esper_kernel.report.console import final_stage
from esper_kernel.settings.config import RunConfig, with_overrides


class _BlowsUp(nn.Module):
    """A seed that trains normally but, once its output is nonzero, adds 1e6 to everything it feeds at evaluation:
    every validation example then gets the same logits, so the host predicts one class (chance)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return out + 1e6 if not self.training and bool(out.abs().sum() > 0) else out


def test_a_seed_that_pins_the_host_at_chance_is_culled_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = lifecycle.build_seed

    def build(topology: str, name: str, dim: int, width_scale: float = 1.0) -> nn.Module:
        module = real(topology, name, dim, width_scale)
        return _BlowsUp(module) if name == "conv_light" else module

    monkeypatch.setattr(lifecycle, "build_seed", build)
    plan = tmp_path / "plan.toml"
    plan.write_text('[[step]]\nepoch = 4\nop = "germinate"\nslot = 0\nblueprint = "conv_light"\n')
    out = tmp_path / "out"
    console: list[str] = []
    config = with_overrides(RunConfig(), out=str(out), policy=f"schedule:{plan}", env__epochs=16, env__width=8)

    run(config, on_warning=console.append)

    events = read_events(out / EVENTS)
    acc = [e["val_accuracy"] for e in events if e["event"] == "epoch.completed"]
    (diverged,) = [e for e in events if e["event"] == "seed.diverged"]
    assert (diverged["seed_id"], diverged["slot"], diverged["blueprint"]) == ("seed1-s0", 0, "conv_light")
    assert diverged["contribution"] < 0 and diverged["chance"] == pytest.approx(0.1)
    epoch = diverged["epoch"]
    assert all(a <= 0.1 + CHANCE_MARGIN for a in acc[epoch - DIVERGED_EPOCHS + 1 : epoch + 1])
    culled = [e for e in events if e["event"] == "seed.stage_changed" and e["new"] == "CULLED"]
    assert [(e["seed_id"], e["epoch"], e["reason"]) for e in culled] == [("seed1-s0", epoch, "diverged")]
    assert any("seed seed1-s0 (conv_light) in slot 0 culled" in line and "at chance" in line for line in console)
    # The report and the summary say what happened; without the seed the host learns again.
    (seed,) = json.loads((out / SUMMARY).read_text())["seeds"]
    assert seed["cull_reason"] == "diverged" and final_stage(seed) == "CULLED"
    assert acc[-1] > 0.1 + 2 * CHANCE_MARGIN


def _seed(slot: int, germinated: int, stage: Stage = Stage.BLENDING, contribution: float | None = None) -> SeedState:
    seed = SeedState(f"s{slot}", slot, "conv_light", "linear", "cnn", germinated, 40, stage=stage)
    seed.metrics.contribution.append(contribution)
    return seed


def test_the_guard_needs_a_host_that_learned_sat_at_chance_and_a_seed_live_through_it() -> None:
    learned, pinned = [0.1, 0.3, 0.4], [0.1, 0.1, 0.11]
    a, b = _seed(0, 0, contribution=-0.05), _seed(1, 1, contribution=-0.2)
    found = find_divergence(learned + pinned, 10, [a, b])
    assert found is not None and found.slot == 1 and found.contribution == -0.2  # the most harmful
    assert find_divergence([0.1, 0.12, 0.1, *pinned], 10, [a, b]) is None  # never clearly above chance
    assert find_divergence([*learned, *pinned[:2], 0.3], 10, [a, b]) is None  # a dip, not a divergence
    assert find_divergence(learned + pinned, 10, []) is None  # no seed to blame
    assert find_divergence(learned + pinned, 10, [_seed(0, 4)]) is None  # germinated after it began
    assert find_divergence(learned + pinned, 10, [a, b], since=4) is None  # the last cull's window is not reused
    assert find_divergence(learned + pinned, 10, [a, b], n_val=16) is None  # too few examples to tell
    # Helping (or unmeasured) seeds only: the most recently germinated is the one culled.
    helping = [_seed(0, 0, contribution=0.01), _seed(1, 2, Stage.TRAINING)]
    found = find_divergence(learned + pinned, 10, helping)
    assert found is not None and found.slot == 1 and found.contribution is None


class _BlowsUpOnceFossilized(nn.Module):
    """A seed that behaves until it is fossilized, then pins the host at chance as ``_BlowsUp`` does."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return out + 1e6 if self.armed and not self.training else out


def test_a_fossil_that_pins_the_host_at_chance_is_reported_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_build, real_fossilize = lifecycle.build_seed, lifecycle.Lifecycle.fossilize
    built: list[_BlowsUpOnceFossilized] = []

    def build(topology: str, name: str, dim: int, width_scale: float = 1.0) -> nn.Module:
        built.append(_BlowsUpOnceFossilized(real_build(topology, name, dim, width_scale)))
        return built[-1]

    def fossilize(self: lifecycle.Lifecycle, slot: int, epoch: int) -> SeedState:
        seed = real_fossilize(self, slot, epoch)
        for module in built:
            module.armed = True
        return seed

    monkeypatch.setattr(lifecycle, "build_seed", build)
    monkeypatch.setattr(lifecycle.Lifecycle, "fossilize", fossilize)
    plan = tmp_path / "plan.toml"
    plan.write_text(
        '[[step]]\nepoch = 4\nop = "germinate"\nslot = 0\nblueprint = "conv_light"\n'
        'dwell = "MINIMAL"\ntempo = "FAST"\n\n[[step]]\nepoch = 6\nop = "fossilize"\nslot = 0\nwindow = 20\n'
    )
    out = tmp_path / "out"
    console: list[str] = []
    config = with_overrides(RunConfig(), out=str(out), policy=f"schedule:{plan}", env__epochs=16, env__width=8)

    run(config, on_warning=console.append)

    events = read_events(out / EVENTS)
    (fossilized,) = [e for e in events if e["event"] == "seed.stage_changed" and e["new"] == "FOSSILIZED"]
    assert not [e for e in events if e["event"] == "seed.diverged"]  # nothing live to cull
    (pinned,) = [e for e in events if e["event"] == "host.diverged"]  # once, though it stays at chance
    assert pinned["epoch"] > fossilized["epoch"] and pinned["chance"] == pytest.approx(0.1)
    assert pinned["fossils"] == ["seed1-s0 (conv_light) in slot 0"]
    assert any("no live seed to cull" in line and "seed1-s0 (conv_light)" in line for line in console)


def test_a_pinned_host_is_reported_only_when_no_live_seed_can_be_blamed() -> None:
    learned, pinned = [0.1, 0.3, 0.4], [0.1, 0.1, 0.11]
    fossil = _seed(0, 0, stage=Stage.FOSSILIZED)
    fossil.stage_entered_epoch = 2
    found = find_pinned_host(learned + pinned, 10, [], [fossil])
    assert found is not None and found.fossils == ("s0 (conv_light) in slot 0",) and found.best_accuracy == 0.4
    assert find_pinned_host(learned + pinned, 10, [_seed(1, 1, contribution=-0.2)], [fossil]) is None  # culled
    assert find_pinned_host([*learned, *pinned[:2], 0.3], 10, [], [fossil]) is None  # not at chance
    old = _seed(0, 0, stage=Stage.FOSSILIZED)
    old.stage_entered_epoch = 1  # fossilized before the host's best epoch: not named
    found = find_pinned_host(learned + pinned, 10, [], [old])
    assert found is not None and found.fossils == ()
