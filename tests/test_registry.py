"""The registry through real installed distributions: discovery, selection, load
failures, and one test per way a plugin can be wrong.

Every error test checks what a user needs to act on the message: which lever,
which distribution, and which head or hook.
"""

from __future__ import annotations

import pytest
from conftest import LeverDists, make_seed, make_view

from esper_kernel.compose.discovery import ENV_STRICT, Selection, installed_entry_points, load_levers
from esper_kernel.compose.stages import Op, Stage
from esper_kernel.infra.errors import MaskError, PluginError, SelectionError


def head_lever(head: str = "speed", extra: str = "", **spec: str) -> str:
    """Source of a lever declaring one 3-choice GERMINATE head, with HeadSpec overrides."""
    args = {
        "name": repr(head),
        "choices": "('a', 'b', 'c')",
        "values": "(1, 2, 3)",
        "default": "'a'",
        "ops": "{'germinate'}",
        **spec,
    }
    call = ", ".join(f"{k}={v}" for k, v in args.items())
    return f"""
import torch
from esper_kernel import CompileSafety, HeadCondition, HeadSpec, Safety, TelemetryField, hookimpl

@hookimpl
def action_head():
    return HeadSpec({call})
{extra}
"""


NO_HEAD = """
from esper_kernel import hookimpl

@hookimpl
def compile_safety():
    from esper_kernel import CompileSafety
    return CompileSafety("none")
"""

#: Strict mode: a lever with an invalid declaration is an error, not dropped.
STRICT = Selection(strict=True)

BROKEN = """
raise ImportError("needs libfoo >= 2")
"""


def names_all(msg: str, *parts: str) -> None:
    missing = [p for p in parts if p not in msg]
    assert not missing, f"{missing} not in message: {msg}"


# -- discovery ------------------------------------------------------------------


def test_installed_lever_is_discovered_with_its_distribution(lever_dist: LeverDists) -> None:
    lever_dist("speed", head_lever(), dist="acme-speed", version="2.3.1")

    eps = [ep for ep in installed_entry_points() if ep.name == "speed"]
    assert [(ep.dist.metadata["Name"], ep.value) for ep in eps if ep.dist] == [("acme-speed", "acme_speed_speed")]

    # Default discovery (no entry points handed in), as the CLI and a run do it.
    result = load_levers(Selection(only=("speed",)))
    (info,) = result.levers
    assert (info.name, info.distribution, info.version, info.entry_point) == (
        "speed",
        "acme-speed",
        "2.3.1",
        "acme_speed_speed",
    )
    assert "speed" in result.installed


@pytest.mark.parametrize(
    "install_order", [("zeta", "alpha", "mid"), ("alpha", "mid", "zeta"), ("mid", "zeta", "alpha")]
)
def test_lever_order_is_by_name_whatever_the_install_order(
    lever_dist: LeverDists, install_order: tuple[str, ...]
) -> None:
    for name in install_order:
        lever_dist(name, head_lever(head=f"{name}_head"))

    reg = lever_dist.registry()

    assert reg.names == ("alpha", "mid", "zeta")
    assert reg.space.names[4:] == ("alpha_head", "mid_head", "zeta_head")


# -- selection ----------------------------------------------------------------


@pytest.fixture
def three(lever_dist: LeverDists) -> LeverDists:
    for name in ("one", "two", "three"):
        lever_dist(name, head_lever(head=f"{name}_head"))
    return lever_dist


def test_levers_option_selects_and_wins_over_env(three: LeverDists) -> None:
    sel = Selection.from_env(levers="two,one", environ={"ESPER_LEVERS": "three"})
    assert three.registry(sel).names == ("one", "two")


def test_env_levers_selects(three: LeverDists) -> None:
    sel = Selection.from_env(environ={"ESPER_LEVERS": "three"})
    assert three.registry(sel).names == ("three",)


def test_disabled_levers_are_not_loaded(three: LeverDists) -> None:
    sel = Selection.from_env(environ={"ESPER_DISABLED_LEVERS": "two, three"})
    reg = three.registry(sel)
    assert reg.names == ("one",)
    assert "two_head" not in reg.space


def test_autoload_off_loads_none_unless_named(three: LeverDists) -> None:
    off = {"ESPER_DISABLE_PLUGIN_AUTOLOAD": "1"}
    assert three.registry(Selection.from_env(environ=off)).names == ()
    assert three.registry(Selection.from_env(levers="two", environ=off)).names == ("two",)


def test_unknown_lever_name_lists_the_installed_ones(three: LeverDists) -> None:
    with pytest.raises(SelectionError) as err:
        three.load(Selection.from_env(levers="one,nope"))
    names_all(str(err.value), "'nope'", "one, three, two")


# -- load failures --------------------------------------------------------------


def test_lever_failing_to_import_is_reported_and_others_load(lever_dist: LeverDists) -> None:
    lever_dist("good", head_lever())
    bad = lever_dist("bad", BROKEN, dist="acme-bad", version="0.4")

    result = lever_dist.load()

    assert [lv.name for lv in result.levers] == ["good"]
    (fail,) = result.failures
    assert (fail.name, fail.distribution, fail.version, fail.entry_point) == ("bad", "acme-bad", "0.4", bad.module)
    assert fail.error == "ImportError: needs libfoo >= 2"


def test_entry_point_to_a_missing_module_is_a_load_failure(lever_dist: LeverDists) -> None:
    lever_dist("ghost", NO_HEAD, entry_point="acme_ghost_gone")
    (fail,) = lever_dist.load().failures
    names_all(fail.describe(), "'ghost'", "esper-lever-ghost", "acme_ghost_gone", "ModuleNotFoundError")


def test_lever_failing_to_import_is_an_error_when_selected(lever_dist: LeverDists) -> None:
    lever_dist("good", head_lever())
    lever_dist("bad", BROKEN, dist="acme-bad", version="0.4")

    with pytest.raises(PluginError) as err:
        lever_dist.load(Selection.from_env(levers="good,bad"))
    names_all(str(err.value), "'bad'", "acme-bad 0.4", "ImportError: needs libfoo >= 2")


def test_lever_failing_to_import_is_an_error_when_strict(lever_dist: LeverDists) -> None:
    lever_dist("good", head_lever())
    lever_dist("bad", BROKEN, dist="acme-bad", version="0.4")

    with pytest.raises(PluginError) as err:
        lever_dist.load(Selection.from_env(environ={ENV_STRICT: "1"}))
    names_all(str(err.value), "'bad'", "acme-bad 0.4", "needs libfoo", ENV_STRICT)


def test_same_lever_name_from_two_distributions_names_both(lever_dist: LeverDists) -> None:
    lever_dist("speed", head_lever(), dist="acme-speed")
    lever_dist("speed", head_lever(), dist="other-speed")

    with pytest.raises(PluginError) as err:
        lever_dist.load()
    names_all(str(err.value), "'speed'", "acme-speed", "other-speed")


# -- bad plugins: one test per case ------------------------------------------------


def test_unknown_hook_name(lever_dist: LeverDists) -> None:
    lever_dist(
        "typo",
        "from esper_kernel import hookimpl\n\n@hookimpl\ndef action_heads():\n    return None\n",
        dist="acme-typo",
        version="1.2",
    )
    with pytest.raises(PluginError) as err:
        lever_dist.registry(STRICT)
    names_all(str(err.value), "'typo'", "acme-typo 1.2", "'action_heads'", "action_head, mask")


def test_duplicate_head_across_two_distributions_names_both(lever_dist: LeverDists) -> None:
    lever_dist("first", head_lever(head="speed"), dist="acme-first", version="1.0")
    lever_dist("second", head_lever(head="speed"), dist="acme-second", version="2.0")

    with pytest.raises(PluginError) as err:
        lever_dist.registry(STRICT)
    names_all(str(err.value), "'speed'", "'first' (acme-first 1.0)", "'second' (acme-second 2.0)")


def test_head_shadowing_a_core_head_names_the_kernel_and_the_lever(lever_dist: LeverDists) -> None:
    lever_dist("shadow", head_lever(head="blend"))
    with pytest.raises(PluginError) as err:
        lever_dist.registry(STRICT)
    names_all(str(err.value), "'blend'", "esper-kernel", "'shadow' (esper-lever-shadow 1.0)")


def test_head_with_fewer_than_two_choices(lever_dist: LeverDists) -> None:
    lever_dist("solo", head_lever(choices="('a',)", values="(1,)"))
    with pytest.raises(PluginError) as err:
        lever_dist.registry(STRICT)
    names_all(str(err.value), "'solo'", "esper-lever-solo", "'speed'", "at least 2 choices")


def test_default_outside_choices(lever_dist: LeverDists) -> None:
    lever_dist("lax", head_lever(default="'z'"))
    with pytest.raises(PluginError) as err:
        lever_dist.registry(STRICT)
    names_all(str(err.value), "'lax'", "esper-lever-lax", "'speed'", "default 'z'")


def test_values_and_choices_length_mismatch(lever_dist: LeverDists) -> None:
    lever_dist("short", head_lever(values="(1, 2)"))
    with pytest.raises(PluginError) as err:
        lever_dist.registry(STRICT)
    names_all(str(err.value), "'short'", "esper-lever-short", "'speed'", "3 choices but 2 values")


def test_action_head_returning_junk(lever_dist: LeverDists) -> None:
    lever_dist("junk", "from esper_kernel import hookimpl\n\n@hookimpl\ndef action_head():\n    return 42\n")
    with pytest.raises(PluginError) as err:
        lever_dist.registry(STRICT)
    names_all(str(err.value), "'junk'", "esper-lever-junk", "action_head()", "int")


def test_condition_on_unknown_head(lever_dist: LeverDists) -> None:
    lever_dist("cond", head_lever(condition="HeadCondition('nohead', ('x',))"))
    with pytest.raises(PluginError) as err:
        lever_dist.registry(STRICT)
    names_all(str(err.value), "'cond'", "esper-lever-cond", "'speed'", "'nohead'")


def test_condition_on_unknown_choice(lever_dist: LeverDists) -> None:
    lever_dist("cond", head_lever(condition="HeadCondition('blend', ('cubic',))"))
    with pytest.raises(PluginError) as err:
        lever_dist.registry(STRICT)
    names_all(str(err.value), "'cond'", "esper-lever-cond", "'speed'", "blend='cubic'", "'linear'")


def test_requires_a_lever_that_is_not_active(lever_dist: LeverDists) -> None:
    lever_dist("needy", head_lever(extra="requires = ('helper',)"), dist="acme-needy")
    lever_dist("helper", NO_HEAD)

    assert lever_dist.registry().names == ("helper", "needy")
    with pytest.raises(PluginError) as err:
        lever_dist.registry(Selection.from_env(environ={"ESPER_DISABLED_LEVERS": "helper"}))
    names_all(str(err.value), "'needy'", "acme-needy", "'helper'", "not active")


def test_conflicts_with_an_active_lever(lever_dist: LeverDists) -> None:
    lever_dist("fast", head_lever(extra="conflicts_with = ('slow',)"), dist="acme-fast")
    lever_dist("slow", NO_HEAD)

    with pytest.raises(PluginError) as err:
        lever_dist.registry(STRICT)
    names_all(str(err.value), "'fast'", "acme-fast", "'slow'", "conflicts")
    assert lever_dist.registry(Selection.from_env(levers="fast")).names == ("fast",)


def mask_lever(body: str) -> str:
    return head_lever(extra=f"\n@hookimpl\ndef mask(view):\n    return {body}\n")


def test_mask_of_wrong_shape(lever_dist: LeverDists) -> None:
    lever_dist("shape", mask_lever("{'speed': torch.ones(view.n_envs, 4, dtype=torch.bool)}"))
    reg = lever_dist.registry()
    with pytest.raises(MaskError) as err:
        reg.masks(make_view(reg))
    names_all(str(err.value), "'shape'", "esper-lever-shape", "'speed'", "(2, 4)", "(2, 3)")


def test_mask_not_bool(lever_dist: LeverDists) -> None:
    lever_dist("float", mask_lever("{'speed': torch.ones(view.n_envs, 3)}"))
    reg = lever_dist.registry()
    with pytest.raises(MaskError) as err:
        reg.masks(make_view(reg))
    names_all(str(err.value), "'float'", "esper-lever-float", "'speed'", "bool", "float32")


def test_mask_for_unknown_head(lever_dist: LeverDists) -> None:
    lever_dist("lost", mask_lever("{'sped': torch.ones(view.n_envs, 3, dtype=torch.bool)}"))
    reg = lever_dist.registry()
    with pytest.raises(MaskError) as err:
        reg.masks(make_view(reg))
    names_all(str(err.value), "'lost'", "esper-lever-lost", "'sped'", "no such head", "'speed'")


def test_mask_returning_a_bare_tensor(lever_dist: LeverDists) -> None:
    lever_dist("bare", mask_lever("torch.ones(view.n_envs, 3, dtype=torch.bool)"))
    reg = lever_dist.registry()
    with pytest.raises(MaskError) as err:
        reg.masks(make_view(reg))
    names_all(str(err.value), "'bare'", "esper-lever-bare", "mask()", "Tensor")


def test_mask_emptying_a_row_names_lever_head_and_env(lever_dist: LeverDists) -> None:
    # Only env 1 is emptied, so the message must point at the right env, not the first.
    lever_dist("gate", mask_lever("{'speed': torch.tensor([[True, True, True], [False, False, False]])}"))
    reg = lever_dist.registry()
    with pytest.raises(MaskError) as err:
        reg.masks(make_view(reg))
    names_all(str(err.value), "'gate'", "esper-lever-gate", "'speed'", "env 1", "GERMINATE")


def test_two_levers_that_together_empty_a_row_are_both_named(lever_dist: LeverDists) -> None:
    lever_dist("left", mask_lever("{'speed': torch.tensor([[True, True, True], [False, False, True]])}"))
    lever_dist(
        "right",
        "import torch\nfrom esper_kernel import hookimpl\n\n@hookimpl\ndef mask(view):\n"
        "    return {'speed': torch.tensor([[True, True, True], [True, True, False]])}\n",
    )
    # Masks part of env 0's row only: it did not contribute to env 1's empty row.
    lever_dist(
        "bystander",
        "import torch\nfrom esper_kernel import hookimpl\n\n@hookimpl\ndef mask(view):\n"
        "    return {'speed': torch.tensor([[False, True, True], [True, True, True]])}\n",
    )
    reg = lever_dist.registry()
    with pytest.raises(MaskError) as err:
        reg.masks(make_view(reg))
    msg = str(err.value)
    names_all(msg, "'speed'", "env 1", "'left' (esper-lever-left)", "'right' (esper-lever-right)")
    assert "bystander" not in msg


RAISING = {
    "action_head": "def action_head():\n    raise RuntimeError('boom')",
    "mask": "def mask(view):\n    raise RuntimeError('boom')",
    "on_enter_stage": "def on_enter_stage(seed, old, new):\n    raise RuntimeError('boom')",
    "telemetry_fields": "def telemetry_fields():\n    raise RuntimeError('boom')",
    "compile_safety": "def compile_safety():\n    raise RuntimeError('boom')",
}


@pytest.mark.parametrize("hook", sorted(RAISING))
def test_hook_that_raises_is_named_with_its_distribution(lever_dist: LeverDists, hook: str) -> None:
    lever_dist("fragile", f"from esper_kernel import hookimpl\n\n@hookimpl\n{RAISING[hook]}\n", dist="acme-fragile")
    with pytest.raises(PluginError) as err:
        reg = lever_dist.registry(STRICT)
        # Hooks not called at composition are called where the kernel uses them.
        reg.masks(make_view(reg))
        reg.enter_stage(make_seed(reg), Stage.DORMANT, Stage.GERMINATED)
    names_all(str(err.value), "'fragile'", "acme-fragile", f"{hook}(", "RuntimeError: boom")


@pytest.mark.parametrize("returned", ["['latency']", "42"], ids=["list-of-str", "int"])
def test_telemetry_fields_returning_a_non_field(lever_dist: LeverDists, returned: str) -> None:
    lever_dist(
        "noisy", f"from esper_kernel import hookimpl\n\n@hookimpl\ndef telemetry_fields():\n    return {returned}\n"
    )
    with pytest.raises(PluginError) as err:
        lever_dist.registry(STRICT)
    names_all(str(err.value), "'noisy'", "esper-lever-noisy", "telemetry_fields()", "TelemetryField")


def test_compile_safety_returning_junk(lever_dist: LeverDists) -> None:
    lever_dist("vague", "from esper_kernel import hookimpl\n\n@hookimpl\ndef compile_safety():\n    return 'none'\n")
    with pytest.raises(PluginError) as err:
        lever_dist.registry(STRICT)
    names_all(str(err.value), "'vague'", "esper-lever-vague", "compile_safety()", "CompileSafety", "str")


def test_valid_masks_compose_without_error(lever_dist: LeverDists) -> None:
    # The counterpart of the error tests: a lever masking part of a row is fine.
    lever_dist("gate", mask_lever("{'speed': torch.tensor([[True, False, True], [False, False, True]])}"))
    reg = lever_dist.registry()
    out = reg.masks(make_view(reg))
    speed = reg.space.head("speed").index
    assert out[:, int(Op.GERMINATE), speed, :3].tolist() == [[True, False, True], [False, False, True]]
