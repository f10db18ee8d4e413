"""The event stream of a real run: common keys, every event's fields, lever fields, bad plugins."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import LeverDists

from esper_kernel.commands.outdir import EVENTS
from esper_kernel.commands.run import run
from esper_kernel.compose.discovery import Selection
from esper_kernel.compose.registry import Registry
from esper_kernel.episode.env import build_registry
from esper_kernel.settings.config import RunConfig, with_overrides

DOCS = Path(__file__).resolve().parents[1] / "docs" / "telemetry.md"
COMMON = ("event", "run_id", "env", "episode", "epoch")
EPOCHS = 8


def strict_events(path: Path) -> list[dict[str, Any]]:
    """Parse events.jsonl as strict JSON: a NaN or Infinity token fails the test."""

    def no_constants(token: str) -> None:
        raise AssertionError(f"non-JSON number {token} in {path}")

    with path.open(encoding="utf-8") as f:
        return [json.loads(line, parse_constant=no_constants) for line in f]


def _cfg(out: Path, epochs: int, policy: str = "random") -> RunConfig:
    return with_overrides(
        RunConfig(),
        out=str(out),
        policy=policy,
        env__epochs=epochs,
        env__train_size=128,
        env__val_size=64,
        checkpoint_every=1,  # the interrupted run resumes from the epoch it stopped at
    )


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], Registry]:
    """A random-policy run with the builtin levers, interrupted once and resumed."""
    out = tmp_path_factory.mktemp("events")
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("ESPER_")]:
            mp.delenv(key)
        cfg = _cfg(out, EPOCHS)
        run(cfg, stop_after=2)
        run(cfg, resume=out)
        registry = build_registry(cfg.env, Selection())
    return strict_events(out / EVENTS), registry


def of(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name]


def test_every_event_has_the_common_keys(plain: tuple[list[dict[str, Any]], Registry]) -> None:
    events, _ = plain
    assert events
    for e in events:
        missing = [k for k in COMMON if k not in e]
        assert not missing, f"{e['event']} lacks {missing}"
    assert len({e["run_id"] for e in events}) == 1
    for e in of(events, "decision") + of(events, "epoch.completed") + of(events, "seed.stage_changed"):
        assert (e["env"], e["episode"]) == (0, 0) and isinstance(e["epoch"], int)


def test_run_started_records_config_levers_and_failures(plain: tuple[list[dict[str, Any]], Registry]) -> None:
    events, reg = plain
    first, again = of(events, "run.started")
    assert events[0] is first
    assert first["config"]["env"]["epochs"] == EPOCHS and first["config"]["policy"] == "random"
    assert [lv["name"] for lv in first["levers"]] == list(reg.names)
    for lv in first["levers"]:
        assert lv["distribution"] == "esper-kernel" and lv["version"]
    assert first["failed_levers"] == []
    assert first["heads"] == list(reg.space.names)
    assert (first["resumed_from_epoch"], again["resumed_from_epoch"]) == (None, 2)
    assert of(events, "run.interrupted")[0]["at_epoch"] == 2


def test_one_decision_per_epoch_with_every_head(plain: tuple[list[dict[str, Any]], Registry]) -> None:
    events, reg = plain
    decisions = of(events, "decision")
    assert [d["epoch"] for d in decisions] == list(range(EPOCHS))
    for d in decisions:
        assert list(d["choices"]) == list(reg.space.names)
        assert list(d["relevant"]) == list(reg.space.names)
        assert d["relevant"]["op"] is True
        assert d["op"].lower() == d["choices"]["op"]
        for head, choice in d["choices"].items():
            assert choice in reg.space.head(head).spec.choices
    assert any(d["op"] == "GERMINATE" for d in decisions), "the random run should germinate"


def test_seed_events_describe_transitions_and_gates(plain: tuple[list[dict[str, Any]], Registry]) -> None:
    events, _ = plain
    changes = of(events, "seed.stage_changed")
    germinations = [c for c in changes if c["old"] == "DORMANT"]
    assert germinations
    for g in germinations:
        assert g["new"] == "GERMINATED" and g["reason"] == "germinate"
        assert {"seed_id", "slot", "blueprint", "blend", "choices"} <= set(g)
    for c in changes:
        assert {"seed_id", "slot", "old", "new", "reason"} <= set(c) and c["old"] != c["new"]
    gates = of(events, "seed.gate_evaluated")
    assert gates
    for g in gates:
        assert g["gate"] in {"G1", "G2", "G3", "G5"} and isinstance(g["passed"], bool)
        assert set(g["values"]) and set(g["thresholds"]) and {"seed_id", "slot", "stage"} <= set(g)
    # Every germinated seed's G1 verdict is in the stream.
    assert {g["seed_id"] for g in germinations} <= {g["seed_id"] for g in gates if g["gate"] == "G1"}


def test_epoch_completed_has_metrics_and_every_lever_field(plain: tuple[list[dict[str, Any]], Registry]) -> None:
    events, reg = plain
    done = of(events, "epoch.completed")
    assert [e["epoch"] for e in done] == list(range(EPOCHS))
    keys = [f.key for f in reg.fields]
    assert keys and all(re.fullmatch(r"[a-z_]+\.[a-z_0-9]+", k) for k in keys)
    for e in done:
        for metric in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
            assert isinstance(e[metric], float) and math.isfinite(e[metric])
        assert 0.0 <= e["val_accuracy"] <= 1.0
        assert len(e["stages"]) == 3
        lever_keys = [k for k in e if "." in k]
        assert lever_keys == keys
        for k in keys:
            assert len(e[k]) == 3 and all(v is None or isinstance(v, float) for v in e[k])
    # With seeds alive some lever field measures something.
    assert any(v is not None for e in done for k in keys for v in e[k])


def test_run_finished_summarises(plain: tuple[list[dict[str, Any]], Registry]) -> None:
    events, _ = plain
    (fin,) = of(events, "run.finished")
    assert events[-1] is fin
    assert fin["epochs"] == EPOCHS
    assert fin["final_val_accuracy"] == of(events, "epoch.completed")[-1]["val_accuracy"]
    germinated = {c["seed_id"] for c in of(events, "seed.stage_changed") if c["old"] == "DORMANT"}
    assert {s["seed_id"] for s in fin["seeds"]} == germinated


# -- plugins that misbehave ----------------------------------------------------------------

NAN_LEVER = """
from esper_kernel import CompileSafety, TelemetryField, hookimpl

@hookimpl
def telemetry_fields():
    return [
        TelemetryField("broken", "always NaN", lambda ctx: float("nan"), observed=True),
        TelemetryField("huge", "always infinite", lambda ctx: float("inf")),
        TelemetryField("slot_id", "the slot index", lambda ctx: float(ctx.slot)),
    ]

@hookimpl
def compile_safety():
    return CompileSafety("none")
"""

BROKEN = """
raise ImportError("needs libfoo >= 2")
"""


@pytest.fixture
def bad_plugins_run(lever_dist: LeverDists, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    lever_dist("nanny", NAN_LEVER)
    lever_dist("shaky", BROKEN, dist="acme-shaky", version="0.4")
    monkeypatch.setenv("ESPER_DISABLED_LEVERS", "dwell,isolation,lr,probation,steepness")
    summary = run(_cfg(tmp_path, 2, policy="heuristic"))
    assert summary["epochs"] == 2
    return strict_events(tmp_path / EVENTS)


def test_nan_lever_field_is_null_and_the_stream_stays_json(bad_plugins_run: list[dict[str, Any]]) -> None:
    for e in of(bad_plugins_run, "epoch.completed"):
        assert e["nanny.broken"] == [None, None, None]
        assert e["nanny.huge"] == [None, None, None]
        assert e["nanny.slot_id"] == [0.0, 1.0, 2.0]
    # Nulled, not swallowed: each bad value is a warning naming the lever's distribution.
    invalid = [e for e in bad_plugins_run if e["event"] == "telemetry.invalid"]
    assert {(e["field"], e["slot"]) for e in invalid if e["epoch"] == 0} == {
        (f"nanny.{name}", slot) for name in ("broken", "huge") for slot in range(3)
    }
    assert all(e["lever"] == "nanny" and e["distribution"] == "esper-lever-nanny" for e in invalid)


def test_lever_failing_to_load_is_reported_not_fatal(bad_plugins_run: list[dict[str, Any]]) -> None:
    started = of(bad_plugins_run, "run.started")[0]
    assert [lv["name"] for lv in started["levers"]] == ["nanny", "tempo"]
    (failed,) = started["failed_levers"]
    assert (failed["name"], failed["distribution"], failed["version"]) == ("shaky", "acme-shaky", "0.4")
    assert failed["error"] == "ImportError: needs libfoo >= 2"
    (warning,) = of(bad_plugins_run, "plugin.failed")
    assert warning["level"] == "warning" and warning["name"] == "shaky"


# -- docs/telemetry.md ------------------------------------------------------------------------


def test_every_emitted_event_is_documented(
    plain: tuple[list[dict[str, Any]], Registry], bad_plugins_run: list[dict[str, Any]]
) -> None:
    doc = DOCS.read_text(encoding="utf-8")
    documented = set(re.findall(r"^### `([a-z_.]+)`", doc, flags=re.M))
    emitted = {e["event"] for e in plain[0] + bad_plugins_run}
    assert {"run.started", "run.interrupted", "plugin.failed", "decision", "seed.stage_changed"} <= emitted
    assert emitted <= documented, f"undocumented events: {sorted(emitted - documented)}"
    for key in COMMON:
        assert f"| `{key}` |" in doc
