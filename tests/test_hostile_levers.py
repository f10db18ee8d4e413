"""Hypothesis over hostile levers: whatever a generated lever does, a run either
completes with the lever reported, or stops with one line naming it (and a
``run.failed`` event if the stream was open). Never a NaN reaching the policy
or the events, never a torn stream, never a traceback.

One real distribution (``acme-hostile``) is installed once; each example
rewrites the behaviour its module reads, then runs ``esper run`` in-process on
a few dozen images for one or two epochs.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from conftest import LeverDists
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esper_kernel.cli import main
from esper_kernel.commands.outdir import EVENTS

HOSTILE = """
import math
import os
import time

import torch
from esper_kernel import CompileSafety, HeadSpec, Safety, TelemetryField, hookimpl

SPEC = {}
FIRED = []


def _fire(kind):
    FIRED.append(kind)


@hookimpl
def action_head():
    n = SPEC["head_size"]
    names = tuple(f"c{i}" for i in range(n))
    return HeadSpec(name="hostile", choices=names, values=tuple(range(n)), default=names[0],
                    ops={"germinate"}, description="generated")


@hookimpl
def compile_safety():
    return CompileSafety(Safety.NONE, "generated")


@hookimpl
def mask(view):
    kind = SPEC["mask"]
    if SPEC["slow"] and not FIRED.count("slow"):
        _fire("slow")
        time.sleep(0.12)
    if kind == "none" or int(view.epoch.max()) < SPEC["mask_from"]:
        return None
    size = view.space.head("hostile").spec.size
    if kind == "ok":
        m = view.ones("hostile")
        m[:, -1] = size == 1
        return {"hostile": m}
    _fire("mask:" + kind)
    if kind == "empty_own":
        return {"hostile": torch.zeros(view.n_envs, size, dtype=torch.bool)}
    if kind == "empty_op":
        return {"op": torch.zeros(view.n_envs, view.space.head("op").spec.size, dtype=torch.bool)}
    if kind == "empty_blend":
        return {"blend": torch.zeros(view.n_envs, view.space.head("blend").spec.size, dtype=torch.bool)}
    if kind == "wrong_shape":
        return {"hostile": torch.ones(view.n_envs, size + 1, dtype=torch.bool)}
    if kind == "not_bool":
        return {"hostile": torch.ones(view.n_envs, size)}
    if kind == "not_mapping":
        return torch.ones(view.n_envs, size, dtype=torch.bool)
    raise RuntimeError("mask exploded")


@hookimpl
def on_enter_stage(seed, old, new):
    if SPEC["stage"] == "raise":
        _fire("stage:raise")
        raise ValueError(f"cannot enter {new.name}")


def _value(ctx):
    kind = SPEC["telemetry"]
    if kind == "ok":
        return 0.5
    _fire("telemetry:" + kind)
    if kind == "nan":
        return math.nan
    if kind == "inf":
        return -math.inf
    if kind == "string":
        return "fast"
    if kind == "huge":
        return 10 ** 400
    raise KeyError("no such metric")


@hookimpl
def telemetry_fields():
    if SPEC["telemetry"] == "none":
        return []
    return [TelemetryField("x", "generated", _value, observed=SPEC["observed"])]
"""

SPECS = st.fixed_dictionaries(
    {
        "head_size": st.integers(1, 5),
        "mask": st.sampled_from(
            ["none", "ok", "empty_own", "empty_op", "empty_blend", "wrong_shape", "not_bool", "not_mapping", "raise"]
        ),
        "mask_from": st.integers(0, 2),
        "stage": st.sampled_from(["ok", "raise"]),
        "telemetry": st.sampled_from(["none", "ok", "nan", "inf", "string", "huge", "raise"]),
        "observed": st.booleans(),
        "slow": st.booleans(),
        "named": st.booleans(),
        "on_error": st.sampled_from(["stop", "quarantine"]),
        "epochs": st.integers(1, 2),
    }
)

TINY = "[env]\ntrain_size = 24\nval_size = 8\nbatch_size = 12\nwidth = 4\n"
#: Faults a completed run must have reported by quarantining the lever.
HARD = ("mask:", "stage:", "telemetry:string", "telemetry:huge", "telemetry:raise")


def strict_lines(path: Path) -> list[dict[str, Any]]:
    """Every line whole, JSON without NaN or infinity."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), "torn last line"

    def no_constants(token: str) -> Any:
        raise AssertionError(f"non-finite {token} in the event stream")

    return [json.loads(line, parse_constant=no_constants) for line in raw.decode("utf-8").splitlines()]


def _finite_policy_inputs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Check what reaches the policy: finite observations, legal and finite draws."""
    from esper_kernel.tamiyo import policies

    real = policies.sample
    calls: list[int] = []

    def checked(space: Any, logits: torch.Tensor, masks: torch.Tensor, *args: Any, **kw: Any) -> Any:
        assert torch.isfinite(logits).all(), "non-finite logits"
        out = real(space, logits, masks, *args, **kw)
        assert torch.isfinite(out.log_prob).all() and torch.isfinite(out.entropy).all()
        legal = out.masks.gather(-1, out.actions[..., None]).squeeze(-1)
        assert bool((legal | ~out.relevance).all()), "an illegal action was drawn"
        calls.append(1)
        return out

    monkeypatch.setattr(policies, "sample", checked)
    return calls


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(
    max_examples=int(os.environ.get("ESPER_HOSTILE_EXAMPLES", "200")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spec=SPECS)
def test_hostile_lever_is_reported_or_named_never_a_traceback(
    lever_dist: LeverDists, tmp_path: Path, spec: dict[str, Any]
) -> None:
    if "acme_hostile_hostile" not in sys.modules:
        lever_dist("hostile", HOSTILE, dist="acme-hostile", version="6.6")
        import acme_hostile_hostile  # noqa: F401  (installed above)
    module = sys.modules["acme_hostile_hostile"]
    module.SPEC.clear()
    module.SPEC.update(spec)
    module.FIRED.clear()
    case = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
    case.mkdir()
    config = case / "tiny.toml"
    config.write_text(TINY)
    out = case / "out"
    args = ["run", "--quiet", "--policy", "random", "--config", str(config), "--out", str(out)]
    args += ["--epochs", str(spec["epochs"]), "--on-lever-error", spec["on_error"]]
    env = {"ESPER_DISABLED_LEVERS": "isolation,lr,probation,steepness"}
    if spec["named"]:
        args += ["--levers", "hostile,tempo"]

    with pytest.MonkeyPatch.context() as mp:
        draws = _finite_policy_inputs(mp)
        result = CliRunner().invoke(main, args, env=env)

    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert result.exit_code in (0, 2), result.output
    events = strict_lines(out / EVENTS) if (out / EVENTS).exists() else []
    fired = list(module.FIRED)
    if result.exit_code == 2:
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("esper: error: ")]
        assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
        assert "'hostile'" in errors[0], errors[0]
        if events:
            assert events[-1]["event"] == "run.failed" and "'hostile'" in events[-1]["error"]
        return

    assert events[-1]["event"] == "run.finished"
    assert len(draws) == spec["epochs"]
    reported = {e["event"] for e in events if "hostile" in (e.get("lever"), e.get("name"))}
    if spec["head_size"] == 1:
        # An invalid head: dropped (tolerant) and reported, never run.
        assert "plugin.failed" in reported and not fired
        return
    quarantined = "lever.quarantined" in reported
    for kind in fired:
        if kind.startswith(HARD):
            assert quarantined, f"{kind} fired in a completed run without quarantine"
        elif kind in ("telemetry:nan", "telemetry:inf"):
            assert "telemetry.invalid" in reported or quarantined
        elif kind == "slow":
            assert "lever.slow" in reported
    if quarantined:
        assert spec["on_error"] == "quarantine"
    for e in events:
        if e["event"] == "epoch.completed" and "hostile.x" in e:
            assert all(v is None or math.isfinite(v) for v in e["hostile.x"])
