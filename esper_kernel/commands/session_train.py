"""``esper train``'s session: its flags, its config (a resumed run's own), the progress bar, events and summary."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import click
from rich.console import Console

if TYPE_CHECKING:
    from esper_kernel.compose.discovery import Selection
    from esper_kernel.compose.registry import Registry
    from esper_kernel.tamiyo.train import TrainConfig, TrainSummary

from esper_kernel.commands.session import (
    Flags,
    check_env,
    load_config,
    refuse_with_resume,
    setup_threads,
    stderr,
    tensorboard_sinks,
    write_json,
)
from esper_kernel.infra.numerics import numerics

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
    for env in config.task_envs():
        check_env(env)
    if config.levers is not None and not any(x.strip() for x in config.levers):
        raise click.UsageError("--levers: names no lever; leave it out for every installed lever")


def train_session(f: TrainFlags) -> TrainSession:
    """The config (a resumed run's own, or file + flags), checked, and the levers it trains against."""
    import time
    import uuid

    from esper_kernel.commands.outdir import fresh_out
    from esper_kernel.compose.discovery import Selection
    from esper_kernel.episode.env import build_registry, union_catalogue
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
        config = with_overrides(config, out=str(fresh_out(Path(config.out), command="train")))
        run_id = f"train-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    _train_problems(config)
    selection = Selection.from_env(levers=config.levers, on_error=config.on_lever_error)
    envs = config.task_envs()
    reg = build_registry(envs[0], selection, union_catalogue(envs) if len(envs) > 1 else None)
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
    from rich.markup import escape

    from esper_kernel.commands.outdir import claim_out, truncate_events
    from esper_kernel.data.tasks import TaskError
    from esper_kernel.infra.telemetry import Telemetry
    from esper_kernel.infra.workers import usable_cores
    from esper_kernel.settings.config import unstructure_config
    from esper_kernel.tamiyo.train import STATE_FILE, TrainOptions, train_ppo

    s = train_session(f)
    config, reg, out = s.config, s.registry, s.out
    n_workers = config.workers or usable_cores()
    claim_out(out, "train")
    policy_path = out / "policy.pt"
    console = stderr()
    options = TrainOptions(
        workers=n_workers,
        selection=s.selection,
        eval_every=config.eval_every,
        eval_seeds=config.eval_seeds,
        resume=out / STATE_FILE if s.state is not None else None,
        ray=f.ray_address,
        meta={"config": unstructure_config(config), "run_id": s.run_id},
        # A quarantine or a slow lever in any env, in this process or a worker, as esper run shows it.
        on_warning=lambda line: console.print(f"[yellow]warning:[/] {escape(line)}"),
    )
    # The progress bar owns the terminal; the full event stream goes to the file.
    sinks = tensorboard_sinks(f.tensorboard_dir)
    # A resume first drops what a killed rollout wrote after the state it continues from.
    size = s.state.get("events_bytes") if s.state is not None else None
    superseded = truncate_events(out / "events.jsonl", size) if isinstance(size, int) else 0
    with Telemetry(out / "events.jsonl", s.run_id, console=False, append=s.state is not None, sinks=sinks) as tel:
        options = attrs.evolve(options, events_position=tel.position)
        _train_started(tel.log, s, n_workers, f.ray_address, superseded)
        for fail in reg.failures:
            console.print(f"[yellow]warning:[/] {fail.describe()}")
        first = 0 if s.state is None else len(s.state["returns"])
        with train_progress(console, config.ppo.episodes, first) as advance:
            try:
                envs = config.task_envs()
                summary = train_ppo(envs[0], reg, config.ppo, tel.log, policy_path, advance, options, tasks=envs)
            except TaskError as exc:
                raise click.UsageError(str(exc)) from exc
        _train_finished(tel.log, summary, policy_path)
    _write_train_summary(s, n_workers, summary)
    console.print(f"trained {summary.episodes} episodes in {summary.seconds:.1f}s; policy saved to {policy_path}")
    console.print(f"learning curves and what emerged: [bold green]esper report {out}[/]")


def _train_started(log: Any, s: TrainSession, n_workers: int, ray: str | None, superseded: int) -> None:
    from esper_kernel.commands.run import log_started
    from esper_kernel.settings.config import unstructure_config

    log_started(
        log,
        s.registry,
        command="train",
        config=unstructure_config(s.config),
        env_config=attrs.asdict(s.config.task_envs()[0]),
        tasks=[e.task for e in s.config.task_envs()] if s.config.tasks else None,
        ppo_config=attrs.asdict(s.config.ppo),
        out=str(s.out),
        workers=n_workers,
        ray=ray,
        resumed=s.state is not None,
        superseded_events=superseded,
    )


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
        hook_seconds=summary.hook_seconds,
        quarantined=list(summary.quarantined),
        **({"compile": summary.compile} if summary.compile is not None else {}),
    )


def _write_train_summary(s: TrainSession, n_workers: int, summary: TrainSummary) -> None:
    record = {
        "run_id": s.run_id,
        "env_config": attrs.asdict(s.config.task_envs()[0]),
        **({"tasks": [attrs.asdict(e) for e in s.config.task_envs()]} if s.config.tasks else {}),
        "ppo_config": attrs.asdict(s.config.ppo),
        "levers": [lv.name for lv in s.registry.levers],
        "workers": n_workers,
        "numerics": numerics(),
        **summary.to_dict(),
    }
    write_json(s.out / "train_summary.json", record)
