"""A policy trained with levers L runs with L plus new levers (their heads at their defaults, said once);
a lever of L that is missing, or another slot count, is a one-line error naming it.

The end-to-end tests install the three distributions in ``plugins/`` with pip, as a user would
(into a fresh target directory, the kernel from this checkout), and play the shipped policy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from esper_kernel import HeadSpec, Op, TelemetryField, hookimpl
from esper_kernel.compose.actions import N_OPS
from esper_kernel.compose.core import CoreHeads
from esper_kernel.compose.discovery import LeverInfo
from esper_kernel.compose.registry import Registry
from esper_kernel.episode.env import EnvConfig, observation_names
from esper_kernel.grow.blueprints import blueprint_names
from esper_kernel.infra.telemetry import read_events
from esper_kernel.tamiyo.ppo import PRETRAINED, PolicyMismatchError, PPOPolicy, load_policy, save_policy, trained_on

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = sorted((ROOT / "plugins").iterdir())
# A small local corpus for the text task: nothing is downloaded.
TEXT = "When shall we three meet again, in thunder, lightning, or in rain? Fair is foul, and foul is fair.\n" * 40
#: The three plugins' heads and their declared defaults.
NEW_HEADS = {"blueprint_variant": "MEDIUM", "g2_threshold": "DEFAULT", "isolation_strength": "NONE"}


class FlagLever:
    @hookimpl
    def action_head(self) -> HeadSpec:
        return HeadSpec(name="flag", choices=("off", "on"), values=(False, True), default="off", ops={Op.CULL})


class WideLever:
    """A lever new to the policy: more choices than any head it knows, and an observed field."""

    @hookimpl
    def action_head(self) -> HeadSpec:
        return HeadSpec(
            name="width_mult", choices=tuple(f"w{i}" for i in range(10)), values=tuple(range(10)),
            default="w2", ops={Op.GERMINATE},
        )  # fmt: skip

    @hookimpl
    def telemetry_fields(self) -> list[TelemetryField]:
        return [TelemetryField("w", "its width", lambda _ctx: 1.0, observed=True)]


def registry(*levers: tuple[str, object], slots: int = 3) -> Registry:
    infos = [LeverInfo(name, f"esper-test-{name}", "1.0", f"tests:{name}", obj) for name, obj in levers]
    return Registry(CoreHeads(slots, blueprint_names("cnn")), infos)


def all_masks(reg: Registry, b: int) -> torch.Tensor:
    return reg.space.valid_choices.expand(b, N_OPS, *reg.space.valid_choices.shape).clone()


# -- the fit, in process ------------------------------------------------------------------


def test_new_lever_heads_take_their_defaults_and_change_no_draw(tmp_path: Path) -> None:
    trained = registry(("flag", FlagLever()))
    names = observation_names(trained, 3)
    policy = PPOPolicy.for_registry(trained, names, seed=4)
    policy.norm.update(torch.randn(50, len(names)) * 2 + 1)
    path = save_policy(policy, tmp_path / "p.pt")
    active = registry(("flag", FlagLever()), ("wide", WideLever()))
    active_names = observation_names(active, 3)
    assert len(active_names) == len(names) + 3  # the new lever's field, once per slot
    loaded = load_policy(path, active, len(active_names), active_names)
    assert loaded.defaulted == {"width_mult": "w2"}
    # The new lever's entries are put anywhere in the observation: the policy reads only its own.
    obs = torch.randn(64, len(names))
    wide_obs = torch.zeros(64, len(active_names))
    own = [active_names.index(n) for n in names]
    wide_obs[:, own] = obs
    wide_obs[:, [i for i in range(len(active_names)) if i not in own]] = 1e3
    for greedy in (True, False):
        policy.greedy = loaded.greedy = greedy
        policy.reseed(9)
        loaded.reseed(9)
        before = policy.act(obs, all_masks(trained, 64))
        after = loaded.act(wide_obs, all_masks(active, 64))
        for i, head in enumerate(trained.space.names):
            assert torch.equal(before.actions[:, i], after.actions[:, active.space.names.index(head)]), head
        w = active.space.names.index("width_mult")
        germinated = after.actions[:, active.space.op_index] == int(Op.GERMINATE)
        assert bool(germinated.any())
        assert set(after.actions[germinated, w].tolist()) == {2}  # w2, the declared default
        assert float(after.entropy[:, w].abs().max()) == 0.0  # held: nothing to learn, nothing drawn
        assert torch.allclose(before.log_prob, after.log_prob)


def test_a_missing_lever_is_one_line_naming_it(tmp_path: Path) -> None:
    trained = registry(("flag", FlagLever()), ("wide", WideLever()))
    names = observation_names(trained, 3)
    path = save_policy(PPOPolicy.for_registry(trained, names), tmp_path / "p.pt")
    active = registry(("flag", FlagLever()))
    active_names = observation_names(active, 3)
    with pytest.raises(PolicyMismatchError) as err:
        load_policy(path, active, len(active_names), active_names)
    msg = str(err.value)
    assert "\n" not in msg
    assert "trained with lever(s) 'wide', not active here (head(s) 'width_mult' missing)" in msg
    assert "policy was trained with levers [flag (esper-test-flag 1.0), wide (esper-test-wide 1.0)]" in msg


def test_another_slot_count_is_one_line_naming_slots(tmp_path: Path) -> None:
    env = EnvConfig(epochs=4)
    trained = registry()
    names = observation_names(trained, 3)
    path = save_policy(PPOPolicy.for_registry(trained, names, trained_on=trained_on(env)), tmp_path / "p.pt")
    two = registry(slots=2)
    two_names = observation_names(two, 2)
    with pytest.raises(PolicyMismatchError) as err:
        load_policy(path, two, len(two_names), two_names, trained_on=trained_on(EnvConfig(epochs=4, slots=2)))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("--slots 2: policy ") and "trained on 3 slots" in msg and "--slots 3" in msg


# -- end to end: the shipped policy with every plugin installed by pip -------------------------


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three distributions of plugins/ installed by pip into a fresh directory (no network: no deps)."""
    site = tmp_path_factory.mktemp("site")
    # Built from copies: pip builds in the source tree, and plugins/ is not ours to write in.
    src = tmp_path_factory.mktemp("src")
    copies = [shutil.copytree(p, src / p.name, ignore=shutil.ignore_patterns("build", "*.egg-info")) for p in PLUGINS]
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site)]
    subprocess.run([*cmd, *map(str, copies)], check=True, capture_output=True, timeout=300)
    return site


def esper(
    *args: str, site: Path | None, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ESPER_") and k != "PYTHONPATH"}
    full.update({"COLUMNS": "200", "OMP_NUM_THREADS": "1", **(env or {})})
    if site is not None:
        full["PYTHONPATH"] = str(site)
    script = Path(sys.executable).with_name("esper")
    return subprocess.run(
        [str(script), *args], env=full, cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


def _decisions(summary: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Each seed's place, blueprint, timing, fate and its choices of the heads the policy knows."""
    return [
        (
            s["slot"], s["blueprint"], s["germinated_epoch"], s["final_stage"],
            sorted((h, c) for h, c in s["choices"].items() if h not in NEW_HEADS),
        )
        for s in summary["seeds"]
    ]  # fmt: skip


@pytest.mark.parametrize("task", sorted(PRETRAINED))
@pytest.mark.parametrize("policy", ["greedy:pretrained", "pretrained"])
def test_pretrained_runs_with_every_plugin_at_defaults(
    plugin_site: Path, tmp_path: Path, policy: str, task: str
) -> None:
    args: tuple[str, ...] = ("run", "--policy", policy, "--task", task, "--epochs", "6", "--seed", "3", "--quiet")
    if task == "text":
        corpus = tmp_path / "corpus.txt"
        corpus.write_text(TEXT, encoding="utf-8")
        args += ("--data-dir", str(corpus))
    plain = esper(*args, "--out", "plain", site=None, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    full = esper(*args, "--out", "full", site=plugin_site, cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    said = [line for line in full.stderr.splitlines() if "held at their defaults" in line]
    assert len(said) == 1, full.stderr
    assert all(f"{h}={c}" in said[0] for h, c in NEW_HEADS.items())
    assert "held at their defaults" not in plain.stderr
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    started = next(e for e in read_events(tmp_path / "full" / "events.jsonl") if e["event"] == "run.started")
    assert summary["policy_defaults"] == started["policy_defaults"] == NEW_HEADS
    assert {lv["name"] for lv in summary["levers"]} >= set(NEW_HEADS)
    assert summary["seeds"], "the policy grew nothing: the test would show nothing"
    for s in summary["seeds"]:
        assert {h: s["choices"][h] for h in NEW_HEADS} == NEW_HEADS
    # At their defaults the new levers do what the kernel does without them, and the policy draws as before.
    base = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert _decisions(summary) == _decisions(base)
    assert summary["final_val_accuracy"] == base["final_val_accuracy"]


def test_eval_plays_pretrained_with_every_plugin(plugin_site: Path, tmp_path: Path) -> None:
    args = ("eval", "--policies", "greedy:pretrained,pretrained", "--reference", "greedy:pretrained")
    args += ("--seeds", "0-1", "--epochs", "5", "--workers", "1")
    plain = esper(*args, "--out", "plain", site=None, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    full = esper(*args, "--out", "full", site=plugin_site, cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    said = [line for line in full.stderr.splitlines() if "held at their defaults" in line]
    assert len(said) == 2, full.stderr  # once per policy, not once per episode
    doc = json.loads((tmp_path / "full" / "eval.json").read_text())
    assert doc["policy_defaults"] == {"greedy:pretrained": NEW_HEADS, "pretrained": NEW_HEADS}
    base = json.loads((tmp_path / "plain" / "eval.json").read_text())
    assert base["policy_defaults"] == {"greedy:pretrained": {}, "pretrained": {}}
    rows = {p["name"]: p["per_seed"] for p in doc["policies"]}
    base_rows = {p["name"]: p["per_seed"] for p in base["policies"]}
    for name in ("greedy:pretrained", "pretrained"):
        accs = [r["final_val_accuracy"] for r in rows[name]]
        assert accs == [r["final_val_accuracy"] for r in base_rows[name]], name


@pytest.mark.parametrize("command", ["run", "eval"])
def test_missing_lever_and_slots_are_one_line_errors(plugin_site: Path, tmp_path: Path, command: str) -> None:
    flag = "--policy" if command == "run" else "--policies"
    extra = ("--out", "o") if command == "run" else ("--out", "o", "--seeds", "0")
    some = {"ESPER_LEVERS": "dwell,isolation,lr,probation,steepness,blueprint_variant"}
    gone = esper(command, flag, "greedy:pretrained", *extra, site=plugin_site, cwd=tmp_path, env=some)
    assert gone.returncode != 0
    (line,) = [ln for ln in gone.stderr.splitlines() if ln.startswith("esper: error")]
    assert gone.stderr.rstrip().endswith(line) and "trained with lever(s) 'tempo', not active here" in line
    slots = esper(command, flag, "greedy:pretrained", "--slots", "2", *extra, site=plugin_site, cwd=tmp_path)
    assert slots.returncode != 0
    (line,) = [ln for ln in slots.stderr.splitlines() if ln.startswith("esper: error")]
    assert slots.stderr.rstrip().endswith(line) and "--slots 2: policy " in line
    assert "trained on 3 slots" in line and "--slots 3" in line
    assert not (tmp_path / "o").exists(), "a refused policy must not touch the output directory"
