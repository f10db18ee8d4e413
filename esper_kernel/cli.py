"""The ``esper`` command line.

``main`` is a click group; each command is its own function so further
commands (``run``, ``train``) can be added with ``@main.command()``. Every
command loads levers with ``Registry.open(default_core(), Selection.from_env(...))``,
which honours ``--levers`` and the ``ESPER_*`` environment variables exactly
as a run does, so what ``esper levers list`` shows is what a run would load.

Errors Esper raises on purpose (:class:`~esper_kernel.infra.errors.EsperError`)
are printed as one line on stderr with exit status 2, never as a traceback:
they are the user's or a plugin author's to fix, not a crash.

The training commands (``run``, ``train``, ``eval``, ``sweep``) only declare
their flags here and hand them to :mod:`esper_kernel.commands.session`, the layer they
share; the levers report they print is :mod:`esper_kernel.report.levers`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console

from esper_kernel.commands.session import runtime_options
from esper_kernel.infra.errors import EsperError, PluginError, SelectionError, Terminated
from esper_kernel.infra.memory import keep_freed_memory
from esper_kernel.infra.stops import count_sigints
from esper_kernel.report.levers import LEVERS_SCHEMA as LEVERS_SCHEMA
from esper_kernel.report.levers import LeversReport, failure_record, failures_panel, levers_report, render
from esper_kernel.report.levers import dash as _dash
from esper_kernel.settings import config
from esper_kernel.settings import declare as settings

if TYPE_CHECKING:
    # The registry composes heads with torch; importing it here would make
    # `esper --help` and `esper report` pay for torch (seconds) on every start.
    from esper_kernel.compose.core import CoreHeads
    from esper_kernel.compose.discovery import Selection

F = TypeVar("F", bound=Callable[..., Any])


#: The core heads every command composes levers against.
DEFAULT_TOPOLOGY = "cnn"
DEFAULT_SLOTS = 3


def default_core(topology: str = DEFAULT_TOPOLOGY, n_slots: int = DEFAULT_SLOTS) -> CoreHeads:
    """The kernel's own heads for ``topology``, with every blueprint it has."""
    from esper_kernel.compose.core import CoreHeads
    from esper_kernel.compose.names import BLUEPRINTS

    if topology not in BLUEPRINTS:
        raise EsperError(f"unknown topology {topology!r}; known topologies: {', '.join(BLUEPRINTS)}")
    return CoreHeads(n_slots=n_slots, blueprints=BLUEPRINTS[topology], topology=topology)


def _emit(report: LeversReport, selection: Selection, as_json: bool) -> None:
    if as_json:
        click.echo(report.to_json())
    else:
        _stdout().print(render(report, selection))


# -- commands ----------------------------------------------------------------


class EsperGroup(click.Group):
    """Turns Esper's own errors into one line on stderr and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EsperError as exc:
            # Plugin messages may span lines; the contract is one line per error.
            click.echo(f"esper: error: {' '.join(str(exc).split())}", err=True)
            ctx.exit(2)
        except click.UsageError as exc:
            # A mistyped flag value is one line like every other bad value, not a usage screen.
            hint = f" (see esper {exc.ctx.command_path.partition(' ')[2]} --help)" if exc.ctx else ""
            click.echo(f"esper: error: {' '.join(exc.format_message().split())}{hint}", err=True)
            ctx.exit(2)
        except OSError as exc:
            # The disk, not Esper: a full disk or a permission is the user's to fix, in one line.
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(f"esper: error: {exc.strerror or exc}{where}", err=True)
            ctx.exit(2)
        except MemoryError:
            click.echo("esper: error: out of memory; use fewer --slots, a smaller --width or batch size", err=True)
            ctx.exit(2)
        except Terminated:
            # The stream already ends with run.interrupted; exit as a process killed by SIGTERM does.
            click.echo("esper: stopped by SIGTERM (continue with --resume)", err=True)
            ctx.exit(128 + signal.SIGTERM)
        except RuntimeError as exc:
            # torch reports a failed allocation as a RuntimeError; anything else is a bug worth its traceback.
            if "allocate" not in str(exc) and "out of memory" not in str(exc):
                raise
            click.echo(f"esper: error: out of memory ({' '.join(str(exc).split())[:200]})", err=True)
            ctx.exit(2)


#: Width of a table written to a file or a pipe: rich's 80 columns there would fold rows mid-word.
PIPE_WIDTH = 240


def _stdout() -> Console:
    """The console for tables on stdout: the terminal's width, or wide rows when piped (COLUMNS still wins)."""
    # No emoji codes: a policy spec such as greedy:family:FILE is not ":family:".
    console = Console(emoji=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=PIPE_WIDTH, emoji=False)
    return console


@click.group(cls=EsperGroup)
@click.version_option(package_name="esper-kernel", prog_name="esper")
def main() -> None:
    """Esper: grow neural networks while they train, steered by pluggable levers."""
    count_sigints()  # so a plugin's own KeyboardInterrupt is named, not taken for Ctrl-C
    keep_freed_memory()  # an epoch frees and reallocates the same tensors; see infra/memory.py


@main.group()
def levers() -> None:
    """Inspect the installed lever plugins."""


_CHECK_HELP = "After listing, exit 2 with one line naming them if any {what} failed to load (a CI check)."
_JSON_HELP = f"Print JSON (schema {LEVERS_SCHEMA}, see docs/levers-cli.md) instead of a table."


@levers.command("list")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.option(
    "--levers",
    "only",
    metavar="A,B",
    default=None,
    help="Load only these levers (overrides ESPER_LEVERS).",
)
@click.option("--check", is_flag=True, help=_CHECK_HELP.format(what="lever"))
def list_levers(as_json: bool, only: str | None, check: bool) -> None:
    """List active levers and load failures; exit 0 whatever is broken (--check: exit 2 if anything is).

    For each lever: its distribution, entry point, heads, telemetry fields,
    compile safety, hooks and relations to other levers.
    """
    from esper_kernel.compose.discovery import Selection
    from esper_kernel.compose.registry import Registry

    selection = Selection.from_env(levers=only)
    # The listing is how a user finds what is broken, so it always lists and exits 0, strict
    # mode included (ESPER_STRICT_PLUGINS is about runs); failing is asked for with --check.
    reg = Registry.open(default_core(), selection, listing=True)
    _emit(levers_report(reg), selection, as_json)
    if check:
        _check_failures("lever", [(f.name, f.distribution) for f in reg.failures])


def _check_failures(what: str, failures: list[tuple[str, str]]) -> None:
    if failures:
        names = ", ".join(f"{name!r} ({dist})" for name, dist in failures)
        raise PluginError(f"{len(failures)} {what}(s) failed to load: {names} (--check)")


@levers.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
def show_lever(name: str, as_json: bool) -> None:
    """Show one active lever in full."""
    from esper_kernel.compose.discovery import Selection
    from esper_kernel.compose.registry import Registry

    selection = Selection.from_env()
    reg = Registry.open(default_core(), selection, listing=True)
    if name not in reg.names:
        failed = next((f for f in reg.failures if f.name == name), None)
        if failed is not None:
            report = LeversReport(schema=LEVERS_SCHEMA, levers=(), failures=(failure_record(failed),))
            if as_json:
                click.echo(report.to_json())
            else:
                Console(emoji=False).print(failures_panel(report.failures))
            return
        if name in reg.installed:
            raise SelectionError(f"lever {name!r} is installed but not selected; active levers: {_dash(reg.names)}")
        raise SelectionError(f"unknown lever {name!r}; installed levers: {_dash(reg.installed)}")
    _emit(levers_report(reg, names=(name,), failures=False), selection, as_json)


@levers.command("new")
@click.argument("name")
@click.option(
    "--dir",
    "parent",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where to create esper-lever-NAME/.",
)
def new_lever(name: str, parent: Path) -> None:
    """Create esper-lever-NAME/: a working lever, its pyproject.toml and contract tests."""
    from esper_kernel.commands.scaffold import scaffold
    from esper_kernel.compose.discovery import kernel_version

    root = scaffold(name, parent, kernel_version())
    click.echo(f"created {root}; next: pip install -e {root} && pytest {root / 'tests'}")


# -- esper tasks ----------------------------------------------------------------


@main.group()
def tasks() -> None:
    """Inspect the installed task plugins (the esper.tasks entry-point group)."""


@tasks.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema esper.tasks/1, see docs/tasks.md).")
@click.option("--check", is_flag=True, help=_CHECK_HELP.format(what="task plugin"))
def list_tasks_command(as_json: bool, check: bool) -> None:
    """List installed tasks and the task plugins that failed to load; exit 0 (--check: exit 2 if any failed).

    Loads each task's declaration only (no data, no host, no torch); a broken
    task plugin is listed with its distribution, never fatal, ESPER_STRICT_PLUGINS=1
    included (that is about runs); --check makes the command fail after listing.
    """
    import json

    from esper_kernel.data.taskplugins import list_tasks

    listing = list_tasks()
    if as_json:
        click.echo(json.dumps(listing.to_json(), indent=2))
    else:
        for info in listing.tasks:
            t = info.task
            data = "reads --data-dir" if t.requires_data_dir else "generated"
            click.echo(
                f"{t.name:<12} {t.topology:<11} metric {t.metric:<8} {data:<16} "
                f"({info.distribution} {info.version})  {t.description}"
            )
        for failure in listing.failures:
            click.echo(f"FAILED: {failure.describe()}")
    if check:
        _check_failures("task plugin", [(f.name, f.distribution) for f in listing.failures])


# -- options every training command shares ---------------------------------------


def _settings(command: settings.Command) -> Callable[[F], F]:
    """Every setting ``command`` takes, as declared once on the config classes (esper_kernel.settings.declare)."""
    return settings.options(command, config.SETTINGS_OF[command])


# -- esper run ----------------------------------------------------------------


@main.command("run")
@_settings("run")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False), help="TOML run config.")
@click.option("--resume", default=None, type=click.Path(file_okay=False), help="Continue the run in this directory.")
@click.option("--overwrite", is_flag=True, help="Replace the run already in --out (refused otherwise).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@runtime_options()
def run_command(**flags: Any) -> None:
    """Train a host on a task with every active lever on and Tamiyo deciding.

    Writes OUT/events.jsonl, OUT/summary.json and OUT/checkpoint.pt;
    `esper report OUT` draws them. An OUT that already holds a run is refused
    unless --overwrite (or --resume OUT).
    """
    from esper_kernel.commands import session_run

    session_run.esper_run(session_run.RunFlags.split(flags))


# -- esper train -------------------------------------------------------------


@main.command("train")
@_settings("train")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False), help="TOML train config.")
@click.option(
    "--resume",
    default=None,
    type=click.Path(file_okay=False),
    help="Continue the training run in this directory (its own config) to the result it would have reached.",
)
@click.option(
    "--ray",
    "ray_address",
    default=None,
    is_flag=False,
    flag_value="",
    metavar="[ADDRESS]",
    help='Env workers as Ray actors at ADDRESS (default: RAY_ADDRESS, else a local Ray); needs "esper-kernel[ray]".',
)
@runtime_options()
def train(**flags: Any) -> None:
    """Train Tamiyo with PPO against the active levers.

    Writes OUT/policy.pt (for ``esper run --policy``), OUT/best_policy.pt (best
    held-out return), OUT/train_state.pt (for --resume), OUT/events.jsonl and
    OUT/train_summary.json. Small --epochs/--train-size/--val-size make a
    quick run. Flags override a --config file's values.
    """
    # Imported here so ``esper levers`` does not pay for the training stack.
    from esper_kernel.commands import session_train

    session_train.esper_train(session_train.TrainFlags.split(flags))


# -- esper sweep -------------------------------------------------------------


@main.command("sweep")
@click.option(
    "--lever-set",
    "lever_sets",
    multiple=True,
    metavar="A,B",
    help="A lever set to sweep (repeat for several; 'all': every installed lever, the default; 'none').",
)
@click.option("--policies", default="heuristic", show_default=True, metavar="P,Q", help="Policies, as in esper eval.")
@click.option(
    "--force",
    "forces",
    multiple=True,
    metavar="HEAD=CHOICE",
    help="One grid value of forced choices (repeat: tempo=GLACIAL, tempo=FAST; several heads: tempo=FAST+lr=BOLD).",
)
@click.option("--seeds", default="0-2", show_default=True, help="Seeds, paired across cells: 0-9 or 1,4,7.")
@_settings("sweep")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False), help="TOML run config.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Trials at once (default: usable cores).")
@click.option(
    "--ray",
    "ray_address",
    default=None,
    is_flag=False,
    flag_value="",
    metavar="[ADDRESS]",
    help='Run the trials with Ray Tune at ADDRESS (default: RAY_ADDRESS, else a local Ray); needs "esper-kernel[ray]".',
)
@click.option("--out", default=config.LATEST, show_default=True, type=click.Path(file_okay=False), help=config.OUT_HELP)
@runtime_options(tensorboard=False)
def sweep_command(**flags: Any) -> None:
    """A grid of eval cells (lever sets x forced choices x policies x seeds), one table at the end.

    Each trial is one eval cell played on one seed and gets its own directory
    (OUT/trials/CELL/seed-N/trial.json). Every cell is paired with its lever
    set's `wait` control; OUT/sweep.json (schema esper.eval/1) and OUT/sweep.md
    hold the table `esper eval` prints.
    """
    from esper_kernel.commands import session_eval

    session_eval.esper_sweep(session_eval.SweepFlags.split(flags))


# -- esper report / compare ------------------------------------------------------


@main.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write report.html and the PNGs (default: RUN_DIR).",
)
def report_command(run_dir: Path, out_dir: Path | None) -> None:
    """Write RUN_DIR/report.html (self-contained) and its plots as PNGs.

    RUN_DIR is the output of `esper run` (accuracy, parameters, seed timeline,
    lever telemetry), of `esper train` (returns, entropies, KL, what emerged)
    or of `esper eval` (paired differences). See docs/report.md.
    """
    from esper_kernel.report.html import write_report

    rep = write_report(run_dir, out_dir)
    click.echo(f"wrote {rep.html} ({rep.kind}: {', '.join(rep.sections)}) and {len(rep.pngs)} PNG(s) beside it")


@main.command("compare")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema esper.compare/1, see docs/report.md).")
@click.option(
    "--reference",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="A directory of the reference arm (default: the first directory's).",
)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write a PNG here.")
def compare_command(dirs: tuple[Path, ...], as_json: bool, reference: Path | None, plot: Path | None) -> None:
    """One table across runs; paired differences with 95% CIs where runs share seeds.

    Runs with the same configuration except seed and output directory form an
    arm; every other arm is compared with the reference arm seed by seed.
    """
    from esper_kernel.report.compare import compare, render, write_plot

    comp = compare(list(dirs), reference)
    if plot is not None:
        write_plot(comp, plot)
    if as_json:
        click.echo(comp.to_json())
    else:
        _stdout().print(render(comp))
        if plot is not None:
            click.echo(f"wrote {plot}")


# -- esper eval --------------------------------------------------------------


@main.command("eval")
@click.option(
    "--policies",
    default="heuristic,random,wait",
    show_default=True,
    metavar="P,Q",
    help="Policies: heuristic, random, wait, static[:N], pretrained, a policy file (greedy:FILE takes its most "
    "probable choices); HEAD=CHOICE forces a head (heuristic+tempo=GLACIAL).",
)
@click.option("--force", "forces", multiple=True, metavar="HEAD=CHOICE", help="Force a head in every policy.")
@click.option("--seeds", default="0-9", show_default=True, help="Seeds, paired across policies: 0-9 or 1,4,7.")
@click.option("--reference", default="wait", show_default=True, help="The policy every other is paired against.")
@click.option("--effects", is_flag=True, help="Add the heuristic with each lever head forced to each extreme choice.")
@click.option(
    "--attribution",
    default=None,
    metavar="P",
    help="Add policy P with each lever head held at its default, and write attribution.md (which levers earned "
    "their keep).",
)
@_settings("eval")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False), help="TOML run config.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes (default: usable cores).")
@click.option("--out", default=config.LATEST, show_default=True, type=click.Path(file_okay=False), help=config.OUT_HELP)
@runtime_options(tensorboard=False)
def eval_command(**flags: Any) -> None:
    """Run several policies on the same seeds, paired, and write OUT/eval.json and OUT/eval.md.

    Each finished episode is appended to OUT/episodes.jsonl at once; running
    the same command again with that --out plays only the episodes still missing
    (without --out each eval writes a fresh directory, runs/latest the newest).

    Every policy is compared seed by seed with the reference (the no-growth
    `wait` control by default): mean difference and 95% confidence interval
    of final accuracy, return and parameters. Schema in docs/eval.md.
    """
    from esper_kernel.commands import session_eval

    session_eval.esper_eval(session_eval.EvalFlags.split(flags))


@main.command("frontier")
@click.option(
    "--policies", default="heuristic", show_default=True, metavar="P,Q", help="Growing policies (eval specs)."
)
@click.option("--seeds", default="0-9", show_default=True, help="Seeds, paired across every run: 0-9 or 1,4,7.")
@click.option("--widths", default=None, metavar="A,B,C,D", help="Static-host widths (default: the task's own family).")
@click.option("--no-scratch", is_flag=True, help="Skip the from-scratch control (grown architectures from epoch 0).")
@click.option("--task", default=None, help="Task (default: pairs).")
@click.option("--data-dir", default=None, type=click.Path(), help="Data for tasks that read files.")
@click.option("--levers", default=None, metavar="A,B", help="Levers to activate (default: every installed one).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Host epochs per episode.")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False), help="TOML run config.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes (default: usable cores).")
@click.option("--out", default=config.LATEST, show_default=True, type=click.Path(file_okay=False), help=config.OUT_HELP)
@click.option("--threads", type=click.IntRange(min=0), default=None, help="Torch intra-op threads per process.")
def frontier_command(**flags: Any) -> None:
    """Static hosts at every width beside growing policies: OUT/frontier.json, frontier.md, frontier.png.

    Each run's final accuracy (or validation loss, for tasks judged on it)
    against its mean parameters and its training FLOPs (estimated per epoch
    from the host and the live seeds), plus the from-scratch control: the
    architecture each growing run ended with, trained from epoch 0, paired by
    seed. Schema esper.frontier/1 in docs/growth.md.
    """
    from esper_kernel.commands import session_eval

    session_eval.esper_frontier(flags)


if __name__ == "__main__":
    main()
