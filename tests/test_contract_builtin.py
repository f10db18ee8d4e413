"""The lever contract suite (esper_kernel.testing) against every builtin lever, and against bad levers.

The builtin levers are loaded through the esper-kernel distribution's real
entry points, exactly as a third-party lever's contract tests load it. The
second half checks that the contract fails where it should, on levers
installed as real distributions by ``lever_dist``.
"""

from __future__ import annotations

import pytest

from esper_kernel import PluginError, Stage
from esper_kernel.testing import Harness, LeverContract, LeverUnderTest, compile_graph_counts, open_registry


class TestTempo(LeverContract):
    lever = "tempo"


class TestDwell(LeverContract):
    lever = "dwell"


class TestIsolation(LeverContract):
    lever = "isolation"


class TestLr(LeverContract):
    lever = "lr"


class TestSteepness(LeverContract):
    lever = "steepness"


class TestProbation(LeverContract):
    lever = "probation"


# -- the contract catches what it claims to ------------------------------------------------

_HEAD = """
from esper_kernel import CompileSafety, HeadSpec, Op, Safety, Stage, TelemetryField, hookimpl

@hookimpl
def action_head():
    return HeadSpec(name="{name}", choices=("A", "B"), values=(1.0, 2.0), default="A",
                    ops={{Op.GERMINATE}}, description="test head")

@hookimpl
def telemetry_fields():
    return [TelemetryField("x", "a number", lambda ctx: {field})]

@hookimpl
def compile_safety():
    return CompileSafety(Safety.NONE, "test")
"""


def _lever(lever_dist, name: str, extra: str = "", *, field: str = "0.0") -> str:
    lever_dist(name, _HEAD.format(name=name, field=field) + extra)
    return name


def test_none_lever_that_changes_structure_is_caught(lever_dist) -> None:
    extra = """
writes = ("width_scale",)

@hookimpl
def on_enter_stage(seed, new):
    if new is Stage.GERMINATED:
        seed.knobs.width_scale = float(seed.values["widen"])
"""
    name = _lever(lever_dist, "widen", extra)
    counts = compile_graph_counts([name], [[{"widen": "A"}] * 2, [{"widen": "B"}, {"widen": "A"}]])
    assert counts[1] > counts[0]
    with pytest.raises(AssertionError, match="declares compile safety NONE"):
        LeverContract().test_compile_safety(LeverUnderTest(name, open_registry([name])))


def test_non_finite_telemetry_is_caught(lever_dist) -> None:
    name = _lever(lever_dist, "nanny", field="float('nan')")
    with pytest.raises(AssertionError, match="return None, not NaN"):
        LeverContract().test_telemetry(LeverUnderTest(name, open_registry([name])))


def test_empty_mask_row_is_caught(lever_dist) -> None:
    extra = """
import torch
@hookimpl
def mask(view):
    m = view.ones("picky")
    m[view.epoch > 10] = False
    return {"picky": m}
"""
    name = _lever(lever_dist, "picky", extra)
    with pytest.raises(Exception, match="picky"):
        LeverContract().test_masks_over_random_states(LeverUnderTest(name, open_registry([name])))


def test_unpicklable_lever_state_is_caught(lever_dist, tmp_path) -> None:
    extra = """
@hookimpl
def on_enter_stage(seed):
    seed.lever_state["hoarder"] = {"obj": object()}
"""
    name = _lever(lever_dist, "hoarder", extra)
    with pytest.raises(Exception, match=r"(?i)weights_only|unsupported|object"):
        LeverContract().test_checkpoint_round_trip(LeverUnderTest(name, open_registry([name])), tmp_path)


def test_harness_drives_gates_from_fabricated_measures() -> None:
    h = Harness(["tempo"])
    h.germinate(0, tempo="FAST")
    assert h.run_until(Stage.BLENDING, 0, grad_ratio=1.0)
    seed = h.seed(0)
    assert seed is not None and seed.knobs.blend_steps == 3


def test_a_second_writer_of_a_declared_knob_is_caught(lever_dist) -> None:
    # lr=CAUTIOUS must not be silently overwritten to lr_scale 10.0 by another lever.
    boost = """
writes = ("lr_scale",)

@hookimpl
def on_enter_stage(seed, new):
    if new is Stage.GERMINATED:
        seed.knobs.lr_scale = 10.0
"""
    name = _lever(lever_dist, "boost", boost)
    with pytest.raises(AssertionError, match=r"'boost' and installed lever 'lr'.*knob 'lr_scale'"):
        LeverContract().test_knob_ownership_with_installed_levers(LeverUnderTest(name, open_registry([name])))


def test_an_undeclared_knob_write_is_caught(lever_dist) -> None:
    sneaky = """
@hookimpl
def on_epoch(seed):
    seed.knobs.lr_scale = 10.0
"""
    name = _lever(lever_dist, "sneaky", sneaky)
    with pytest.raises(PluginError, match=r"'sneaky'.*\['lr_scale'\].*does not own"):
        LeverContract().test_on_epoch_every_stage(LeverUnderTest(name, open_registry([name])))
