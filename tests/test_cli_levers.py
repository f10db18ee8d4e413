"""``esper levers``: end to end in a subprocess (the console script, real entry
points on PYTHONPATH), plus a few in-process checks of the human output.

The package's own levers are installed too and may be listed; tests assert on
their own test levers, not on counts, except where autoload is off.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner as ClickRunner
from conftest import CliRunner, LeverDists

from esper_kernel.cli import LEVERS_SCHEMA, main

ROUTE = """
import torch
from esper_kernel import CompileSafety, HeadCondition, HeadSpec, Op, Safety, TelemetryField, hookimpl

requires = ()
conflicts_with = ("legacy_route",)


@hookimpl
def action_head():
    return HeadSpec(
        name="route",
        choices=("near", "far", "off"),
        values=(1, 2.5, None),
        default="near",
        ops={Op.GERMINATE},
        condition=HeadCondition("blend", ("sigmoid", "gated")),
        description="where the seed attaches",
    )


@hookimpl
def mask(view):
    return {"route": view.ones("route")}


@hookimpl
def telemetry_fields():
    return [
        TelemetryField("reach", "how far it got", lambda ctx: None, observed=True),
        TelemetryField("debug", "internal", lambda ctx: None),
    ]


@hookimpl
def compile_safety():
    return CompileSafety(Safety.SPECIALIZES, "one graph per route")
"""

BROKEN = 'raise ImportError("needs libroute")\n'


def _lever(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found = [lv for lv in doc["levers"] if lv["name"] == name]
    assert len(found) == 1, f"lever {name!r} not listed once in {[lv['name'] for lv in doc['levers']]}"
    return found[0]


EXPECTED_ROUTE = {
    "name": "route",
    "distribution": "acme-route",
    "version": "3.1",
    "entry_point": "acme_route_route",
    "heads": [
        {
            "name": "route",
            "description": "where the seed attaches",
            "choices": [
                {"name": "near", "value": 1},
                {"name": "far", "value": 2.5},
                {"name": "off", "value": None},
            ],
            "default": "near",
            "ops": ["germinate"],
            "condition": {"head": "blend", "choices": ["sigmoid", "gated"]},
        }
    ],
    "telemetry": [
        {"name": "reach", "key": "route.reach", "observed": True, "description": "how far it got"},
        {"name": "debug", "key": "route.debug", "observed": False, "description": "internal"},
    ],
    "compile_safety": {"level": "specializes", "reason": "one graph per route", "declared": True},
    "hooks": ["action_head", "mask", "telemetry_fields", "compile_safety"],
    "requires": [],
    "conflicts_with": ["legacy_route"],
}


def test_list_json_shows_an_installed_lever_with_all_its_fields(lever_dist: LeverDists, run_esper: CliRunner) -> None:
    lever_dist("route", ROUTE, dist="acme-route", version="3.1")

    proc = run_esper("levers", "list", "--json")

    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == LEVERS_SCHEMA == "esper.levers/1"
    assert set(doc) == {"schema", "levers", "failures"}
    assert _lever(doc, "route") == EXPECTED_ROUTE


def test_list_json_with_autoload_off_lists_none(lever_dist: LeverDists, run_esper: CliRunner) -> None:
    lever_dist("route", ROUTE, dist="acme-route", version="3.1")

    proc = run_esper("levers", "list", "--json", env={"ESPER_DISABLE_PLUGIN_AUTOLOAD": "1"})

    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"schema": "esper.levers/1", "levers": [], "failures": []}


def test_list_json_reports_a_broken_lever_under_failures(lever_dist: LeverDists, run_esper: CliRunner) -> None:
    lever_dist("route", ROUTE, dist="acme-route", version="3.1")
    bad = lever_dist("snag", BROKEN, dist="acme-snag", version="0.2")

    proc = run_esper("levers", "list", "--json", "--levers", "route")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["failures"] == [], "an unselected broken lever is not loaded"

    proc = run_esper("levers", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert _lever(doc, "route")["distribution"] == "acme-route"
    assert [f for f in doc["failures"] if f["name"] == "snag"] == [
        {
            "name": "snag",
            "distribution": "acme-snag",
            "version": "0.2",
            "entry_point": bad.module,
            "error": "ImportError: needs libroute",
        }
    ]


def test_show_prints_one_lever_and_unknown_name_lists_installed(lever_dist: LeverDists, run_esper: CliRunner) -> None:
    lever_dist("route", ROUTE, dist="acme-route", version="3.1")

    proc = run_esper("levers", "show", "route", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"schema": "esper.levers/1", "levers": [EXPECTED_ROUTE], "failures": []}

    proc = run_esper("levers", "show", "rout")
    assert proc.returncode == 2
    assert proc.stdout == ""
    err = proc.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("esper: error: unknown lever 'rout'; installed levers:")
    assert "route" in err.split("installed levers:")[1]


def test_plugin_error_is_one_line_and_exit_2(lever_dist: LeverDists, run_esper: CliRunner, tmp_path: Path) -> None:
    lever_dist("route", ROUTE, dist="acme-route", version="3.1")
    lever_dist("legacy_route", 'import esper_kernel\nrequires = ("nowhere",)\n', dist="acme-legacy")

    # The listing marks the lever broken and still lists; a command that would use it refuses in one line.
    listing = run_esper("levers", "list", "--levers", "route,legacy_route")
    assert listing.returncode == 0 and "legacy_route" in listing.stdout
    proc = run_esper("run", "--levers", "route,legacy_route", "--epochs", "1", "--out", str(tmp_path / "out"))

    assert proc.returncode == 2
    assert not (tmp_path / "out").exists()
    err = proc.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("esper: error: lever 'legacy_route' (acme-legacy 1.0) requires lever(s) 'nowhere'")


# -- in process: human output ---------------------------------------------------------


def _invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return ClickRunner().invoke(main, list(args), env={"COLUMNS": "200", **(env or {})})


def test_human_list_shows_the_lever_and_its_failures(lever_dist: LeverDists) -> None:
    lever_dist("route", ROUTE, dist="acme-route", version="3.1")
    lever_dist("snag", BROKEN, dist="acme-snag", version="0.2")

    result = _invoke("levers", "list")

    assert result.exit_code == 0, result.output
    out = result.output
    for text in (
        "route",
        "acme-route 3.1",
        "acme_route_route",
        "near=1",
        "far=2.5",
        "off=None",
        "default near",
        "ops germinate",
        "only if blend in {sigmoid, gated}",
        "route.reach (observed) - how far it got",
        "route.debug - internal",
        "specializes - one graph per route",
        "action_head, mask, telemetry_fields, compile_safety",
        "legacy_route",
        "snag",
        "acme-snag 0.2",
        "ImportError: needs libroute",
    ):
        assert text in out, f"{text!r} missing from:\n{out}"


def test_human_show_of_a_lever_that_is_not_selected(lever_dist: LeverDists) -> None:
    lever_dist("route", ROUTE, dist="acme-route", version="3.1")

    result = _invoke("levers", "show", "route", env={"ESPER_DISABLED_LEVERS": "route"})

    assert result.exit_code == 2
    assert "lever 'route' is installed but not selected" in result.output


@pytest.mark.parametrize("as_json", [False, True])
def test_list_with_autoload_off_in_process(lever_dist: LeverDists, as_json: bool) -> None:
    lever_dist("route", ROUTE, dist="acme-route", version="3.1")
    args = ["levers", "list", *(["--json"] if as_json else [])]

    result = _invoke(*args, env={"ESPER_DISABLE_PLUGIN_AUTOLOAD": "1"})

    assert result.exit_code == 0, result.output
    if as_json:
        assert json.loads(result.output)["levers"] == []
    else:
        assert "No levers active (ESPER_DISABLE_PLUGIN_AUTOLOAD is set" in result.output
