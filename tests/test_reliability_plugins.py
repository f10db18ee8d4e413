"""Plugins that misbehave, through real installed distributions: at composition
(tolerant mode drops them, strict mode refuses them, the listing shows them)
and at run time (an empty op row, a hook that raises, a slow hook).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from conftest import CliRunner, LeverDists, make_core, make_seed, make_view

from esper_kernel.commands.outdir import EVENTS
from esper_kernel.commands.run import run
from esper_kernel.compose.discovery import ENV_STRICT, Selection, installed_entry_points
from esper_kernel.compose.registry import Registry
from esper_kernel.compose.stages import Stage
from esper_kernel.compose.watch import SLOW_HOOK_SHARE
from esper_kernel.harness import Harness
from esper_kernel.infra.errors import MaskError, PluginError
from esper_kernel.infra.telemetry import read_events
from esper_kernel.settings.config import RunConfig, with_overrides

HEAD = """
import time
import torch
from esper_kernel import CompileSafety, HeadSpec, TelemetryField, hookimpl

@hookimpl
def action_head():
    return HeadSpec(name={head!r}, choices=("a", "b", "c"), values=(1, 2, 3), default="a", ops={{"germinate"}},
                    description="test head")
"""

#: Declarations that make a lever invalid at composition, one per way.
INVALID = {
    "unknown-hook": "from esper_kernel import hookimpl\n\n@hookimpl\ndef action_heads():\n    return None\n",
    "one-choice": HEAD.format(head="speed").replace('("a", "b", "c"), values=(1, 2, 3)', '("a",), values=(1,)'),
    "junk-head": "from esper_kernel import hookimpl\n\n@hookimpl\ndef action_head():\n    return 42\n",
    "junk-telemetry": "from esper_kernel import hookimpl\n\n@hookimpl\ndef telemetry_fields():\n    return 42\n",
    "junk-safety": "from esper_kernel import hookimpl\n\n@hookimpl\ndef compile_safety():\n    return 'none'\n",
    "shadows-core": HEAD.format(head="blend"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_tolerant_mode_drops_an_invalid_lever_and_records_why(lever_dist: LeverDists, case: str) -> None:
    lever_dist("good", HEAD.format(head="speed"))
    lever_dist("bad", INVALID[case], dist="acme-bad", version="0.9")

    reg = lever_dist.registry(Selection())

    assert reg.names == ("good",)
    (fail,) = reg.failures
    assert (fail.name, fail.distribution, fail.version) == ("bad", "acme-bad", "0.9")
    assert "'bad'" in fail.error
    with pytest.raises(PluginError, match=f"'bad'.*{ENV_STRICT}=1"):
        lever_dist.registry(Selection(strict=True))
    # Named by the user, it is an error even when tolerant: they asked for that lever.
    with pytest.raises(PluginError, match="'bad'"):
        lever_dist.registry(Selection(only=("good", "bad")))


def test_levers_list_and_show_always_show_a_broken_lever(lever_dist: LeverDists, run_esper: CliRunner) -> None:
    lever_dist("good", HEAD.format(head="speed"))
    lever_dist("bad", INVALID["junk-head"], dist="acme-bad", version="0.9")
    lever_dist("gone", "raise ImportError('needs libfoo')\n", dist="acme-gone")
    only = {
        "ESPER_DISABLE_PLUGIN_AUTOLOAD": "",
        "ESPER_DISABLED_LEVERS": "dwell,isolation,lr,probation,steepness,tempo",
    }

    listing = run_esper("levers", "list", "--json", env=only)
    assert listing.returncode == 0, listing.stderr
    report = json.loads(listing.stdout)
    assert [lv["name"] for lv in report["levers"]] == ["good"]
    failures = {f["name"]: f for f in report["failures"]}
    assert set(failures) == {"bad", "gone"}
    assert failures["bad"]["distribution"] == "acme-bad" and "action_head()" in failures["bad"]["error"]
    assert "needs libfoo" in failures["gone"]["error"]

    shown = run_esper("levers", "show", "bad", env=only)
    assert shown.returncode == 0, shown.stderr
    assert "acme-bad" in shown.stdout and "action_head()" in shown.stdout

    # Strict mode is about runs: the listing still lists every lever and exits 0.
    for args in (("list",), ("show", "bad")):
        strict = run_esper("levers", *args, env={**only, ENV_STRICT: "1"})
        assert strict.returncode == 0, strict.stderr
        assert "acme-bad" in strict.stdout
    # A CI check asks for failure explicitly: listed, then refused in one line.
    check = run_esper("levers", "list", "--check", env=only)
    assert check.returncode == 2
    assert "acme-bad" in check.stdout and "acme-gone" in check.stdout
    assert check.stderr.strip() == (
        "esper: error: 2 lever(s) failed to load: 'gone' (acme-gone), 'bad' (acme-bad) (--check)"
    )


def test_esper_run_shows_a_dropped_lever_on_the_console(
    lever_dist: LeverDists, run_esper: CliRunner, tmp_path: Path
) -> None:
    lever_dist("bad", INVALID["junk-safety"], dist="acme-bad", version="0.9")
    config = tmp_path / "tiny.toml"
    config.write_text("[env]\nepochs = 1\ntrain_size = 16\nval_size = 8\nbatch_size = 8\nwidth = 4\n")
    out = tmp_path / "out"
    proc = run_esper("run", "--quiet", "--config", str(config), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "acme-bad 0.9" in proc.stderr and "the run goes on without them" in proc.stderr
    (failed,) = [e for e in read_events(out / EVENTS) if e["event"] == "plugin.failed"]
    assert failed["name"] == "bad" and "compile_safety()" in failed["error"]


# -- run time ----------------------------------------------------------------------------


def mask_lever(body: str, head: str = "speed") -> str:
    return HEAD.format(head=head) + f"\n@hookimpl\ndef mask(view):\n    {body}\n"


def test_a_mask_that_empties_the_op_row_is_named(lever_dist: LeverDists) -> None:
    lever_dist(
        "mute",
        mask_lever("return {'op': torch.zeros(view.n_envs, view.space.head('op').spec.size, dtype=torch.bool)}"),
        dist="acme-mute",
    )
    reg = lever_dist.registry()
    with pytest.raises(MaskError, match=r"head 'op' has no legal choice in env 0; masked out by 'mute' \(acme-mute\)"):
        reg.masks(make_view(reg))


def tiny(out: Path, levers: tuple[str, ...], epochs: int = 2, **top: Any) -> RunConfig:
    return with_overrides(
        RunConfig(),
        out=str(out),
        levers=levers,
        policy="random",
        env__epochs=epochs,
        env__train_size=32,
        env__val_size=16,
        env__batch_size=16,
        env__width=4,
        **top,
    )


RAISING_STAGE = HEAD.format(head="speed") + (
    "\n@hookimpl\ndef on_enter_stage(seed, old, new):\n    raise RuntimeError('boom at ' + new.name)\n"
)


def test_lever_raising_at_run_time_stops_with_run_failed_or_is_quarantined(
    lever_dist: LeverDists, tmp_path: Path
) -> None:
    lever_dist("fragile", RAISING_STAGE, dist="acme-fragile")
    stopped = tmp_path / "stop"
    with pytest.raises(PluginError, match=r"'fragile' .*on_enter_stage"):
        run(tiny(stopped, ("fragile",), epochs=3))
    last = read_events(stopped / EVENTS)[-1]
    assert last["event"] == "run.failed" and "'fragile' (acme-fragile)" in last["error"]

    kept = tmp_path / "quarantine"
    warnings: list[str] = []
    summary = run(tiny(kept, ("fragile",), epochs=3, on_lever_error="quarantine"), on_warning=warnings.append)
    assert summary["epochs"] == 3
    (q,) = summary["quarantined"]
    assert (q["lever"], q["distribution"], q["hook"]) == ("fragile", "acme-fragile", "on_enter_stage")
    events = read_events(kept / EVENTS)
    (quarantined,) = [e for e in events if e["event"] == "lever.quarantined"]
    assert "boom at GERMINATED" in quarantined["error"]
    # From then on the lever's head is frozen at its default.
    after = [e for e in events if e["event"] == "decision" and e["epoch"] > quarantined["epoch"]]
    assert after and all(d["choices"]["speed"] == "a" for d in after)
    assert any("quarantined lever 'fragile'" in w for w in warnings)


def test_slow_hook_is_timed_and_reported(lever_dist: LeverDists, tmp_path: Path) -> None:
    lever_dist("sloth", mask_lever("time.sleep(0.2)\n    return None"), dist="acme-sloth")
    warnings: list[str] = []
    summary = run(tiny(tmp_path, ("sloth",)), on_warning=warnings.append)
    assert summary["hook_seconds"]["sloth"]["mask"] >= 0.4  # two epochs, one mask call each
    (slow,) = [e for e in read_events(tmp_path / EVENTS) if e["event"] == "lever.slow"]
    assert slow["lever"] == "sloth" and slow["distribution"] == "acme-sloth"
    assert slow["share"] > SLOW_HOOK_SHARE
    assert any("lever 'sloth'" in w and "slow" in w for w in warnings)
    finished = read_events(tmp_path / EVENTS)[-1]
    assert finished["event"] == "run.finished" and finished["hook_seconds"]["sloth"]["mask"] >= 0.4


def test_host_size_is_reported_at_start(tmp_path: Path) -> None:
    warnings: list[str] = []
    run(tiny(tmp_path, ("tempo",), epochs=1), on_warning=warnings.append)
    started = read_events(tmp_path / EVENTS)[0]
    host = sum(p.numel() for p in _host(started).parameters())
    assert started["host_params"] == host
    assert started["host_memory_bytes"] > 4 * host
    assert any(f"{host:,} parameters" in w for w in warnings)


def _host(started: dict[str, Any]) -> torch.nn.Module:
    from esper_kernel.data.tasks import get_task
    from esper_kernel.episode.env import EnvConfig, make_host

    env = EnvConfig(**started["config"]["env"])
    return make_host(env, get_task(env.task, seed=0, n_train=2, n_val=2))


def test_contract_suite_accepts_a_lever_without_telemetry_fields(lever_dist: LeverDists, tmp_path: Path) -> None:
    from esper_kernel.testing import LeverContract, LeverUnderTest, open_registry

    safety = "\n@hookimpl\ndef compile_safety():\n    return CompileSafety('none', 'a knob read at germination')\n"
    lever_dist("hush", HEAD.format(head="hush") + safety)
    lut = LeverUnderTest("hush", open_registry(["hush"]))
    contract = LeverContract()
    contract.test_hook_conformance(lut)
    contract.test_head_specs(lut)
    contract.test_telemetry(lut)
    contract.test_checkpoint_round_trip(lut, tmp_path)


def test_compile_stats_count_and_name_no_lever_for_a_break_no_lever_explains(lever_dist: LeverDists) -> None:
    from torch._dynamo.utils import counters

    from esper_kernel.compose.watch import CompileWatch

    safety = "\n@hookimpl\ndef compile_safety():\n    return CompileSafety('none', 'claims nothing changes')\n"
    lever_dist("honest", HEAD.format(head="speed") + safety, dist="acme-honest")
    reg = lever_dist.registry()
    counters["stats"]["unique_graphs"] += 5  # another env's, or an earlier episode's: not this one's
    watch = CompileWatch(reg)
    watch.step_started()
    watch.step_ended()
    assert watch.stats()["graphs"] == 0
    watch.step_started()
    counters["stats"]["unique_graphs"] += 3
    counters["graph_break"]["call_function print"] += 2
    watch.step_ended()
    counters["stats"]["unique_graphs"] += 4  # between its steps: another env's
    stats = watch.stats()
    assert (stats["graphs"], stats["graph_breaks"], stats["break_reasons"]) == (3, 2, ["call_function print"])
    # A break is the kernel's or a host's as much as a lever's: no lever is named for one it did not cause.
    assert stats["contradicted"] == []
    counters.clear()


#: A lever declaring compile safety NONE whose choice sets the seed's width, which the compiled graph's
#: shapes depend on: declaratively (the kernel sets the knob) or from its own hook.
GIRTH_HEAD = """
from esper_kernel import CompileSafety, HeadSpec, hookimpl

@hookimpl
def action_head():
    return HeadSpec(name="girth", choices=("std", "wide"), values=(1.0, 2.0), default="std", ops={{"germinate"}},
                    description="seed width", {knob})

@hookimpl
def compile_safety():
    return CompileSafety("none", "claims nothing in the graph changes")
"""
GIRTH_LIARS = {
    "declared": GIRTH_HEAD.format(knob='knob="width_scale"'),
    "hook": GIRTH_HEAD.format(knob="")
    + '\nwrites = ("width_scale",)\n\n@hookimpl\ndef on_enter_stage(seed, old, new):\n'
    + "    if new.name == 'GERMINATED':\n        seed.knobs.width_scale = seed.value('girth')\n",
}


def _germinate_at_0(tmp_path: Path, girth: str) -> str:
    plan = tmp_path / f"{girth}.toml"
    plan.write_text(f'[[step]]\nepoch = 0\nop = "germinate"\nslot = 0\nblueprint = "conv_small"\ngirth = "{girth}"\n')
    return f"schedule:{plan}"


@pytest.mark.parametrize("how", sorted(GIRTH_LIARS))
def test_compile_names_only_the_none_lever_that_changes_a_graph_knob(
    lever_dist: LeverDists, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    import functools

    # Dynamo traces and guards as under --compile; the eager backend skips only inductor's code generation.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    lever_dist("girth", GIRTH_LIARS[how], dist="acme-liar")
    warnings: list[str] = []
    out = tmp_path / "wide"
    # Every installed lever: the six builtins declare NONE too, and none of them is named.
    config = attrs.evolve(tiny(out, ("girth",), epochs=1, env__compile=True), levers=None)
    config = attrs.evolve(config, policy=_germinate_at_0(tmp_path, "wide"))
    summary = run(config, on_warning=warnings.append)
    compile_lines = [w for w in warnings if "compile" in w]
    assert len(compile_lines) == 1, compile_lines
    assert "lever 'girth' (acme-liar)" in compile_lines[0] and "width_scale" in compile_lines[0]
    (event,) = [e for e in read_events(out / EVENTS) if e["event"] == "compile.contradiction"]
    # Named in the epoch whose decision made the write, before that epoch trained.
    assert (event["lever"], event["distribution"], event["knobs"], event["epoch"]) == (
        "girth",
        "acme-liar",
        ["width_scale"],
        0,
    )
    assert summary["compile"]["contradicted"] == ["girth"]

    # The default width compiles nothing new: nothing to name.
    warnings.clear()
    std = attrs.evolve(config, out=str(tmp_path / "std"), policy=_germinate_at_0(tmp_path, "std"))
    assert run(std, on_warning=warnings.append)["compile"]["contradicted"] == []
    assert not [w for w in warnings if "compile" in w]

    # Strict plugins: an error naming the lever (the run stops with run.failed), or its quarantine.
    monkeypatch.setenv(ENV_STRICT, "1")
    with pytest.raises(PluginError, match=r"--compile: lever 'girth' \(acme-liar\) declares compile safety NONE"):
        run(attrs.evolve(config, out=str(tmp_path / "strict")))
    assert read_events(tmp_path / "strict" / EVENTS)[-1]["event"] == "run.failed"


def test_host_sizing_counts_exactly_and_never_builds_an_oversized_host() -> None:
    from esper_kernel.data.tasks import get_task
    from esper_kernel.episode.env import EnvConfig, make_host
    from esper_kernel.grow.sizing import measure_host
    from esper_kernel.settings.bounds import MAX_HOST_PARAMS

    task = get_task("shapes", seed=0, n_train=2, n_val=2)
    for slots in (1, 8):
        env = EnvConfig(task="shapes", slots=slots)
        rng = torch.get_rng_state()
        size = measure_host(lambda env=env: make_host(env, task), task.train_x[:1], 64, MAX_HOST_PARAMS)
        assert torch.equal(rng, torch.get_rng_state()), "sizing the host must not move the run's RNG"
        assert size.params == sum(p.numel() for p in make_host(env, task).parameters())
        assert size.activations > 0 and size.memory_bytes > 4 * 4 * size.params

    built: list[int] = []

    def huge() -> torch.nn.Module:
        built.append(1)
        return make_host(EnvConfig(task="shapes", slots=8, width=1024), task)

    size = measure_host(huge, task.train_x[:1], 64, MAX_HOST_PARAMS)
    assert size.params > MAX_HOST_PARAMS and size.activations == 0
    assert built == [1]  # once, on the meta device: 858M parameters were never allocated


# -- a plugin cannot take over a builtin ------------------------------------------------


def _with_builtins(lever_dist: LeverDists, selection: Selection) -> Any:
    return Registry.open(make_core(), selection, installed_entry_points())


@pytest.mark.parametrize("name", ["acme", "zzz"])  # sorting before and after the builtin 'tempo'
def test_a_plugin_declaring_a_builtin_head_is_the_one_dropped(lever_dist: LeverDists, name: str) -> None:
    lever_dist(name, HEAD.format(head="tempo"), dist="acme-usurper", version="0.1")

    reg = _with_builtins(lever_dist, Selection())

    assert "tempo" in reg.names and name not in reg.names
    assert reg.space.head("tempo").lever == "tempo"
    assert reg.space.head("tempo").spec.choices != ("a", "b", "c")
    (fail,) = reg.failures
    assert (fail.name, fail.distribution) == (name, "acme-usurper")
    assert "already declared by the builtin lever 'tempo'" in fail.error
    with pytest.raises(PluginError, match=f"'{name}' \\(acme-usurper 0.1\\).*'tempo'.*{ENV_STRICT}=1"):
        _with_builtins(lever_dist, Selection(strict=True))


def test_a_plugin_reusing_a_builtin_lever_name_is_the_one_dropped(lever_dist: LeverDists) -> None:
    lever_dist("tempo", HEAD.format(head="speed"), dist="acme-usurper", version="0.1")

    reg = _with_builtins(lever_dist, Selection())

    assert reg.info("tempo").distribution == "esper-kernel"
    assert "speed" not in reg.space.names
    (fail,) = reg.failures
    assert fail.distribution == "acme-usurper" and "builtin lever keeps the name" in fail.error
    with pytest.raises(PluginError, match=f"two distributions.*acme-usurper.*{ENV_STRICT}=1"):
        _with_builtins(lever_dist, Selection(strict=True))


def test_a_plugin_writing_a_builtin_knob_is_the_one_dropped(lever_dist: LeverDists) -> None:
    lever_dist("aaa_lr", HEAD.format(head="speed") + "\nwrites = ('lr_scale',)\n", dist="acme-lr")

    reg = _with_builtins(lever_dist, Selection())

    assert "lr" in reg.names and "aaa_lr" not in reg.names
    (fail,) = reg.failures
    assert fail.distribution == "acme-lr" and "lr_scale" in fail.error


RELATIONS = {
    "missing": "import esper_kernel\nrequires = ('nowhere',)\n",
    "conflict": "import esper_kernel\nconflicts_with = ('good',)\n",
}


#: Plugins that break in ways a listing must survive: each is listed as a failure, never the end of the command.
HOSTILE = {
    **INVALID,
    **{f"relation-{k}": v for k, v in RELATIONS.items()},
    "sys-exit": "import sys\nsys.exit(3)\n",
    "base-exception": "raise BaseException('odd')\n",
    # Raised by the plugin, not a Ctrl-C: the listing names it like any other failure.
    "keyboard-interrupt": "raise KeyboardInterrupt\n",
    "keyboard-interrupt-in-head": "from esper_kernel import hookimpl\n\n@hookimpl\ndef action_head():\n"
    "    raise KeyboardInterrupt\n",
    "requires-not-names": "import esper_kernel\nrequires = 5\n",
    "module-getattr-raises": "import esper_kernel\n\ndef __getattr__(name):\n    raise RuntimeError(name)\n",
    "action-head-raises": "from esper_kernel import hookimpl\n\n@hookimpl\ndef action_head():\n    raise ValueError\n",
    "shadows-op": HEAD.format(head="op"),
}


def test_levers_list_exits_0_for_every_broken_plugin_even_strict(lever_dist: LeverDists, run_esper: CliRunner) -> None:
    lever_dist("good", HEAD.format(head="speed"))
    for i, case in enumerate(sorted(HOSTILE)):
        lever_dist(f"bad{i}", HOSTILE[case], dist=f"acme-{case}")
    only = {"ESPER_DISABLED_LEVERS": "dwell,isolation,lr,probation,steepness,tempo"}

    for strict in ("", "1"):
        listing = run_esper("levers", "list", "--json", env={**only, ENV_STRICT: strict})
        assert listing.returncode == 0, listing.stderr
        report = json.loads(listing.stdout)
        assert [lv["name"] for lv in report["levers"]] == ["good"]
        assert sorted(f["distribution"] for f in report["failures"]) == sorted(f"acme-{c}" for c in HOSTILE)
    check = run_esper("levers", "list", "--check", env=only)
    assert check.returncode == 2 and "\n" not in check.stderr.strip()
    assert check.stderr.startswith(f"esper: error: {len(HOSTILE)} lever(s) failed to load")


@pytest.mark.parametrize("case", sorted(RELATIONS))
def test_levers_list_marks_a_broken_relation_and_exits_0(
    lever_dist: LeverDists, run_esper: CliRunner, case: str
) -> None:
    lever_dist("good", HEAD.format(head="speed"))
    lever_dist("needy", RELATIONS[case], dist="acme-needy")

    listing = run_esper("levers", "list", "--json")

    assert listing.returncode == 0, listing.stderr
    report = json.loads(listing.stdout)
    assert "good" in [lv["name"] for lv in report["levers"]]
    (fail,) = [f for f in report["failures"] if f["name"] == "needy"]
    assert fail["distribution"] == "acme-needy"
    why = "requires lever(s) 'nowhere'" if case == "missing" else "conflicts with active lever 'good'"
    assert why in fail["error"]
    human = run_esper("levers", "list")
    assert human.returncode == 0 and "needy" in human.stdout and "failed to load" in human.stdout


# -- quarantine takes back what the lever wrote ---------------------------------------------

MEDDLER = (
    HEAD.format(head="speed")
    + """
from esper_kernel import Stage

writes = ("lr_scale", "probation_epochs")
composes = ("lr_scale",)

@hookimpl
def on_enter_stage(seed, old, new):
    if new is Stage.GERMINATED:
        seed.knobs.lr_scale = 1.0
        seed.knobs.probation_epochs = 99
    elif new is Stage.TRAINING:
        seed.knobs.probation_epochs = 77
        raise RuntimeError("meddler gives up")
"""
)


def test_quarantine_restores_every_knob_the_lever_wrote(lever_dist: LeverDists) -> None:
    lever_dist("meddler", MEDDLER, dist="acme-meddler")
    reg = Registry.open(make_core(), Selection(only=("lr", "meddler")), installed_entry_points())
    reg.fault_policy = "quarantine"
    seed = make_seed(reg, lr="AGGRESSIVE")
    probation = seed.knobs.probation_epochs
    reg.enter_stage(seed, Stage.DORMANT, Stage.GERMINATED)
    assert seed.knobs.lr_scale == 1.0  # the meddler overwrote the lr lever's 2.0

    reg.enter_stage(seed, Stage.GERMINATED, Stage.TRAINING)

    assert set(reg.quarantined) == {"meddler"}
    # Every knob the meddler wrote, including the one it wrote just before raising, is back.
    assert seed.knobs.lr_scale == 2.0
    assert seed.knobs.probation_epochs == probation
    reg.enter_stage(seed, Stage.TRAINING, Stage.BLENDING)
    assert seed.knobs.lr_scale == 2.0


def test_quarantine_gives_the_seed_its_chosen_learning_rate_back(lever_dist: LeverDists) -> None:
    lever_dist("meddler", MEDDLER, dist="acme-meddler")
    reg = Registry.open(make_core(), Selection(only=("lr", "meddler")), installed_entry_points())
    reg.fault_policy = "quarantine"
    h = Harness(registry=reg, blocks=3)
    seed = h.germinate(0, lr="AGGRESSIVE")
    host_lr = h.lifecycle.config.host_lr
    assert h.seed_group_lr(0) == pytest.approx(host_lr)
    while seed.stage is Stage.GERMINATED:
        h.end_epoch()
    assert set(reg.quarantined) == {"meddler"}
    h.end_epoch()
    # The seed trains at the rate it chose, for the rest of its life.
    assert h.seed_group_lr(0) == pytest.approx(2 * host_lr)


# -- NaN telemetry ------------------------------------------------------------------------

NAN_FIELD = HEAD.format(head="speed") + (
    "\n@hookimpl\ndef telemetry_fields():\n    return [TelemetryField('nan', 'always NaN', lambda ctx: float('nan'))]\n"
)


def test_nan_telemetry_is_shown_on_the_console_and_an_error_when_strict(
    lever_dist: LeverDists, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lever_dist("nanny", NAN_FIELD, dist="acme-nanny")
    warnings: list[str] = []
    run(tiny(tmp_path / "lax", ("nanny",), epochs=2), on_warning=warnings.append)
    shown = [w for w in warnings if "'nanny.nan'" in w]
    assert len(shown) == 1 and "lever 'nanny' (acme-nanny 1.0)" in shown[0] and "nan" in shown[0]

    monkeypatch.setenv(ENV_STRICT, "1")
    strict = tmp_path / "strict"
    with pytest.raises(PluginError, match=rf"'nanny' \(acme-nanny 1.0\): telemetry field 'nanny.nan'.*{ENV_STRICT}=1"):
        run(tiny(strict, ("nanny",), epochs=2))
    last = read_events(strict / EVENTS)[-1]
    assert last["event"] == "run.failed" and "'nanny.nan'" in last["error"]


#: A run-time hook raising what a user's stop raises: the plugin's fault, named, never taken for Ctrl-C.
STOP_LOOKALIKES = {
    "keyboard-interrupt": "raise KeyboardInterrupt",
    "sys-exit": "raise SystemExit(5)",
    "base-exception": "raise BaseException('odd')",
}


@pytest.mark.parametrize("case", sorted(STOP_LOOKALIKES))
def test_a_hook_raising_a_stop_lookalike_is_named_and_quarantinable(
    lever_dist: LeverDists, run_esper: CliRunner, tmp_path: Path, case: str
) -> None:
    code = HEAD.format(head="speed") + f"\n@hookimpl\ndef on_epoch(seed, epoch):\n    {STOP_LOOKALIKES[case]}\n"
    lever_dist("odd", code, dist="acme-odd")
    common = ["run", "--quiet", "--policy", "random", "--epochs", "6", "--width", "4"]
    common += ["--train-size", "32", "--val-size", "16", "--batch-size", "16"]

    stopped = run_esper(*common, "--out", str(tmp_path / "stop"))
    assert stopped.returncode == 2, stopped.stderr
    (error,) = [line for line in stopped.stderr.splitlines() if line.startswith("esper: error:")]
    assert error.startswith("esper: error: lever 'odd' (acme-odd): on_epoch") and "Traceback" not in stopped.stderr
    assert read_events(tmp_path / "stop" / EVENTS)[-1]["event"] == "run.failed"

    kept = run_esper(*common, "--out", str(tmp_path / "kept"), "--on-lever-error", "quarantine")
    assert kept.returncode == 0, kept.stderr
    events = read_events(tmp_path / "kept" / EVENTS)
    assert events[-1]["event"] == "run.finished"
    assert [e["lever"] for e in events if e["event"] == "lever.quarantined"] == ["odd"]


#: The CLI in a fresh interpreter whose SIGINT disposition is set first: Python's own, or ignored.
_WITH_SIGINT = (
    "import runpy, signal, sys\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN if sys.argv.pop(1) == 'ignored' else signal.default_int_handler)\n"
    "runpy.run_module('esper_kernel.cli', run_name='__main__')\n"
)


@pytest.mark.parametrize("disposition", ["default", "ignored"])
def test_a_plugin_keyboard_interrupt_is_named_whatever_the_sigint_disposition(
    lever_dist: LeverDists, tmp_path: Path, disposition: str
) -> None:
    # A background job (`cmd &` in a script, nohup, some CI runners) starts with SIGINT ignored.
    lever_dist("kb", "raise KeyboardInterrupt\n", dist="acme-kb")
    env = {**os.environ, "PYTHONPATH": lever_dist.pythonpath}
    env = {k: v for k, v in env.items() if not k.startswith("ESPER_")}
    exe = [sys.executable, "-c", _WITH_SIGINT, disposition]
    kwargs: dict[str, Any] = {"env": env, "capture_output": True, "text": True, "timeout": 120, "check": False}
    listing = subprocess.run([*exe, "levers", "list", "--json"], **kwargs)
    assert listing.returncode == 0, listing.stderr
    assert [f["distribution"] for f in json.loads(listing.stdout)["failures"]] == ["acme-kb"]
    run = subprocess.run(
        [
            *exe,
            "run",
            "--quiet",
            "--epochs",
            "1",
            "--train-size",
            "32",
            "--val-size",
            "16",
            "--out",
            str(tmp_path / "r"),
        ],
        **kwargs,
    )
    assert run.returncode == 0, run.stderr
    assert "acme-kb" in run.stderr and "KeyboardInterrupt" in run.stderr
