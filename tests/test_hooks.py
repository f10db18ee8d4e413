"""One test per hook, as a lever author would check it, plus meta-tests that keep
the hookspecs, these tests and docs/hooks.md in step (as datasette does).
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import LeverDists, make_seed, make_view

from esper_kernel.compose import hookspecs
from esper_kernel.compose.discovery import Selection
from esper_kernel.compose.specs import UNDECLARED_SAFETY, FieldContext, Safety
from esper_kernel.compose.stages import Op, Stage
from esper_kernel.infra.errors import PluginError
from esper_kernel.testing import Harness

DOCS = Path(__file__).resolve().parent.parent / "docs" / "hooks.md"

IMPORTS = """
import torch
from esper_kernel import CompileSafety, HeadCondition, HeadSpec, Op, Safety, Stage, TelemetryField, hookimpl
"""


def test_hook_action_head(lever_dist: LeverDists) -> None:
    # Installed in reverse name order: composition must still follow lever names.
    lever_dist(
        "beta",
        IMPORTS
        + """
@hookimpl
def action_head():
    return HeadSpec(name="steep", choices=("low", "high"), values=(0.5, 4.0), default="low",
                    ops={Op.GERMINATE}, condition=HeadCondition("blend", ("sigmoid",)))
""",
    )
    lever_dist(
        "alpha",
        IMPORTS
        + """
@hookimpl
def action_head():
    return [
        HeadSpec(name="tempo", choices=("fast", "slow"), values=(3, 8), default="slow", ops={Op.GERMINATE}),
        HeadSpec(name="reason", choices=("loss", "stall"), values=(0, 1), default="loss", ops={"cull"}),
    ]
""",
    )
    lever_dist("gamma", IMPORTS + "\n@hookimpl\ndef action_head():\n    return None\n")

    reg = lever_dist.registry()
    space = reg.space

    assert space.names == ("op", "slot", "blueprint", "blend", "tempo", "reason", "steep")
    assert [space.head(n).lever for n in ("op", "tempo", "reason", "steep")] == ["esper", "alpha", "alpha", "beta"]
    assert space.head("steep").distribution == "esper-lever-beta"
    assert reg.hooks_of("gamma") == ("action_head",)

    actions = space.encode(
        [
            {"op": "germinate", "blend": "sigmoid", "steep": "high"},
            {"op": "germinate", "blend": "linear", "steep": "high"},
            {"op": "cull", "blend": "sigmoid", "steep": "high", "reason": "stall"},
        ]
    )
    rel = space.relevance(actions)
    col = {n: rel[:, space.head(n).index].tolist() for n in ("tempo", "reason", "steep")}
    assert col == {
        "tempo": [True, True, False],
        "reason": [False, False, True],
        # Conditioned on blend=sigmoid, and blend itself only matters at GERMINATE.
        "steep": [True, False, False],
    }
    decided = space.decode(actions)
    assert [d.choices["steep"] for d in decided] == ["high", "low", "low"]
    assert decided[0].values["steep"] == 4.0
    assert decided[2].choices["reason"] == "stall"


def test_hook_mask(lever_dist: LeverDists) -> None:
    lever_dist(
        "owner",
        IMPORTS
        + """
@hookimpl
def action_head():
    return HeadSpec(name="speed", choices=("a", "b", "c"), values=(1, 2, 3), default="a",
                    ops={Op.GERMINATE, Op.CULL})

@hookimpl
def mask(view):
    # Depends on the op: never "c" when germinating, only "a" when culling.
    m = torch.ones(view.n_envs, len(Op), 3, dtype=torch.bool)
    m[:, Op.GERMINATE, 2] = False
    m[:, Op.CULL, 1:] = False
    return {"speed": m}
""",
    )
    lever_dist(
        "picky",
        IMPORTS
        + """
@hookimpl
def mask(view):
    blueprint = view.ones("blueprint")
    blueprint[:, view.blueprints.index("attention")] = False
    speed = view.ones("speed")
    speed[0, 1] = False
    return {"blueprint": blueprint, "speed": speed}
""",
    )
    reg = lever_dist.registry()
    # Slots live, so culling is legal and the CULL rows are checked too.
    out = reg.masks(make_view(reg, stage=Stage.TRAINING))

    assert out.shape == (2, len(Op), reg.space.n_heads, reg.space.max_choices)
    bp = reg.space.head("blueprint").index
    assert out[:, :, bp, :3].tolist() == [[[True, False, True]] * len(Op)] * 2
    speed = reg.space.head("speed").index
    germ, cull = int(Op.GERMINATE), int(Op.CULL)
    assert out[:, germ, speed, :3].tolist() == [[True, False, False], [True, True, False]]
    assert out[:, cull, speed, :3].tolist() == [[True, False, False], [True, False, False]]
    # The kernel's own rule still applies: no slot is dormant, so germinating is illegal.
    assert not out[:, Op.WAIT, reg.space.op_index, germ].any()
    assert reg.hooks_of("picky") == ("mask",)


def test_hook_on_enter_stage(lever_dist: LeverDists) -> None:
    lever_dist(
        "second",
        IMPORTS
        + """
writes = ("blend_steps",)
composes = ("blend_steps",)  # it multiplies what "first" set, so two writers are intended

@hookimpl
def on_enter_stage(new, seed):  # a subset of the spec's arguments, in another order
    seed.lever_state.setdefault("log", {"calls": []})["calls"].append(("second", new))
    seed.knobs.blend_steps *= 2
""",
    )
    lever_dist(
        "first",
        IMPORTS
        + """
writes = ("blend_steps",)

@hookimpl
def action_head():
    return HeadSpec(name="tempo", choices=("fast", "slow"), values=(3, 8), default="fast", ops={Op.GERMINATE})

@hookimpl
def on_enter_stage(seed, old, new):
    seed.lever_state.setdefault("log", {"calls": []})["calls"].append(("first", seed.seed_id, old, new))
    if new == Stage.GERMINATED:
        seed.knobs.blend_steps = seed.value("tempo")
""",
    )
    reg = lever_dist.registry()
    seed = make_seed(reg, tempo="slow")

    reg.enter_stage(seed, Stage.DORMANT, Stage.GERMINATED)

    assert seed.lever_state["log"]["calls"] == [
        ("first", "seed-0", Stage.DORMANT, Stage.GERMINATED),
        ("second", Stage.GERMINATED),
    ]
    # 8 from the recorded choice, then doubled: "second" saw what "first" wrote.
    assert seed.knobs.blend_steps == 16
    reg.enter_stage(seed, Stage.GERMINATED, Stage.TRAINING)
    assert seed.lever_state["log"]["calls"][-2:] == [
        ("first", "seed-0", Stage.GERMINATED, Stage.TRAINING),
        ("second", Stage.TRAINING),
    ]


WARMUP = """
writes = ("lr_scale",)

@hookimpl
def action_head():
    return HeadSpec(name="warm", choices=("off", "on"), values=(0, 4), default="on", ops={Op.GERMINATE})

@hookimpl
def on_epoch(seed, epoch):
    seed.lever_state.setdefault("warm", {"epochs": []})["epochs"].append(epoch)
    span = seed.value("warm", 0)
    if span:
        seed.knobs.lr_scale = min(1.0, (epoch - seed.germinated_epoch + 1) / span)
"""


def test_hook_on_epoch(lever_dist: LeverDists) -> None:
    lever_dist("warm", IMPORTS + WARMUP)
    h = Harness(registry=lever_dist.registry(), blocks=3, max_epochs=8)
    h.epoch = 1
    seed = h.germinate(0, warm="on")
    group_lr = [h.seed_group_lr(0)]
    while h.epoch < 7:
        h.end_epoch()
        group_lr.append(h.seed_group_lr(0))
    # Called once before every epoch the seed lives through (1..7), never for the epoch after the run.
    assert seed.lever_state["warm"]["epochs"] == [1, 2, 3, 4, 5, 6, 7]
    host_lr = h.lifecycle.config.host_lr
    # The write takes effect from the epoch it was made for, through the seed's param group.
    assert group_lr == pytest.approx([host_lr * s for s in (0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0)])
    off = h.germinate(1, warm="off")
    assert off.knobs.lr_scale == 1.0


def test_knob_writes_are_owned(lever_dist: LeverDists) -> None:
    lever_dist("sneaky", IMPORTS + "\n@hookimpl\ndef on_epoch(seed):\n    seed.knobs.steepness = 3.0\n")
    reg = lever_dist.registry()
    with pytest.raises(PluginError, match=r"'sneaky'.*wrote knob\(s\) \['steepness'\].*does not own"):
        reg.on_epoch(make_seed(reg), 3)


def test_a_build_knob_written_after_germination_is_refused(lever_dist: LeverDists) -> None:
    code = 'writes = ("width_scale",)\n@hookimpl\ndef on_epoch(seed):\n    seed.knobs.width_scale = 2.0\n'
    lever_dist("grow", IMPORTS + code)
    reg = lever_dist.registry()
    with pytest.raises(PluginError, match=r"'grow'.*\['width_scale'\].*would be ignored"):
        reg.on_epoch(make_seed(reg), 3)


def test_two_writers_of_one_knob_are_an_error_naming_both(lever_dist: LeverDists) -> None:
    lever_dist(
        "lr",
        IMPORTS + 'HEAD = HeadSpec("lr", ("CAUTIOUS", "FAST"), (0.5, 2.0), "CAUTIOUS", knob="lr_scale")\n'
        "@hookimpl\ndef action_head():\n    return HEAD\n",
    )
    boost = 'writes = ("lr_scale",)\n@hookimpl\ndef on_epoch(seed):\n    seed.knobs.lr_scale = 10.0\n'
    lever_dist("boost", IMPORTS + boost)
    with pytest.raises(PluginError, match=r"knob 'lr_scale' is written by lever 'boost'.* and by lever 'lr'"):
        lever_dist.registry(Selection(only=("boost", "lr")))
    # Without naming them, the tolerant default drops one and reports it, never composing both.
    tolerant = lever_dist.registry()
    assert len(tolerant.levers) == 1 and "knob 'lr_scale' is written by" in tolerant.failures[0].error
    # Declaring that it composes (it scales the other's choice rather than replacing it) is allowed.
    lever_dist("scaler", IMPORTS + boost + 'composes = ("lr_scale",)\n')
    reg = lever_dist.registry(Selection(only=("lr", "scaler")))
    assert reg.knob_owners["lr_scale"] == ("lr", "scaler")


def test_declared_knob_is_set_on_entering_its_stage(lever_dist: LeverDists) -> None:
    spec = 'HeadSpec("ramp", ("a", "b"), (2, 9), "a", knob="blend_steps", on_enter=Stage.BLENDING, until="blended")'
    lever_dist("ramp", IMPORTS + f"@hookimpl\ndef action_head():\n    return {spec}\n")
    reg = lever_dist.registry()
    seed = make_seed(reg, ramp="b")
    reg.enter_stage(seed, Stage.TRAINING, Stage.BLENDING)
    assert seed.knobs.blend_steps == 9
    assert reg.hooks_of("ramp") == ("action_head",)  # no hook wrote it
    # Its mask is declared too: at epoch 12 of 20 only the quick ramp can still end in the episode.
    row = reg.masks(make_view(reg, n_envs=1, epoch=12))[0, int(Op.GERMINATE), reg.space.head("ramp").index, :2]
    assert row.tolist() == [True, False]


def test_hook_telemetry_fields(lever_dist: LeverDists) -> None:
    fields = """
@hookimpl
def telemetry_fields():
    return [
        TelemetryField("rate", "alpha per epoch", lambda ctx: None if ctx.seed is None else 0.25, observed=True),
        TelemetryField("debug", "not for Tamiyo", lambda ctx: float(ctx.epoch)),
    ]
"""
    lever_dist("probe", IMPORTS + fields)
    lever_dist("echo", IMPORTS + fields.replace('"rate"', '"echo_rate"'))
    reg = lever_dist.registry()

    assert [f.key for f in reg.fields] == ["echo.echo_rate", "echo.debug", "probe.rate", "probe.debug"]
    assert [f.key for f in reg.observed_fields()] == ["echo.echo_rate", "probe.rate"]
    ctx = FieldContext(seed=make_seed(reg), slot=0, epoch=7, max_epochs=20, val_accuracy=0.5, train_loss=1.0)
    empty = FieldContext(seed=None, slot=1, epoch=7, max_epochs=20, val_accuracy=0.5, train_loss=1.0)
    computed = {f.key: (f.spec.compute(ctx), f.spec.compute(empty)) for f in reg.fields if f.lever == "probe"}
    assert computed == {"probe.rate": (0.25, None), "probe.debug": (7.0, 7.0)}


def test_hook_compile_safety(lever_dist: LeverDists) -> None:
    lever_dist(
        "safe",
        IMPORTS + '\n@hookimpl\ndef compile_safety():\n    return CompileSafety(Safety.NONE, "values only")\n',
    )
    lever_dist("silent", IMPORTS + "\n@hookimpl\ndef telemetry_fields():\n    return []\n")
    reg = lever_dist.registry()

    assert reg.safety["safe"].level is Safety.NONE
    assert reg.safety["safe"].reason == "values only"
    assert "compile_safety" not in reg.hooks_of("silent")
    assert reg.safety["silent"] == UNDECLARED_SAFETY
    assert reg.safety["silent"].level is Safety.BREAKS_GRAPH
    # The core declares its own: germinating changes which modules are live.
    assert reg.safety["esper"].level is Safety.SPECIALIZES


# -- meta-tests ---------------------------------------------------------------------


def _hookspec_functions() -> list[str]:
    marker = f"{hookspecs.PROJECT}_spec"
    return [
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if fn.__module__ == hookspecs.__name__ and hasattr(fn, marker)
    ]


def test_hook_names_match_the_hookspecs() -> None:
    assert sorted(hookspecs.HOOK_NAMES) == sorted(_hookspec_functions())
    assert len(set(hookspecs.HOOK_NAMES)) == len(hookspecs.HOOK_NAMES)


@pytest.mark.parametrize("hook", hookspecs.HOOK_NAMES)
def test_every_hook_has_a_test(hook: str) -> None:
    here = sys.modules[__name__]
    test = getattr(here, f"test_hook_{hook}", None)
    assert inspect.isfunction(test), f"hook {hook!r} has no test_hook_{hook} in {__file__}"


def _doc_sections() -> dict[str, str]:
    text = DOCS.read_text()
    parts = re.split(r"^## +(\S+) *$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.mark.parametrize("hook", hookspecs.HOOK_NAMES)
def test_every_hook_is_documented(hook: str) -> None:
    sections = _doc_sections()
    assert hook in sections, f"docs/hooks.md has no '## {hook}' section"
    assert "```python" in sections[hook], f"docs/hooks.md section {hook!r} has no python example"


def _doc_examples() -> list[tuple[str, str]]:
    out = []
    for hook, body in _doc_sections().items():
        for i, code in enumerate(re.findall(r"```python\n(.*?)```", body, flags=re.DOTALL)):
            out.append((f"{hook}-{i}", code))
    return out


@pytest.mark.parametrize(("where", "code"), _doc_examples(), ids=[w for w, _ in _doc_examples()])
def test_docs_example_runs(lever_dist: LeverDists, where: str, code: str) -> None:
    """Install the example as a lever, compose it, and call each hook it implements."""
    hook = where.split("-")[0]
    lever_dist(hook, code, dist="esper-docs-example")
    reg = lever_dist.registry()
    assert hook in reg.hooks_of(hook), f"the example in '## {hook}' does not implement {hook}"

    view = make_view(reg)
    out = reg.masks(view)
    assert out.dtype == torch.bool
    seed = make_seed(reg)
    for old, new in [(Stage.DORMANT, Stage.GERMINATED), (Stage.GERMINATED, Stage.TRAINING)]:
        reg.enter_stage(seed, old, new)
        reg.on_epoch(seed, seed.germinated_epoch + int(new))
    ctx = FieldContext(seed=seed, slot=0, epoch=5, max_epochs=20, val_accuracy=0.5, train_loss=1.0)
    for field in reg.fields:
        assert isinstance(field.spec.compute(ctx), float | None)
