"""``esper run``: one episode on a task, every active lever on, Tamiyo deciding.

Writes ``events.jsonl`` (the structlog stream), ``checkpoint.pt`` (after every
``checkpoint_every`` epochs, atomically) and ``summary.json`` to the output
directory. ``resume`` continues from a checkpoint to the same result an
uninterrupted run with the same seed gives.
"""

from __future__ import annotations

import collections
import json
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from esper_kernel.commands.outdir import (
    CHECKPOINT,
    EVENTS,
    SUMMARY,
    _prepare_out,
    check_out,
    fresh_out,
)
from esper_kernel.compose.discovery import LoadFailure, Selection, installed_entry_points
from esper_kernel.compose.registry import Registry, check_compile_safety
from esper_kernel.compose.stages import Stage
from esper_kernel.data.taskplugins import HostShape
from esper_kernel.episode.env import EnvBatch, MorphoEnv, build_registry, load_task, observation_names, size_host
from esper_kernel.episode.loop import Observer, Step, play_batch
from esper_kernel.infra import checkpoint
from esper_kernel.infra.checkpoint import CheckpointError
from esper_kernel.infra.devices import rng_states, set_rng_states
from esper_kernel.infra.errors import EsperError, SelectionError
from esper_kernel.infra.files import write_text_atomic
from esper_kernel.infra.numerics import numerics
from esper_kernel.infra.telemetry import Telemetry
from esper_kernel.settings.config import EnvConfig, RunConfig, structure_config, unstructure_config
from esper_kernel.tamiyo.catalogue import (
    BuildContext,
    build_policy,
    defaulted_heads,
    describe_fit,
    load_run_state,
    parse_policy,
    run_state,
    static_env,
)
from esper_kernel.tamiyo.policies import Policy, fallbacks
from esper_kernel.tamiyo.ppo import PolicyLoadError


@attrs.frozen
class EpochReport:
    """What the progress display is told after every epoch."""

    epoch: int
    epochs: int
    val_accuracy: float
    stages: tuple[str, ...]


def lever_records(registry: Registry) -> list[dict[str, str]]:
    return [{"name": lv.name, "distribution": lv.distribution, "version": lv.version} for lv in registry.levers]


def head_choices(registry: Registry) -> dict[str, list[str]]:
    """Every head's choice names, in order: what a report needs to read decisions and entropies."""
    return {h.name: list(h.spec.choices) for h in registry.space.heads}


def log_started(log: Any, registry: Registry, **fields: Any) -> None:
    """The ``run.started`` event every command writes, with its levers, load failures and head
    choices; then a ``plugin.failed`` warning for each lever that failed to load."""
    log.info(
        "run.started",
        **fields,
        levers=lever_records(registry),
        failed_levers=[attrs.asdict(f) for f in registry.failures],
        head_choices=head_choices(registry),
        numerics=numerics(),
    )
    for failure in registry.failures:
        log.warning("plugin.failed", **attrs.asdict(failure))


def make_policy(spec: str, registry: Registry, obs_dim: int, seed: int, env: EnvConfig | None = None) -> Policy:
    """The policy ``spec`` names (any spec of :mod:`esper_kernel.tamiyo.catalogue`), for an episode on ``seed``.

    A policy file stamped with another task than ``env``'s is refused, naming
    both; so is one trained on another slot count (a one-line error naming
    ``--slots``, the count given and the count it was trained on: it reads
    each slot's features at a fixed place). Levers it was not trained with
    are held at their defaults (:func:`~esper_kernel.tamiyo.catalogue.defaulted_heads`
    says which); one it was trained with that is not active is refused, naming it.
    """
    parsed = parse_policy(spec, flag="--policy")
    ctx = BuildContext(registry, obs_dim, seed, env if env is not None else EnvConfig())
    try:
        return build_policy(parsed, ctx, flag="--policy")
    except PolicyLoadError as exc:
        if "--policy" in str(exc):
            raise
        raise PolicyLoadError(f"--policy {spec}: {exc}") from exc


@attrs.frozen
class _Setup:
    """A run checked in full, before its output directory is touched."""

    config: RunConfig
    out: Path
    state: dict[str, Any] | None
    registry: Registry
    task: Any
    size: Any
    policy: Policy
    run_id: str


@attrs.frozen
class _Played:
    """The episode as the loop left it, and what watched it."""

    env: MorphoEnv
    total: float


@attrs.frozen
class _Reporting:
    """Who hears about the run as it goes (all optional but ``warn``)."""

    warn: Callable[[str], None]
    on_epoch: Callable[[EpochReport], None] | None = None
    on_start: Callable[[int, int], None] | None = None
    on_failures: Callable[[Sequence[LoadFailure]], None] | None = None


def run(
    config: RunConfig,
    *,
    resume: Path | None = None,
    overwrite: bool = False,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    on_failures: Callable[[Sequence[LoadFailure]], None] | None = None,
    stop_after: int | None = None,
    console: bool = False,
    sinks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Run (or resume) one episode; returns the summary also written to ``summary.json``.

    Everything the run needs (config ranges, the output directory, levers, the
    policy, the task and the host's size) is checked before the output
    directory is touched, so a mistake never costs an earlier run its files.
    Once the event stream is open, a run that stops on an error ends it with
    ``run.failed``. ``on_start(epochs, first_epoch)`` is called right before
    the first epoch, so a display never starts for a run that fails to set up.
    ``on_failures`` is told the levers that failed to load, right after they
    are written to the stream (without it, each is an ``on_warning`` line);
    ``on_warning`` gets the other lines a person should see (levers
    quarantined, slow hooks, the host's size). ``stop_after`` ends the run
    after that many epochs as an interruption would (checkpoint written, no
    summary), for resuming later. ``sinks`` are extra structlog processors
    fed every event (``--tensorboard``).
    """
    tell = _Reporting(on_warning or (lambda _msg: None), on_epoch, on_start, on_failures)
    setup = _set_up(config, resume, overwrite)
    started = time.perf_counter()
    # -- everything is checked: from here on the run writes to ``setup.out``.
    superseded = _prepare_out(setup.out, setup.state)
    with Telemetry(
        setup.out / EVENTS, setup.run_id, console=console, append=setup.state is not None, sinks=sinks
    ) as tel:
        _log_start(setup, tel, superseded, tell)
        played = _play(setup, tel, tell, stop_after)
        if not played.env.done:
            tel.log.info("run.interrupted", at_epoch=played.env.epoch)
            return {"interrupted_at": played.env.epoch}
        summary = _finish(setup, played, time.perf_counter() - started)
        write_text_atomic(setup.out / SUMMARY, json.dumps(summary, indent=2) + "\n")
        tel.log.info("run.finished", **{k: v for k, v in summary.items() if k != "config"})
    return summary


def _set_up(config: RunConfig, resume: Path | None, overwrite: bool) -> _Setup:
    """The config (a resumed run's own), the output directory, levers, task, host size and policy, checked."""
    state: dict[str, Any] | None = None
    if resume is not None:
        if overwrite:
            raise EsperError("--resume continues a run and --overwrite replaces one; pass only one")
        state = checkpoint.load(resume / CHECKPOINT)
        config = structure_config(state["config"], where=f"{resume / CHECKPOINT} config")
        out = resume
        check_out(out, overwrite=True, flag="--resume")
    else:
        out = fresh_out(Path(config.out))
        config = attrs.evolve(config, out=str(out))
        check_out(out, overwrite=overwrite)
    registry = _open_registry(config, state, resume)
    task = load_task(config.env, config.seed)
    if state is None:
        # static:N plays a wider host that never grows; the widened width is stored in the config.
        wide = static_env(parse_policy(config.policy, flag="--policy"), config.env, HostShape.of(task))
        config = attrs.evolve(config, env=wide)
    size = size_host(config.env, task)
    obs_dim = len(observation_names(registry, config.env.slots))
    policy = make_policy(config.policy, registry, obs_dim, config.seed, config.env)
    run_id = state["run_id"] if state is not None else uuid.uuid4().hex[:12]
    return _Setup(config, out, state, registry, task, size, policy, run_id)


def _open_registry(config: RunConfig, state: dict[str, Any] | None, resume: Path | None) -> Registry:
    """The selected levers; a resumed run's must be the ones its checkpoint was written with."""
    selection = Selection.from_env(levers=config.levers, on_error=config.on_lever_error)
    try:
        registry = build_registry(config.env, selection)
    except SelectionError as exc:
        if state is None:
            raise
        # The stored config names a lever that is no longer installed: say the checkpoint needs it.
        gone = sorted(set(state["levers"]) - {ep.name for ep in installed_entry_points()})
        raise CheckpointError(_needs(state["levers"], gone, resume) if gone else str(exc)) from exc
    if state is not None:
        _check_levers(state, registry, resume)
    if config.env.compile:
        check_compile_safety(registry, config.allow_graph_breaks)
    return registry


def _log_start(setup: _Setup, tel: Telemetry, superseded: int, tell: _Reporting) -> None:
    registry, state = setup.registry, setup.state
    log_started(
        tel.log,
        registry,
        config=unstructure_config(setup.config),
        resumed_from_epoch=state["env"]["epoch"] if state is not None else None,
        superseded_events=superseded,
        heads=list(registry.space.names),
        host_params=setup.size.params,
        # The split the episode really trains and validates on (the task's own when no size was given).
        n_train=setup.task.n_train,
        n_val=setup.task.n_val,
        host_memory_bytes=setup.size.memory_bytes,
        policy_defaults=defaulted_heads(setup.policy),
    )
    tell.warn(setup.size.describe())
    for line in describe_fit(setup.policy):
        tell.warn(f"--policy {setup.config.policy}: {line}")
    if registry.failures and tell.on_failures is not None:
        tell.on_failures(registry.failures)
    else:
        for failure in registry.failures:
            tell.warn(f"dropped {failure.describe()}")


def _play(setup: _Setup, tel: Telemetry, tell: _Reporting, stop_after: int | None) -> _Played:
    """The episode's epochs (from the checkpoint's, resuming), a checkpoint after every ``checkpoint_every``."""
    config, registry, policy, state = setup.config, setup.registry, setup.policy, setup.state
    env = MorphoEnv(config.env, registry, setup.task, tel.log, index=0)
    # Quarantines, compile contradictions, slow hooks: the env watches its levers, as in train and eval.
    env.warn = tell.warn
    envs = EnvBatch([env])
    obs = envs.reset([config.seed])
    total = 0.0
    if state is not None:
        env.load_state_dict(state["env"])
        load_run_state(policy, state["policy"])
        set_rng_states({"cpu": state["rng"], **({"cuda": state["cuda_rng"]} if state.get("cuda_rng") else {})})
        total = float(state["return"])
        obs = envs.observe()
    if tell.on_start is not None:
        tell.on_start(config.env.epochs, env.epoch)
    observer = _RunObserver(setup, tel, tell, env, stop_after)
    (total,) = play_batch(envs, policy, obs, [observer], t=env.epoch, returns=[total])
    return _Played(env, total)


@attrs.define
class _RunObserver(Observer):
    """Checkpoints, the progress display and ``stop_after``: what ``esper run`` does each epoch."""

    setup: _Setup
    tel: Telemetry
    tell: _Reporting
    env: MorphoEnv
    stop_after: int | None

    def before_decision(self, t: int) -> None:
        self.tel.at(self.env.epoch)  # a stop from here on is recorded as in this epoch

    def on_step(self, step: Step) -> bool:
        env, config = self.env, self.setup.config
        go_on = self.stop_after is None or env.epoch < self.stop_after or env.done
        # After the first epoch too: a run killed before its first checkpoint_every could not be resumed.
        if env.epoch % config.checkpoint_every == 0 or env.done or env.epoch == 1:
            s = self.setup
            _save(s.out, config, s.run_id, env, s.policy, step.returns[0], s.registry, self.tel)
        if self.tell.on_epoch is not None:
            self.tell.on_epoch(EpochReport(env.epoch, config.env.epochs, env.acc_history[-1], _stages(env)))
        return go_on


def _finish(setup: _Setup, played: _Played, wall: float) -> dict[str, Any]:
    """The summary of a finished episode: ``_summary`` plus hook times, quarantines and compile counts
    (the env's :meth:`~esper_kernel.episode.env.MorphoEnv.lever_report`, as train and eval summarise it)."""
    summary = _summary(setup.run_id, setup.config, played.env, setup.registry, played.total, wall, setup.out)
    levers = played.env.lever_report()
    summary["hook_seconds"] = levers["hook_seconds"]
    # Forced heads that fell back and schedule steps skipped as illegal, as esper eval counts them.
    summary["policy_fallbacks"] = fallbacks(setup.policy)
    summary["policy_defaults"] = defaulted_heads(setup.policy)
    summary["quarantined"] = levers["quarantined"]
    if levers["compile"] is not None:
        summary["compile"] = levers["compile"]
    return summary


def _stages(env: MorphoEnv) -> tuple[str, ...]:
    """Each slot's stage and the seeds fossilized in it: a slot is DORMANT again once its seed fossilizes,
    so the stage alone would show a run that grew seven seeds as one that grew none."""
    fossils = collections.Counter(s.slot for s in env.lifecycle.history if s.stage is Stage.FOSSILIZED)
    return tuple(
        f"{st.name} ({fossils[i]} fossilized)" if fossils[i] else st.name for i, st in enumerate(env.lifecycle.stages)
    )


def _save(
    out: Path,
    config: RunConfig,
    run_id: str,
    env: MorphoEnv,
    policy: Policy,
    total: float,
    reg: Registry,
    tel: Telemetry,
) -> None:
    levers: dict[str, Any] = {}
    for lv in reg.levers:
        per_seed = {
            s.seed_id: s.lever_state[lv.name]
            for s in [*env.lifecycle.history, *env.lifecycle.live_seeds()]
            if lv.name in s.lever_state
        }
        levers[lv.name] = {"distribution": lv.distribution, "version": lv.version, "seeds": per_seed}
    checkpoint.save_atomic(
        {
            "format": checkpoint.FORMAT,
            "run_id": run_id,
            "config": unstructure_config(config),
            "env": env.state_dict(),
            "policy": run_state(policy),
            "rng": torch.get_rng_state(),
            "cuda_rng": rng_states().get("cuda"),
            "return": total,
            "levers": levers,
            # What the event stream held at this epoch: a resume cuts it back here.
            "events_bytes": tel.position(),
        },
        out / CHECKPOINT,
    )


def _needs(saved: dict[str, Any], missing: list[str], where: Path | None) -> str:
    desc = ", ".join(f"{n!r} ({saved[n]['distribution']} {saved[n]['version']})" for n in missing)
    return f"checkpoint {where} needs lever(s) {desc}, which are not active; install or select them to resume"


def _check_levers(state: dict[str, Any], registry: Registry, where: Path | None) -> None:
    saved = state["levers"]
    missing = sorted(set(saved) - set(registry.names))
    if missing:
        raise CheckpointError(_needs(saved, missing, where))
    extra = sorted(set(registry.names) - set(saved))
    if extra:
        raise CheckpointError(
            f"lever(s) {', '.join(map(repr, extra))} are active but were not when checkpoint {where} was written; "
            "deselect them (--levers / ESPER_DISABLED_LEVERS) to resume the same run"
        )


def _summary(
    run_id: str, config: RunConfig, env: MorphoEnv, registry: Registry, total: float, wall: float, out: Path
) -> dict[str, Any]:
    lc = env.lifecycle
    seeds = [
        {
            "seed_id": s.seed_id,
            "slot": s.slot,
            "blueprint": s.blueprint,
            "blend": s.blend,
            "choices": s.choices,
            "final_stage": s.stage.name,
            "cull_reason": s.cull_reason,
            "germinated_epoch": s.germinated_epoch,
        }
        for s in [*lc.history, *lc.live_seeds()]
    ]
    return {
        "run_id": run_id,
        "out": str(out),
        "epochs": env.epoch,
        "num_classes": env.task.num_classes,
        "final_val_accuracy": env.acc_history[-1] if env.acc_history else None,
        "best_val_accuracy": env.best,
        "return": total,
        "params": env.param_count(),
        "base_params": env.base_params,
        "seeds": seeds,
        "levers": lever_records(registry),
        "wall_seconds": round(wall, 2),
        "numerics": numerics(),
        "config": unstructure_config(config),
    }
