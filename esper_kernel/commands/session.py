"""The session layer ``esper run``, ``train``, ``eval`` and ``sweep`` share.

A command here is its flags (one attrs class each, named as the click
options are), a config read the one way (a TOML file, then the flags given
on top of it), the work itself (:func:`esper_kernel.commands.run.run`,
:func:`~esper_kernel.tamiyo.train.train_ppo`, :func:`~esper_kernel.commands.evaluate.evaluate`,
:func:`~esper_kernel.commands.sweep.sweep`), its ``run.*`` events and its summary,
written through :mod:`esper_kernel.infra.files`. ``cli.py`` only declares flags
and hands them here.

This is the kernel's top layer: only the CLI imports it. Heavy imports stay
inside functions so ``esper --help`` does not pay for torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import attrs
import click
from rich.console import Console

if TYPE_CHECKING:
    from esper_kernel.commands.evaluate import EpisodeResult, PolicySpec
    from esper_kernel.commands.run import EpochReport
    from esper_kernel.compose.discovery import LoadFailure, Selection
    from esper_kernel.compose.registry import Registry
    from esper_kernel.tamiyo.train import TrainConfig, TrainSummary

C = TypeVar("C")
FlagsT = TypeVar("FlagsT", bound="Flags")


@attrs.frozen
class Flags:
    """A command's own flags (the subclass's fields) and the settings given on its command line.

    The settings are declared once on the config classes (:mod:`esper_kernel.settings.declare`); here they are
    only what the user typed, as ``with_overrides`` keys, and the flags a resumed run must refuse.
    """

    #: Settings given, as ``with_overrides`` keys: ``{"env__epochs": 4}``.
    given: dict[str, Any] = attrs.field(factory=dict, kw_only=True)
    #: The flags given that would change what a resumed run computes.
    changes: tuple[str, ...] = attrs.field(default=(), kw_only=True)

    #: Which command's settings these flags carry.
    COMMAND: ClassVar[str] = ""

    @classmethod
    def split(cls: type[FlagsT], flags: Mapping[str, Any]) -> FlagsT:
        """click's keyword arguments, split into this command's own flags and its settings."""
        from esper_kernel.settings.config import command_settings
        from esper_kernel.settings.declare import given_flags, overrides

        declared = command_settings(cls.COMMAND)
        own = {a.name: flags[a.name] for a in attrs.fields(cls) if a.name in flags}
        return cls(**own, given=overrides(flags, declared), changes=tuple(given_flags(flags, declared)))


# -- what every command shares ------------------------------------------------------------


def setup_threads(threads: int | None) -> int:
    """Torch intra-op threads for this process, as ``--threads`` means everywhere."""
    from esper_kernel.infra.workers import configure_threads

    return configure_threads(threads)


def load_config(cls: type[C], path: str | None, **overrides: Any) -> C:
    """A config of ``cls``: the TOML file at ``path`` (else the defaults), then the flags given (not None)."""
    from esper_kernel.settings.config import load_config_as, with_overrides

    base = load_config_as(Path(path), cls) if path else cls()
    return with_overrides(base, **overrides)


def check_device(device: str) -> None:
    """No CUDA where CUDA is asked for: one line before anything is written."""
    from esper_kernel.infra.devices import resolve_device

    resolve_device(device)


def refuse_with_resume(reason: str, changes: Sequence[str], more: Mapping[str, object] | None = None) -> None:
    """A resumed run is the run it saved: a flag that would change it is refused, not ignored."""
    extra = [*changes, *(flag for flag, value in (more or {}).items() if value is not None)]
    if extra:
        raise click.UsageError(f"{reason}; drop {', '.join(extra)}")


def tensorboard_sinks(logdir: Path | None) -> list[Any]:
    if logdir is None:
        return []
    from esper_kernel.infra.tensorboard import TensorBoardSink

    return [TensorBoardSink(logdir)]


def write_json(path: Path, record: Mapping[str, Any]) -> Path:
    """A summary or record, indented, through the one atomic write."""
    from esper_kernel.infra.files import write_text_atomic

    return write_text_atomic(path, json.dumps(record, indent=2) + "\n")


def stderr() -> Console:
    return Console(stderr=True)


# -- esper run -----------------------------------------------------------------------------


@attrs.frozen
class RunFlags(Flags):
    """``esper run``'s own flags; its settings are in ``given``."""

    COMMAND: ClassVar[str] = "run"

    config_file: str | None = None
    resume: str | None = None
    overwrite: bool = False
    quiet: bool = False
    threads: int | None = None
    tensorboard_dir: Path | None = None


def run_config(f: RunFlags) -> Any:
    """The :class:`~esper_kernel.settings.config.RunConfig` the flags ask for (a resumed run takes its checkpoint's)."""
    from esper_kernel.settings.config import RunConfig

    if f.resume is not None:
        extra = {"--config": f.config_file, "--overwrite": f.overwrite or None}
        refuse_with_resume("--resume continues the run as its checkpoint configured it", f.changes, extra)
    config = load_config(RunConfig, f.config_file, **f.given)
    check_device(config.env.device)
    return config


def _policy_epochs(f: RunFlags, config: Any) -> int | None:
    """The episode length a learned policy was trained on, where neither --epochs nor the config file chose one.

    The policy reads the epoch as a fraction of its episode, so it plays the
    length it learned on best; the default task's own length is a heuristic's.
    """
    import tomllib

    from esper_kernel.tamiyo.catalogue import learned_policy_file
    from esper_kernel.tamiyo.ppo import PolicyLoadError, stamped_epochs

    path = learned_policy_file(str(config.policy), config.env.task)
    if "env__epochs" in f.given or path is None:
        return None
    if f.config_file is not None:
        table = tomllib.loads(Path(f.config_file).read_text(encoding="utf-8")).get("env", {})
        if "epochs" in table:
            return None
    try:
        return stamped_epochs(path) if path.is_file() else None
    except PolicyLoadError as exc:
        raise PolicyLoadError(f"--policy {config.policy}: {exc}") from exc


class RunProgress:
    """``esper run``'s progress bar on stderr, and the callbacks :func:`~esper_kernel.commands.run.run` reports to."""

    def __init__(self, console: Console, epochs: int, quiet: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = (
            TextColumn("[bold]esper run"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
        )
        self.console = console
        self.progress = Progress(*columns, console=console, disable=quiet, transient=False)
        self.bar = self.progress.add_task("epochs", total=epochs, status="", start=False)

    def on_start(self, epochs: int, first: int) -> None:
        self.progress.update(self.bar, total=epochs, completed=first)
        self.progress.start_task(self.bar)
        self.progress.start()

    def on_epoch(self, r: EpochReport) -> None:
        status = f"val acc {r.val_accuracy:.3f}  slots {' '.join(s.lower() for s in r.stages)}"
        self.progress.update(self.bar, completed=r.epoch, total=r.epochs, status=status)

    def on_warning(self, line: str) -> None:
        self.progress.console.print(f"[yellow]esper:[/] {line}", highlight=False, markup=True)

    def on_failures(self, failures: Sequence[LoadFailure]) -> None:
        from esper_kernel.report.levers import failure_record, failures_panel

        self.console.print(failures_panel([failure_record(f) for f in failures]))
        self.console.print("[yellow]the run goes on without them[/] (ESPER_STRICT_PLUGINS=1 makes this an error)")


def esper_run(f: RunFlags) -> None:
    """``esper run``: one episode, a progress bar, the explained summary."""
    setup_threads(f.threads)
    from esper_kernel.commands.run import run
    from esper_kernel.report.console import run_summary

    config = run_config(f)
    console = stderr()
    epochs = None if f.resume is not None else _policy_epochs(f, config)
    if epochs is not None:
        config = attrs.evolve(config, env=attrs.evolve(config.env, epochs=epochs))
        if not f.quiet:
            console.print(
                f"esper: {epochs} epochs, the episode length policy {config.policy!r} was trained on "
                "(--epochs to change)"
            )
    shown = RunProgress(console, config.env.epochs, f.quiet)
    sinks = tensorboard_sinks(f.tensorboard_dir)
    try:
        summary = run(
            config,
            resume=Path(f.resume) if f.resume else None,
            overwrite=f.overwrite,
            on_epoch=shown.on_epoch,
            on_start=shown.on_start,
            on_warning=shown.on_warning,
            on_failures=shown.on_failures,
            sinks=sinks,
        )
    finally:
        shown.progress.stop()
        for sink in sinks:
            sink.close()
    console.print(run_summary(summary))
    if f.tensorboard_dir is not None:
        console.print(f"TensorBoard: tensorboard --logdir {f.tensorboard_dir}")


# -- esper train ---------------------------------------------------------------------------


@attrs.frozen
class TrainFlags(Flags):
    """``esper train``'s own flags; its settings are in ``given``."""

    COMMAND: ClassVar[str] = "train"

    config_file: str | None = None
    resume: str | None = None
    ray_address: str | None = None
    threads: int | None = None
    tensorboard_dir: Path | None = None


@attrs.frozen
class TrainSession:
    """What ``esper train`` settled on before training: config, saved state (resuming), run id, levers."""

    config: TrainConfig
    state: dict[str, Any] | None
    run_id: str
    selection: Selection
    registry: Registry

    @property
    def out(self) -> Path:
        return Path(self.config.out)


def _train_problems(config: TrainConfig) -> None:
    """What ranges do not catch, before anything is written."""
    check_device(config.env.device)
    if config.levers is not None and not any(x.strip() for x in config.levers):
        raise click.UsageError("--levers: names no lever; leave it out for every installed lever")


def train_session(f: TrainFlags) -> TrainSession:
    """The config (a resumed run's own, or file + flags), checked, and the levers it trains against."""
    import time
    import uuid

    from esper_kernel.compose.discovery import Selection
    from esper_kernel.episode.env import build_registry
    from esper_kernel.settings.config import structure_as, with_overrides
    from esper_kernel.tamiyo.train import STATE_FILE, TrainConfig, extension_problem, load_train_state

    state = None
    if f.resume is not None:
        state = load_train_state(Path(f.resume) / STATE_FILE)
        where = f"{Path(f.resume) / STATE_FILE} config"
        config = structure_as(state["meta"]["config"], TrainConfig, where=where)
        refuse_with_resume("--resume continues a run with its own settings", f.changes, {"--config": f.config_file})
        # --episodes trains a run further: the result is the longer run's, as if it had been asked for at first.
        more = {k: f.given.get(k) for k in ("workers", "ppo__episodes")}
        config = with_overrides(config, out=f.resume, **more)
        problem = extension_problem(state["ppo_config"], len(state["returns"]), config.ppo.episodes)
        if problem is not None:
            raise click.BadParameter(problem, param_hint="--episodes")
        run_id = str(state["meta"]["run_id"])
    else:
        config = load_config(TrainConfig, f.config_file, **f.given)
        run_id = f"train-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    _train_problems(config)
    selection = Selection.from_env(levers=config.levers)
    reg = build_registry(config.env, selection)
    if state is not None and list(state["levers"]) != list(reg.names):
        raise click.UsageError(
            f"{f.resume} was trained with levers {', '.join(state['levers'])}; active now: {', '.join(reg.names)}"
        )
    return TrainSession(config, state, run_id, selection, reg)


@contextmanager
def train_progress(console: Console, episodes: int, first: int = 0) -> Iterator[Callable[[int, int, float], None]]:
    """A progress bar over episodes from ``first`` (resuming); yields the ``advance(done, total, return)`` calls."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]training Tamiyo"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("episodes  mean return {task.fields[ret]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        job = bar.add_task("train", total=episodes, completed=first, ret="-")

        def advance(done: int, _total: int, mean_return: float) -> None:
            bar.update(job, completed=done, ret=f"{mean_return:+.3f}")

        yield advance


def esper_train(f: TrainFlags) -> None:
    """``esper train``: PPO with a progress bar; events, policies, state and ``train_summary.json`` in OUT."""
    setup_threads(f.threads)
    from esper_kernel.commands.run import log_started, truncate_events
    from esper_kernel.data.tasks import TaskError
    from esper_kernel.infra.telemetry import Telemetry
    from esper_kernel.infra.workers import usable_cores
    from esper_kernel.settings.config import unstructure_config
    from esper_kernel.tamiyo.train import STATE_FILE, TrainOptions, train_ppo

    s = train_session(f)
    config, reg, out = s.config, s.registry, s.out
    n_workers = config.workers or usable_cores()
    out.mkdir(parents=True, exist_ok=True)
    policy_path = out / "policy.pt"
    options = TrainOptions(
        workers=n_workers,
        selection=s.selection,
        eval_every=config.eval_every,
        eval_seeds=config.eval_seeds,
        resume=out / STATE_FILE if s.state is not None else None,
        ray=f.ray_address,
        meta={"config": unstructure_config(config), "run_id": s.run_id},
    )
    # The progress bar owns the terminal; the full event stream goes to the file.
    sinks = tensorboard_sinks(f.tensorboard_dir)
    # A resume first drops what a killed rollout wrote after the state it continues from.
    size = s.state.get("events_bytes") if s.state is not None else None
    superseded = truncate_events(out / "events.jsonl", size) if isinstance(size, int) else 0
    with Telemetry(out / "events.jsonl", s.run_id, console=False, append=s.state is not None, sinks=sinks) as tel:
        options = attrs.evolve(options, events_position=tel.position)
        log_started(
            tel.log,
            reg,
            command="train",
            config=unstructure_config(config),
            env_config=attrs.asdict(config.env),
            ppo_config=attrs.asdict(config.ppo),
            out=str(out),
            workers=n_workers,
            ray=f.ray_address,
            resumed=s.state is not None,
            superseded_events=superseded,
        )
        console = stderr()
        for fail in reg.failures:
            console.print(f"[yellow]warning:[/] {fail.describe()}")
        first = 0 if s.state is None else len(s.state["returns"])
        with train_progress(console, config.ppo.episodes, first) as advance:
            try:
                summary = train_ppo(config.env, reg, config.ppo, tel.log, policy_path, advance, options)
            except TaskError as exc:
                raise click.UsageError(str(exc)) from exc
        _train_finished(tel.log, summary, policy_path)
    _write_train_summary(s, n_workers, summary)
    console.print(f"trained {summary.episodes} episodes in {summary.seconds:.1f}s; policy saved to {policy_path}")
    console.print(f"learning curves and what emerged: [bold green]esper report {out}[/]")


def _train_finished(log: Any, summary: TrainSummary, policy_path: Path) -> None:
    rets = summary.episode_returns
    log.info(
        "run.finished",
        episodes=summary.episodes,
        updates=summary.updates,
        seconds=summary.seconds,
        mean_return=sum(rets) / len(rets),
        policy=str(policy_path),
        best_eval_return=summary.best_eval_return,
    )


def _write_train_summary(s: TrainSession, n_workers: int, summary: TrainSummary) -> None:
    record = {
        "run_id": s.run_id,
        "env_config": attrs.asdict(s.config.env),
        "ppo_config": attrs.asdict(s.config.ppo),
        "levers": [lv.name for lv in s.registry.levers],
        "workers": n_workers,
        **summary.to_dict(),
    }
    write_json(s.out / "train_summary.json", record)


# -- esper eval / esper sweep ------------------------------------------------------------------


@attrs.frozen
class EvalFlags(Flags):
    """``esper eval``'s own flags; its settings are in ``given``."""

    COMMAND: ClassVar[str] = "eval"

    policies: str = "heuristic,random,wait"
    forces: tuple[str, ...] = ()
    seeds: str = "0-9"
    reference: str = "wait"
    effects: bool = False
    out: str = "runs/eval"
    #: A policy spec whose levers to attribute: it, and it with each lever head held at its default.
    attribution: str | None = None
    config_file: str | None = None
    workers: int | None = None
    threads: int | None = None


def _policy_specs(f: EvalFlags, config: Any) -> list[PolicySpec]:
    from esper_kernel.commands import evaluate as ev

    forced = [ev.parse_force(x) for x in f.forces]
    specs = [ev.parse_policy(p, forced) for p in f.policies.split(",") if p.strip()]
    # Checked before anything is printed or played, so a mistyped force is the only line the user sees.
    ev.check_policies(config.env, specs, config.levers)
    ev.check_forces(config.env, forced, specs, config.levers)
    if f.effects:
        specs += [s for s in effect_specs(config) if s.name not in {x.name for x in specs}]
    if f.attribution:
        from esper_kernel.compose.discovery import Selection
        from esper_kernel.episode.env import build_registry

        reg = build_registry(config.env, Selection.from_env(levers=config.levers))
        specs += [s for s in ev.attribution_specs(f.attribution, reg) if s.name not in {x.name for x in specs}]
    return specs


def esper_eval(f: EvalFlags) -> None:
    """``esper eval``: the policies on the same seeds, paired; OUT/eval.json and OUT/eval.md."""
    setup_threads(f.threads)
    from esper_kernel.commands import evaluate as ev
    from esper_kernel.infra.workers import usable_cores
    from esper_kernel.settings.config import RunConfig

    config = load_config(RunConfig, f.config_file, **f.given)
    check_device(config.env.device)
    specs = _policy_specs(f, config)
    seed_list = ev.parse_seeds(f.seeds)
    n_workers = f.workers or usable_cores()
    console = stderr()
    console.print(
        f"esper eval: {len(specs)} policies x {len(seed_list)} seeds on {config.env.task} "
        f"({config.env.epochs} epochs), {n_workers} worker(s)"
    )

    def on_done(name: str, r: EpisodeResult) -> None:
        console.print(f"  {name} seed {r.seed}: acc {r.final_val_accuracy:.3f} params {r.params:,} ({r.wall_seconds}s)")

    doc = ev.evaluate(
        config.env,
        specs,
        seed_list,
        levers=config.levers,
        reference=f.reference,
        workers=n_workers,
        on_done=on_done,
        journal=Path(f.out) / "episodes.jsonl",
    )
    base = ev.parse_policy(f.attribution).name if f.attribution else None
    paths = ev.write_outputs(doc, Path(f.out), effects=f.effects, attribution=base)
    click.echo(ev.render_markdown(doc))
    if f.effects:
        click.echo(ev.render_effects(doc))
    if base is not None:
        click.echo(ev.render_attribution(doc, base))
    console.print(f"wrote {', '.join(map(str, paths))} in {doc['wall_seconds']} s")


def effect_specs(config: Any) -> list[PolicySpec]:
    """``heuristic``, and ``heuristic`` with each lever head forced to its first and its last choice."""
    from esper_kernel.commands.evaluate import PolicySpec
    from esper_kernel.compose.discovery import Selection
    from esper_kernel.compose.names import CORE_HEADS
    from esper_kernel.episode.env import build_registry

    reg = build_registry(config.env, Selection.from_env(levers=config.levers))
    specs = [PolicySpec("heuristic")]
    for name in reg.space.names:
        if name in CORE_HEADS:
            continue
        choices = reg.space.head(name).spec.choices
        specs += [PolicySpec("heuristic", ((name, c),)) for c in (choices[0], choices[-1])]
    return specs


@attrs.frozen
class SweepFlags(Flags):
    """``esper sweep``'s own flags; its settings are in ``given``."""

    COMMAND: ClassVar[str] = "sweep"

    lever_sets: tuple[str, ...] = ()
    policies: str = "heuristic"
    forces: tuple[str, ...] = ()
    seeds: str = "0-2"
    out: str = "runs/sweep"
    config_file: str | None = None
    workers: int | None = None
    ray_address: str | None = None
    threads: int | None = None


def esper_sweep(f: SweepFlags) -> None:
    """``esper sweep``: the grid's trials, one line each, then the paired table."""
    from esper_kernel.commands import evaluate as ev
    from esper_kernel.commands.sweep import build_grid, parse_lever_set
    from esper_kernel.commands.sweep import sweep as run_sweep
    from esper_kernel.infra.workers import usable_cores
    from esper_kernel.settings.config import RunConfig

    setup_threads(f.threads)
    config = load_config(RunConfig, f.config_file, **f.given)
    check_device(config.env.device)
    sets = [parse_lever_set(s) for s in f.lever_sets] or [config.levers]
    cells = build_grid(sets, [p.strip() for p in f.policies.split(",") if p.strip()], f.forces)
    seed_list = ev.parse_seeds(f.seeds)
    n_workers = f.workers or usable_cores()
    console = stderr()
    engine = "Ray Tune" if f.ray_address is not None else f"{n_workers} worker process(es)"
    console.print(
        f"esper sweep: {len(cells)} cells x {len(seed_list)} seeds = {len(cells) * len(seed_list)} trials "
        f"on {config.env.task} ({config.env.epochs} epochs), {engine}"
    )

    def on_done(name: str, r: EpisodeResult) -> None:
        console.print(f"  {name} seed {r.seed}: acc {r.final_val_accuracy:.3f} params {r.params:,}")

    out = Path(f.out)
    doc = run_sweep(config.env, cells, seed_list, out, workers=n_workers, ray=f.ray_address, on_done=on_done)
    click.echo(ev.render_markdown(doc))
    console.print(f"wrote {f.out}/sweep.json, {f.out}/sweep.md and {doc['sweep']['trials']} trial directories")


# -- esper frontier ------------------------------------------------------------------------


def esper_frontier(flags: Mapping[str, Any]) -> None:
    """``esper frontier``: static hosts at every width beside the growing policies and their from-scratch controls."""
    setup_threads(flags["threads"])
    from esper_kernel.commands import frontier as fr
    from esper_kernel.commands.evaluate import parse_seeds
    from esper_kernel.infra.workers import usable_cores
    from esper_kernel.settings.config import RunConfig

    env_flags = {"env__task": flags["task"], "env__data_dir": flags["data_dir"], "env__epochs": flags["epochs"]}
    levers = tuple(x for x in flags["levers"].split(",") if x) if flags["levers"] is not None else None
    config = load_config(RunConfig, flags["config_file"], levers=levers, **env_flags)
    widths = None
    if flags["widths"]:
        try:
            widths = tuple(int(w) for w in flags["widths"].split(",") if w.strip())
        except ValueError:
            raise click.BadParameter(f"expected widths like 8,16,32,64, got {flags['widths']!r}") from None
    seeds = parse_seeds(flags["seeds"])
    out = Path(flags["out"])
    console = stderr()
    console.print(f"esper frontier: {config.env.task} ({config.env.epochs} epochs), seeds {flags['seeds']}")

    def on_done(name: str, r: EpisodeResult) -> None:
        console.print(
            f"  {name} seed {r.seed}: acc {r.final_val_accuracy:.3f} loss {r.final_val_loss:.3f} "
            f"params {r.params:,} ({r.wall_seconds}s)"
        )

    doc = fr.frontier(
        config.env,
        [p for p in flags["policies"].split(",") if p.strip()],
        seeds,
        widths=widths,
        levers=config.levers,
        scratch=not flags["no_scratch"],
        workers=flags["workers"] or usable_cores(),
        out=out,
        on_done=on_done,
    )
    paths = fr.write_outputs(doc, out)
    click.echo(fr.render_markdown(doc))
    console.print(f"wrote {', '.join(map(str, paths))} in {doc['wall_seconds']} s")
