"""The ``esper`` command line.

``main`` is a click group; each command is its own function so further
commands (``run``, ``train``) can be added with ``@main.command()``. Every
command loads levers with ``Registry.open(default_core(), Selection.from_env(...))``,
which honours ``--levers`` and the ``ESPER_*`` environment variables exactly
as a run does, so what ``esper levers list`` shows is what a run would load.

Errors Esper raises on purpose (:class:`~esper_kernel.errors.EsperError`)
are printed as one line on stderr with exit status 2, never as a traceback:
they are the user's or a plugin author's to fix, not a crash.

The ``--json`` schema (``esper.levers/1``) is documented in
``docs/levers-cli.md``; change it only by bumping the schema version.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import click
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from esper_kernel.errors import EsperError, PluginError, SelectionError
from esper_kernel.stages import Op

if TYPE_CHECKING:
    # The registry composes heads with torch; importing it here would make
    # `esper --help` and `esper report` pay for torch (seconds) on every start.
    from esper_kernel.core import CoreHeads
    from esper_kernel.registry import LeverInfo, LoadFailure, Registry, Selection

LEVERS_SCHEMA = "esper.levers/1"

#: The core heads every command composes levers against.
DEFAULT_TOPOLOGY = "cnn"
DEFAULT_SLOTS = 3


def default_core(topology: str = DEFAULT_TOPOLOGY, n_slots: int = DEFAULT_SLOTS) -> CoreHeads:
    """The kernel's own heads for ``topology``, with every blueprint it has."""
    from esper_kernel.blueprints import blueprint_names
    from esper_kernel.core import CoreHeads

    return CoreHeads(n_slots=n_slots, blueprints=blueprint_names(topology), topology=topology)


# -- the report: one structure for both --json and the human view -----------


@attrs.frozen
class ChoiceRecord:
    name: str
    value: Any


@attrs.frozen
class ConditionRecord:
    head: str
    choices: tuple[str, ...]


@attrs.frozen
class HeadRecord:
    name: str
    description: str
    choices: tuple[ChoiceRecord, ...]
    default: str
    ops: tuple[str, ...]
    condition: ConditionRecord | None


@attrs.frozen
class FieldRecord:
    name: str
    key: str
    observed: bool
    description: str


@attrs.frozen
class SafetyRecord:
    level: str
    reason: str
    declared: bool


@attrs.frozen
class LeverRecord:
    name: str
    distribution: str
    version: str
    entry_point: str
    heads: tuple[HeadRecord, ...]
    telemetry: tuple[FieldRecord, ...]
    compile_safety: SafetyRecord
    hooks: tuple[str, ...]
    requires: tuple[str, ...]
    conflicts_with: tuple[str, ...]


@attrs.frozen
class FailureRecord:
    name: str
    distribution: str
    version: str
    entry_point: str
    error: str


@attrs.frozen
class LeversReport:
    schema: str
    levers: tuple[LeverRecord, ...]
    failures: tuple[FailureRecord, ...]

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), indent=2, allow_nan=False)


def json_value(value: Any) -> Any:
    """A head value as JSON: scalars as themselves, enum members by name, anything else as repr.

    Values are whatever a lever chose to attach to its choices; the schema
    promises valid JSON, so non-finite floats and objects become strings.
    """
    if isinstance(value, enum.Enum):
        return value.name
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    return repr(value)


def _op_names(ops: frozenset[Op]) -> tuple[str, ...]:
    return tuple(op.name.lower() for op in sorted(ops))


def lever_record(reg: Registry, info: LeverInfo) -> LeverRecord:
    hooks = reg.hooks_of(info.name)
    heads = tuple(
        HeadRecord(
            name=h.name,
            description=h.spec.description,
            choices=tuple(ChoiceRecord(c, json_value(v)) for c, v in zip(h.spec.choices, h.spec.values, strict=True)),
            default=h.spec.default,
            ops=_op_names(h.spec.ops),
            condition=(
                None if h.spec.condition is None else ConditionRecord(h.spec.condition.head, h.spec.condition.choices)
            ),
        )
        for h in reg.space.heads
        if h.lever == info.name
    )
    fields = tuple(
        FieldRecord(f.spec.name, f.key, f.spec.observed, f.spec.description) for f in reg.fields if f.lever == info.name
    )
    safety = reg.safety[info.name]
    return LeverRecord(
        name=info.name,
        distribution=info.distribution,
        version=info.version,
        entry_point=info.entry_point,
        heads=heads,
        telemetry=fields,
        compile_safety=SafetyRecord(safety.level.value, safety.reason, "compile_safety" in hooks),
        hooks=hooks,
        requires=info.requires,
        conflicts_with=info.conflicts_with,
    )


def failure_record(fail: LoadFailure) -> FailureRecord:
    return FailureRecord(fail.name, fail.distribution, fail.version, fail.entry_point, fail.error)


def levers_report(reg: Registry, names: Sequence[str] | None = None, failures: bool = True) -> LeversReport:
    """The report for the active levers (or just ``names``), in lever order."""
    chosen = [lv for lv in reg.levers if names is None or lv.name in names]
    return LeversReport(
        schema=LEVERS_SCHEMA,
        levers=tuple(lever_record(reg, lv) for lv in chosen),
        failures=tuple(failure_record(f) for f in reg.failures) if failures else (),
    )


# -- human rendering ---------------------------------------------------------


def _dash(items: Sequence[str]) -> str:
    return ", ".join(items) if items else "-"


def _head_text(head: HeadRecord) -> Text:
    text = Text()
    text.append(head.name, style="bold")
    text.append(": ")
    text.append("  ".join(f"{c.name}={c.value}" for c in head.choices))
    ops = "all ops" if len(head.ops) == len(Op) else "ops " + ", ".join(head.ops)
    text.append(f"\n  default {head.default}; {ops}", style="dim")
    if head.condition is not None:
        text.append(f"; only if {head.condition.head} in {{{', '.join(head.condition.choices)}}}", style="dim")
    if head.description:
        text.append(f"\n  {head.description}", style="italic")
    return text


def _field_text(field: FieldRecord) -> Text:
    text = Text(field.key, style="bold")
    if field.observed:
        text.append(" (observed)", style="green")
    if field.description:
        text.append(f" - {field.description}")
    return text


def lever_panel(lever: LeverRecord) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="cyan", no_wrap=True)
    grid.add_column()
    grid.add_row("entry point", Text(lever.entry_point))
    grid.add_row("hooks", Text(_dash(lever.hooks)))
    safety = Text(lever.compile_safety.level, style="bold")
    if lever.compile_safety.reason:
        safety.append(f" - {lever.compile_safety.reason}")
    grid.add_row("compile safety", safety)
    for i, head in enumerate(lever.heads):
        grid.add_row("heads" if i == 0 else "", _head_text(head))
    if not lever.heads:
        grid.add_row("heads", Text("-"))
    for i, field in enumerate(lever.telemetry):
        grid.add_row("telemetry" if i == 0 else "", _field_text(field))
    if not lever.telemetry:
        grid.add_row("telemetry", Text("-"))
    grid.add_row("requires", Text(_dash(lever.requires)))
    grid.add_row("conflicts with", Text(_dash(lever.conflicts_with)))
    title = Text.assemble((lever.name, "bold"), f"  {lever.distribution} {lever.version}")
    return Panel(grid, title=title, title_align="left")


def failures_panel(failures: Sequence[FailureRecord]) -> Panel:
    # One block per failure rather than a table: the error text is long and
    # would be folded into an unreadable column on an 80-column terminal.
    grid = Table.grid(padding=(0, 2))
    grid.add_column()
    for f in failures:
        line = Text.assemble((f.name, "bold"), f"  {f.distribution} {f.version}  entry point {f.entry_point}")
        grid.add_row(line)
        grid.add_row(Text(f"  {f.error}", style="red"))
    return Panel(grid, title=Text("failed to load", style="bold red"), title_align="left", border_style="red")


def render(report: LeversReport, selection: Selection) -> Group:
    parts: list[Any] = [lever_panel(lv) for lv in report.levers]
    if not report.levers:
        from esper_kernel.registry import ENV_NO_AUTOLOAD

        hint = ""
        if not selection.autoload and selection.only is None:
            hint = f" ({ENV_NO_AUTOLOAD} is set: name levers with --levers or ESPER_LEVERS)"
        parts.append(Text(f"No levers active{hint}."))
    if report.failures:
        parts.append(failures_panel(report.failures))
    return Group(*parts)


def _emit(report: LeversReport, selection: Selection, as_json: bool) -> None:
    if as_json:
        click.echo(report.to_json())
    else:
        Console().print(render(report, selection))


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
        except RuntimeError as exc:
            # torch reports a failed allocation as a RuntimeError; anything else is a bug worth its traceback.
            if "allocate" not in str(exc) and "out of memory" not in str(exc):
                raise
            click.echo(f"esper: error: out of memory ({' '.join(str(exc).split())[:200]})", err=True)
            ctx.exit(2)


@click.group(cls=EsperGroup)
@click.version_option(package_name="esper-kernel", prog_name="esper")
def main() -> None:
    """Esper: grow neural networks while they train, steered by pluggable levers."""


@main.group()
def levers() -> None:
    """Inspect the installed lever plugins."""


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
def list_levers(as_json: bool, only: str | None) -> None:
    """List active levers and load failures.

    For each lever: its distribution, entry point, heads, telemetry fields,
    compile safety, hooks and relations to other levers.
    """
    from esper_kernel.registry import Registry, Selection

    selection = Selection.from_env(levers=only)
    # The listing is how a user finds what is broken, so it always lists; strict mode then fails it.
    reg = Registry.open(default_core(), selection, listing=True)
    _emit(levers_report(reg), selection, as_json)
    _strict_failures(reg, selection)


def _strict_failures(reg: Registry, selection: Selection) -> None:
    from esper_kernel.registry import ENV_STRICT

    if selection.strict and reg.failures:
        names = ", ".join(f"{f.name!r} ({f.distribution})" for f in reg.failures)
        raise PluginError(f"{len(reg.failures)} lever(s) failed to load: {names} ({ENV_STRICT}=1)")


@levers.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
def show_lever(name: str, as_json: bool) -> None:
    """Show one active lever in full."""
    from esper_kernel.registry import Registry, Selection

    selection = Selection.from_env()
    reg = Registry.open(default_core(), selection, listing=True)
    if name not in reg.names:
        failed = next((f for f in reg.failures if f.name == name), None)
        if failed is not None:
            report = LeversReport(schema=LEVERS_SCHEMA, levers=(), failures=(failure_record(failed),))
            if as_json:
                click.echo(report.to_json())
            else:
                Console().print(failures_panel(report.failures))
            _strict_failures(reg, selection)
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
    from esper_kernel.registry import kernel_version
    from esper_kernel.scaffold import scaffold

    root = scaffold(name, parent, kernel_version())
    click.echo(f"created {root}; next: pip install -e {root} && pytest {root / 'tests'}")


# -- options every training command shares ---------------------------------------

threads_option = click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=None,
    help="Torch intra-op threads per process (default: OMP_NUM_THREADS if set, else 1; 0: torch's own choice).",
)


device_option = click.option(
    "--device",
    type=click.Choice(["cpu", "cuda", "auto"]),
    default=None,
    help="Where the host, batches and accumulators live (default cpu; auto: CUDA when present).",
)
amp_option = click.option(
    "--amp", is_flag=True, default=None, help="bf16 autocast for the host's forward pass (fastest on a GPU)."
)


def _setup_threads(threads: int | None) -> int:
    from esper_kernel.workers import configure_threads

    return configure_threads(threads)


# -- esper run ----------------------------------------------------------------


@main.command("run")
@click.option("--task", default=None, help="Task: pairs (default, the growth task), shapes, sequences, cifar10, text.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=True), help="Directory for cifar10 / text data.")
@click.option("--policy", default=None, help="heuristic (default), random, or a policy file from `esper train`.")
@click.option("--levers", default=None, metavar="A,B", help="Levers to activate (default: every installed one).")
@click.option("--epochs", type=int, default=None, help="Host epochs in the episode (default 40).")
@click.option("--slots", type=int, default=None, help="Seed slots in the host (default 3).")
@click.option("--width", type=int, default=None, help="CNN host width (default: the task's own, pairs 8).")
@click.option("--seed", type=int, default=None, help="Random seed (default 0).")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Output directory (default runs/latest).")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False), help="TOML run config.")
@click.option("--resume", default=None, type=click.Path(file_okay=False), help="Continue the run in this directory.")
@click.option("--compile", "compile_", is_flag=True, default=None, help="Run the host under torch.compile.")
@click.option("--allow-graph-breaks", is_flag=True, default=None, help="With --compile, allow BREAKS_GRAPH levers.")
@click.option("--overwrite", is_flag=True, help="Replace the run already in --out (refused otherwise).")
@click.option(
    "--on-lever-error",
    type=click.Choice(["stop", "quarantine"]),
    default=None,
    help="A lever failing at run time stops the run (default), or is quarantined: its heads frozen at their "
    "defaults, its hooks skipped, the run goes on.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@threads_option
@device_option
@amp_option
@click.option(
    "--tensorboard",
    "tensorboard_dir",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Also stream scalars to a TensorBoard log in this directory (needs the tensorboard extra).",
)
def run_command(
    task: str | None,
    data_dir: str | None,
    policy: str | None,
    levers: str | None,
    epochs: int | None,
    slots: int | None,
    width: int | None,
    seed: int | None,
    out: str | None,
    config_file: str | None,
    resume: str | None,
    compile_: bool | None,
    allow_graph_breaks: bool | None,
    overwrite: bool,
    on_lever_error: str | None,
    quiet: bool,
    threads: int | None,
    device: str | None,
    amp: bool | None,
    tensorboard_dir: Path | None,
) -> None:
    """Train a host on a task with every active lever on and Tamiyo deciding.

    Writes OUT/events.jsonl, OUT/summary.json and OUT/checkpoint.pt;
    `esper report OUT` draws them. An OUT that already holds a run is refused
    unless --overwrite (or --resume OUT).
    """
    _setup_threads(threads)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from esper_kernel.config import RunConfig, load_config, with_overrides
    from esper_kernel.devices import resolve_device
    from esper_kernel.report.console import run_summary
    from esper_kernel.run import EpochReport, run

    if resume is not None:
        # A resumed run is the run in its checkpoint; a flag that changes it would be silently ignored.
        given = {
            "--task": task,
            "--data-dir": data_dir,
            "--policy": policy,
            "--levers": levers,
            "--epochs": epochs,
            "--slots": slots,
            "--width": width,
            "--seed": seed,
            "--out": out,
            "--config": config_file,
            "--compile": compile_,
            "--allow-graph-breaks": allow_graph_breaks,
            "--on-lever-error": on_lever_error,
            "--overwrite": overwrite or None,
        }
        extra = [flag for flag, value in given.items() if value is not None]
        if extra:
            raise click.UsageError(
                f"--resume continues the run as its checkpoint configured it; drop {', '.join(extra)}"
            )
    base = load_config(Path(config_file)) if config_file else RunConfig()
    config = with_overrides(
        base,
        policy=policy,
        levers=tuple(x for x in levers.split(",") if x) if levers is not None else None,
        seed=seed,
        out=out,
        allow_graph_breaks=allow_graph_breaks,
        env__task=task,
        env__data_dir=data_dir,
        env__epochs=epochs,
        env__slots=slots,
        env__width=width,
        env__compile=compile_,
        env__device=device,
        env__amp=amp,
        on_lever_error=on_lever_error,
    )
    resolve_device(config.env.device)  # no CUDA where CUDA is asked for: one line before anything is written
    console = Console(stderr=True)
    columns = (
        TextColumn("[bold]esper run"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    progress = Progress(*columns, console=console, disable=quiet, transient=False)
    bar = progress.add_task("epochs", total=config.env.epochs, status="", start=False)

    def on_start(epochs: int, first: int) -> None:
        progress.update(bar, total=epochs, completed=first)
        progress.start_task(bar)
        progress.start()

    def on_epoch(r: EpochReport) -> None:
        status = f"val acc {r.val_accuracy:.3f}  slots {' '.join(s.lower() for s in r.stages)}"
        progress.update(bar, completed=r.epoch, total=r.epochs, status=status)

    def on_warning(line: str) -> None:
        progress.console.print(f"[yellow]esper:[/] {line}", highlight=False, markup=True)

    def on_failures(failures: Sequence[LoadFailure]) -> None:
        console.print(failures_panel([failure_record(f) for f in failures]))
        console.print("[yellow]the run goes on without them[/] (ESPER_STRICT_PLUGINS=1 makes this an error)")

    sinks = _tensorboard_sinks(tensorboard_dir)
    try:
        summary = run(
            config,
            resume=Path(resume) if resume else None,
            overwrite=overwrite,
            on_epoch=on_epoch,
            on_start=on_start,
            on_warning=on_warning,
            on_failures=on_failures,
            sinks=sinks,
        )
    finally:
        progress.stop()
        for sink in sinks:
            sink.close()
    console.print(run_summary(summary))
    if tensorboard_dir is not None:
        console.print(f"TensorBoard: tensorboard --logdir {tensorboard_dir}")


def _tensorboard_sinks(logdir: Path | None) -> list[Any]:
    if logdir is None:
        return []
    from esper_kernel.tensorboard import TensorBoardSink

    return [TensorBoardSink(logdir)]


# -- esper train -------------------------------------------------------------


@main.command("train")
@click.option(
    "--episodes", type=click.IntRange(min=1), default=None, help="Episodes in all, over all envs (default 32)."
)
@click.option("--envs", "n_envs", type=click.IntRange(min=1), default=None, help="Envs per rollout (default 4).")
@click.option("--task", default=None, help="Task the hosts train on (default pairs).")
@click.option("--levers", "only", metavar="A,B", default=None, help="Load only these levers (overrides ESPER_LEVERS).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs (steps) per episode (default 40).")
@click.option("--slots", type=click.IntRange(min=2), default=None, help="Seed slots per host (default 3).")
@click.option("--seed", type=int, default=None, help="Random seed (default 0).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Writes policy.pt, best_policy.pt, train_state.pt, events.jsonl and train_summary.json (default runs/train).",
)
@click.option("--train-size", type=click.IntRange(min=1), default=None, help="Training examples (default 1024).")
@click.option("--val-size", type=click.IntRange(min=1), default=None, help="Validation examples (default 512).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Host batch size (default 64).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Data for tasks that read files.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="PPO lr (default 3e-3).")
@click.option("--hidden", type=click.IntRange(min=1), default=None, help="Policy MLP width (default 64).")
@click.option(
    "--update-epochs", type=click.IntRange(min=1), default=None, help="PPO passes over each rollout (default 10)."
)
@click.option("--minibatch-size", type=click.IntRange(min=1), default=None, help="PPO minibatch rows (default 8).")
@click.option("--entropy-coef", type=click.FloatRange(min=0), default=None, help="Entropy weight (default 0.003).")
@click.option(
    "--group-size",
    type=click.IntRange(min=1),
    default=None,
    help="Envs per rollout sharing one episode seed, each learning relative to the others (default 4; 1: off).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Env worker processes, one intra-op thread each (default 0: one per usable core; 1: in this process).",
)
@click.option(
    "--eval-every",
    type=click.IntRange(min=0),
    default=None,
    help="Evaluate on the held-out seeds every N updates and after the last, keeping best_policy.pt (default 5).",
)
@click.option("--eval-seeds", metavar="A,B", default=None, help="Held-out episode seeds to evaluate on (default 0,1).")
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
@threads_option
@device_option
@amp_option
@click.option(
    "--tensorboard",
    "tensorboard_dir",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Also stream scalars to a TensorBoard log in this directory (needs the tensorboard extra).",
)
def train(
    episodes: int | None,
    n_envs: int | None,
    task: str | None,
    only: str | None,
    epochs: int | None,
    slots: int | None,
    seed: int | None,
    out_dir: str | None,
    train_size: int | None,
    val_size: int | None,
    batch_size: int | None,
    data_dir: str | None,
    lr: float | None,
    hidden: int | None,
    update_epochs: int | None,
    minibatch_size: int | None,
    entropy_coef: float | None,
    group_size: int | None,
    workers: int | None,
    eval_every: int | None,
    eval_seeds: str | None,
    config_file: str | None,
    resume: str | None,
    ray_address: str | None,
    threads: int | None,
    device: str | None,
    amp: bool | None,
    tensorboard_dir: Path | None,
) -> None:
    """Train Tamiyo with PPO against the active levers.

    Writes OUT/policy.pt (for ``esper run --policy``), OUT/best_policy.pt (best
    held-out return), OUT/train_state.pt (for --resume), OUT/events.jsonl and
    OUT/train_summary.json. Small --epochs/--train-size/--val-size make a
    quick run. Flags override a --config file's values.
    """
    # Imported here so ``esper levers`` does not pay for the training stack.
    import time
    import uuid

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from esper_kernel.config import load_config_as, structure_as, unstructure_config, with_overrides
    from esper_kernel.devices import resolve_device
    from esper_kernel.registry import Registry, Selection
    from esper_kernel.run import head_choices, lever_records
    from esper_kernel.tamiyo.train import STATE_FILE, TrainConfig, TrainOptions, load_train_state, train_ppo
    from esper_kernel.tasks import TASKS, TaskError
    from esper_kernel.telemetry import Telemetry
    from esper_kernel.workers import usable_cores

    _setup_threads(threads)
    seeds_list: list[int] | None = None
    if eval_seeds is not None:
        try:
            seeds_list = [int(x) for x in eval_seeds.split(",") if x.strip()]
        except ValueError:
            raise click.BadParameter(
                f"expected whole numbers like 0,1,2, got {eval_seeds!r}", param_hint="--eval-seeds"
            ) from None
    state = None
    if resume is not None:
        state = load_train_state(Path(resume) / STATE_FILE)
        config = structure_as(state["meta"]["config"], TrainConfig, where=f"{Path(resume) / STATE_FILE} config")
        given = [
            name
            for name, value in (
                ("--config", config_file),
                ("--levers", only),
                ("--episodes", episodes),
                ("--seed", seed),
            )
            if value is not None
        ]
        if given:
            raise click.UsageError(f"--resume continues a run with its own settings; drop {', '.join(given)}")
        config = with_overrides(config, out=resume, workers=workers)
        run_id = str(state["meta"]["run_id"])
    else:
        base = load_config_as(Path(config_file), TrainConfig) if config_file else TrainConfig()
        config = with_overrides(
            base,
            levers=tuple(x for x in only.split(",") if x) if only is not None else None,
            out=out_dir,
            workers=workers,
            eval_every=eval_every,
            eval_seeds=seeds_list,
            env__task=task,
            env__data_dir=data_dir,
            env__epochs=epochs,
            env__slots=slots,
            env__batch_size=batch_size,
            env__train_size=train_size,
            env__val_size=val_size,
            env__device=device,
            env__amp=amp,
            ppo__episodes=episodes,
            ppo__n_envs=n_envs,
            ppo__lr=lr,
            ppo__hidden=hidden,
            ppo__seed=seed,
            ppo__update_epochs=update_epochs,
            ppo__minibatch_size=minibatch_size,
            ppo__entropy_coef=entropy_coef,
            ppo__group_size=group_size,
        )
        run_id = f"train-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    env_config, ppo_config = config.env, config.ppo
    resolve_device(env_config.device)  # no CUDA where CUDA is asked for: one line before anything is written
    if env_config.task not in TASKS:
        raise click.BadParameter(
            f"unknown task {env_config.task!r}; known tasks: {', '.join(sorted(TASKS))}", param_hint="--task"
        )
    from esper_kernel.bounds import env_problems, finite_problems

    problems = env_problems(env_config, prefix="--") + finite_problems(
        **{"--lr": ppo_config.lr, "--entropy-coef": ppo_config.entropy_coef}
    )
    if only is not None and not any(x.strip() for x in only.split(",")):
        problems.append("--levers: names no lever; leave it out for every installed lever")
    if problems:
        raise click.UsageError("; ".join(p.replace("_", "-") for p in problems))
    selection = Selection.from_env(levers=config.levers)
    reg = Registry.open(default_core(env_config.topology, env_config.slots), selection)
    if state is not None and list(state["levers"]) != list(reg.names):
        raise click.UsageError(
            f"{resume} was trained with levers {', '.join(state['levers'])}; active now: {', '.join(reg.names)}"
        )
    n_workers = config.workers or usable_cores()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    policy_path = out / "policy.pt"
    options = TrainOptions(
        workers=n_workers,
        selection=selection,
        eval_every=config.eval_every,
        eval_seeds=config.eval_seeds,
        resume=out / STATE_FILE if state is not None else None,
        ray=ray_address,
        meta={"config": unstructure_config(config), "run_id": run_id},
    )
    # The progress bar owns the terminal; the full event stream goes to the file.
    sinks = _tensorboard_sinks(tensorboard_dir)
    with Telemetry(out / "events.jsonl", run_id, console=False, append=state is not None, sinks=sinks) as tel:
        tel.log.info(
            "run.started",
            command="train",
            config=unstructure_config(config),
            env_config=attrs.asdict(env_config),
            ppo_config=attrs.asdict(ppo_config),
            levers=lever_records(reg),
            failed_levers=[attrs.asdict(f) for f in reg.failures],
            head_choices=head_choices(reg),
            out=str(out),
            workers=n_workers,
            ray=ray_address,
            resumed=state is not None,
        )
        for failure in reg.failures:
            tel.log.warning("plugin.failed", **attrs.asdict(failure))
        console = Console(stderr=True)
        for fail in reg.failures:
            console.print(f"[yellow]warning:[/] {fail.describe()}")
        columns = (
            TextColumn("[bold]training Tamiyo"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("episodes  mean return {task.fields[ret]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=False) as bar:
            job = bar.add_task("train", total=ppo_config.episodes, ret="-")

            def advance(done: int, _total: int, mean_return: float) -> None:
                bar.update(job, completed=done, ret=f"{mean_return:+.3f}")

            try:
                summary = train_ppo(env_config, reg, ppo_config, tel.log, policy_path, advance, options)
            except TaskError as exc:
                raise click.UsageError(str(exc)) from exc
        rets = summary.episode_returns
        tel.log.info(
            "run.finished",
            episodes=summary.episodes,
            updates=summary.updates,
            seconds=summary.seconds,
            mean_return=sum(rets) / len(rets),
            policy=str(policy_path),
            best_eval_return=summary.best_eval_return,
        )
    record = {
        "run_id": run_id,
        "env_config": attrs.asdict(env_config),
        "ppo_config": attrs.asdict(ppo_config),
        "levers": [lv.name for lv in reg.levers],
        "workers": n_workers,
        **summary.to_dict(),
    }
    from esper_kernel.files import write_text_atomic

    write_text_atomic(out / "train_summary.json", json.dumps(record, indent=2) + "\n")
    console.print(f"trained {summary.episodes} episodes in {summary.seconds:.1f}s; policy saved to {policy_path}")
    console.print(f"learning curves and what emerged: [bold green]esper report {out}[/]")


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
@click.option("--task", default=None, help="Task (default: the env default).")
@click.option("--data-dir", default=None, type=click.Path(), help="Directory for cifar10 / text data.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Host epochs per episode.")
@click.option("--train-size", type=click.IntRange(min=1), default=None, help="Training examples.")
@click.option("--val-size", type=click.IntRange(min=1), default=None, help="Validation examples.")
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
@click.option("--out", default="runs/sweep", show_default=True, type=click.Path(file_okay=False))
@threads_option
@device_option
def sweep_command(
    lever_sets: tuple[str, ...],
    policies: str,
    forces: tuple[str, ...],
    seeds: str,
    task: str | None,
    data_dir: str | None,
    epochs: int | None,
    train_size: int | None,
    val_size: int | None,
    config_file: str | None,
    workers: int | None,
    ray_address: str | None,
    out: str,
    threads: int | None,
    device: str | None,
) -> None:
    """A grid of eval cells (lever sets x forced choices x policies x seeds), one table at the end.

    Each trial is one eval cell played on one seed and gets its own directory
    (OUT/trials/CELL/seed-N/trial.json). Every cell is paired with its lever
    set's `wait` control; OUT/sweep.json (schema esper.eval/1) and OUT/sweep.md
    hold the table `esper eval` prints.
    """
    from esper_kernel import evaluate as ev
    from esper_kernel.config import RunConfig, load_config, with_overrides
    from esper_kernel.devices import resolve_device
    from esper_kernel.sweep import build_grid, parse_lever_set
    from esper_kernel.sweep import sweep as run_sweep
    from esper_kernel.workers import usable_cores

    _setup_threads(threads)
    base = load_config(Path(config_file)) if config_file else RunConfig()
    config = with_overrides(
        base,
        env__task=task,
        env__data_dir=data_dir,
        env__epochs=epochs,
        env__train_size=train_size,
        env__val_size=val_size,
        env__device=device,
    )
    resolve_device(config.env.device)
    sets = [parse_lever_set(s) for s in lever_sets] or [config.levers]
    cells = build_grid(sets, [p.strip() for p in policies.split(",") if p.strip()], forces)
    seed_list = ev.parse_seeds(seeds)
    n_workers = workers or usable_cores()
    console = Console(stderr=True)
    engine = "Ray Tune" if ray_address is not None else f"{n_workers} worker process(es)"
    console.print(
        f"esper sweep: {len(cells)} cells x {len(seed_list)} seeds = {len(cells) * len(seed_list)} trials "
        f"on {config.env.task} ({config.env.epochs} epochs), {engine}"
    )

    def on_done(name: str, r: ev.EpisodeResult) -> None:
        console.print(f"  {name} seed {r.seed}: acc {r.final_val_accuracy:.3f} params {r.params:,}")

    doc = run_sweep(config.env, cells, seed_list, Path(out), workers=n_workers, ray=ray_address, on_done=on_done)
    click.echo(ev.render_markdown(doc))
    console.print(f"wrote {out}/sweep.json, {out}/sweep.md and {doc['sweep']['trials']} trial directories")


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
        Console().print(render(comp))
        if plot is not None:
            click.echo(f"wrote {plot}")


# -- esper eval --------------------------------------------------------------


@main.command("eval")
@click.option(
    "--policies",
    default="heuristic,random,wait",
    show_default=True,
    metavar="P,Q",
    help="Policies: heuristic, random, wait, static[:N], a policy file; HEAD=CHOICE forces a head "
    "(heuristic+tempo=GLACIAL).",
)
@click.option("--force", "forces", multiple=True, metavar="HEAD=CHOICE", help="Force a head in every policy.")
@click.option("--seeds", default="0-9", show_default=True, help="Seeds, paired across policies: 0-9 or 1,4,7.")
@click.option("--reference", default="wait", show_default=True, help="The policy every other is paired against.")
@click.option("--effects", is_flag=True, help="Add the heuristic with each lever head forced to each extreme choice.")
@click.option("--task", default=None, help="Task (default: pairs, the growth task).")
@click.option("--data-dir", default=None, type=click.Path(), help="Directory for cifar10 / text data.")
@click.option("--levers", default=None, metavar="A,B", help="Levers to activate (default: every installed one).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Host epochs per episode.")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False), help="TOML run config.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes (default: usable cores).")
@click.option("--out", default="runs/eval", show_default=True, type=click.Path(file_okay=False))
@threads_option
@device_option
@amp_option
def eval_command(
    policies: str,
    forces: tuple[str, ...],
    seeds: str,
    reference: str,
    effects: bool,
    task: str | None,
    data_dir: str | None,
    levers: str | None,
    epochs: int | None,
    config_file: str | None,
    workers: int | None,
    out: str,
    threads: int | None,
    device: str | None,
    amp: bool | None,
) -> None:
    """Run several policies on the same seeds, paired, and write OUT/eval.json and OUT/eval.md.

    Each finished episode is appended to OUT/episodes.jsonl at once; running
    the same command again plays only the episodes still missing.

    Every policy is compared seed by seed with the reference (the no-growth
    `wait` control by default): mean difference and 95% confidence interval
    of final accuracy, return and parameters. Schema in docs/eval.md.
    """
    _setup_threads(threads)
    from esper_kernel import evaluate as ev
    from esper_kernel.config import RunConfig, load_config, with_overrides
    from esper_kernel.devices import resolve_device

    base = load_config(Path(config_file)) if config_file else RunConfig()
    config = with_overrides(
        base,
        levers=tuple(x for x in levers.split(",") if x) if levers is not None else None,
        env__task=task,
        env__data_dir=data_dir,
        env__epochs=epochs,
        env__device=device,
        env__amp=amp,
    )
    resolve_device(config.env.device)
    forced = [ev.parse_force(f) for f in forces]
    specs = [ev.parse_policy(p, forced) for p in policies.split(",") if p.strip()]
    if effects:
        specs += [s for s in _effect_specs(config) if s.name not in {x.name for x in specs}]
    seed_list = ev.parse_seeds(seeds)
    from esper_kernel.workers import usable_cores

    n_workers = workers or usable_cores()
    console = Console(stderr=True)
    console.print(
        f"esper eval: {len(specs)} policies x {len(seed_list)} seeds on {config.env.task} "
        f"({config.env.epochs} epochs), {n_workers} worker(s)"
    )

    def on_done(name: str, r: ev.EpisodeResult) -> None:
        console.print(f"  {name} seed {r.seed}: acc {r.final_val_accuracy:.3f} params {r.params:,} ({r.wall_seconds}s)")

    doc = ev.evaluate(
        config.env,
        specs,
        seed_list,
        levers=config.levers,
        reference=reference,
        workers=n_workers,
        on_done=on_done,
        journal=Path(out) / "episodes.jsonl",
    )
    paths = ev.write_outputs(doc, Path(out), effects=effects)
    click.echo(ev.render_markdown(doc))
    if effects:
        click.echo(ev.render_effects(doc))
    console.print(f"wrote {', '.join(map(str, paths))} in {doc['wall_seconds']} s")


def _effect_specs(config: Any) -> list[Any]:
    """``heuristic``, and ``heuristic`` with each lever head forced to its first and its last choice."""
    from esper_kernel.env import build_registry
    from esper_kernel.evaluate import PolicySpec
    from esper_kernel.lifecycle import CORE_HEADS
    from esper_kernel.registry import Selection

    reg = build_registry(config.env, Selection.from_env(levers=config.levers))
    specs = [PolicySpec("heuristic")]
    for name in reg.space.names:
        if name in CORE_HEADS:
            continue
        choices = reg.space.head(name).spec.choices
        specs += [PolicySpec("heuristic", ((name, c),)) for c in (choices[0], choices[-1])]
    return specs


if __name__ == "__main__":
    main()
