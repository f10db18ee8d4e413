"""``esper run``: one episode on a task, every active lever on, Tamiyo deciding.

Writes ``events.jsonl`` (the structlog stream), ``checkpoint.pt`` (after every
``checkpoint_every`` epochs, atomically) and ``summary.json`` to the output
directory. ``resume`` continues from a checkpoint to the same result an
uninterrupted run with the same seed gives.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from esper_kernel import checkpoint
from esper_kernel.checkpoint import CheckpointError
from esper_kernel.config import RunConfig, structure_config, unstructure_config
from esper_kernel.devices import rng_states, set_rng_states
from esper_kernel.env import EnvBatch, MorphoEnv, build_registry, load_task
from esper_kernel.errors import EsperError, PluginError, SelectionError
from esper_kernel.registry import LoadFailure, Registry, Selection, installed_entry_points
from esper_kernel.specs import Safety
from esper_kernel.tamiyo.policies import HeuristicPolicy, Policy, RandomPolicy
from esper_kernel.telemetry import Telemetry

CHECKPOINT = "checkpoint.pt"
EVENTS = "events.jsonl"
SUMMARY = "summary.json"


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


def check_compile_safety(registry: Registry, allow_graph_breaks: bool) -> None:
    """With compile on, refuse levers that declare BREAKS_GRAPH unless the user allows them."""
    breaking = [(name, s) for name, s in registry.safety.items() if s.level is Safety.BREAKS_GRAPH]
    if breaking and not allow_graph_breaks:
        detail = "; ".join(f"{registry.info(n).label}: {s.reason or 'no reason given'}" for n, s in breaking)
        raise PluginError(
            f"--compile refuses levers that break the graph ({detail}). Pass --allow-graph-breaks to run them "
            "anyway (the host then compiles in pieces), or deselect them with --levers / ESPER_DISABLED_LEVERS"
        )


def make_policy(spec: str, registry: Registry, obs_dim: int, seed: int) -> Policy:
    if spec == "heuristic":
        return HeuristicPolicy()
    if spec == "random":
        return RandomPolicy(seed)
    path = Path(spec)
    if not path.exists():
        raise EsperError(f"--policy {spec!r} is neither 'heuristic', 'random' nor an existing policy file")
    from esper_kernel.tamiyo.ppo import load_policy

    return load_policy(path, registry, obs_dim)


def run(
    config: RunConfig,
    *,
    resume: Path | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_failures: Callable[[Sequence[LoadFailure]], None] | None = None,
    stop_after: int | None = None,
    console: bool = False,
    sinks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Run (or resume) one episode; returns the summary also written to ``summary.json``.

    ``on_start(epochs, first_epoch)`` is called once everything is loaded
    and checked, right before the first epoch, so a display never starts for
    a run that fails to set up. ``on_failures`` is told the levers that failed
    to load, right after they are written to the stream. ``stop_after`` ends
    the run after that many epochs as an interruption would (checkpoint
    written, no summary), for resuming later. ``sinks`` are extra structlog
    processors fed every event (``--tensorboard``).
    """
    state: dict[str, Any] | None = None
    if resume is not None:
        state = checkpoint.load(resume / CHECKPOINT)
        config = structure_config(state["config"], where=f"{resume / CHECKPOINT} config")
        out = resume
    else:
        out = Path(config.out)
    selection = Selection.from_env(levers=config.levers)
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
    run_id = state["run_id"] if state is not None else uuid.uuid4().hex[:12]
    started = time.perf_counter()
    with Telemetry(out / EVENTS, run_id, console=console, append=state is not None, sinks=sinks) as tel:
        tel.log.info(
            "run.started",
            config=unstructure_config(config),
            levers=lever_records(registry),
            failed_levers=[attrs.asdict(f) for f in registry.failures],
            resumed_from_epoch=state["env"]["epoch"] if state is not None else None,
            heads=list(registry.space.names),
            head_choices=head_choices(registry),
        )
        for failure in registry.failures:
            tel.log.warning("plugin.failed", **attrs.asdict(failure))
        if registry.failures and on_failures is not None:
            on_failures(registry.failures)
        task = load_task(config.env, config.seed)
        env = MorphoEnv(config.env, registry, task, tel.log, index=0)
        envs = EnvBatch([env])
        obs = envs.reset([config.seed])
        policy = make_policy(config.policy, registry, env.obs_dim, config.seed)
        total = 0.0
        if state is not None:
            env.load_state_dict(state["env"])
            _load_policy_state(policy, state["policy"])
            set_rng_states({"cpu": state["rng"], **({"cuda": state["cuda_rng"]} if state.get("cuda_rng") else {})})
            total = float(state["return"])
            obs = envs.observe()
        if on_start is not None:
            on_start(config.env.epochs, env.epoch)
        while not env.done:
            masks = envs.masks()
            with torch.no_grad():
                sampled = policy.act(obs, masks, envs)
            result = envs.step(sampled.actions)[0]
            total += result.reward
            obs = result.obs[None]
            if env.epoch % config.checkpoint_every == 0 or env.done:
                _save(out, config, run_id, env, policy, total, registry)
            if on_epoch is not None:
                on_epoch(EpochReport(env.epoch, config.env.epochs, result.epoch.val_accuracy, _stages(env)))
            if stop_after is not None and env.epoch >= stop_after and not env.done:
                tel.log.info("run.interrupted", at_epoch=env.epoch)
                return {"interrupted_at": env.epoch}
        summary = _summary(run_id, config, env, registry, total, time.perf_counter() - started, out)
        (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        tel.log.info("run.finished", **{k: v for k, v in summary.items() if k != "config"})
    return summary


def _stages(env: MorphoEnv) -> tuple[str, ...]:
    return tuple(s.name for s in env.lifecycle.stages)


def _policy_state(policy: Policy) -> dict[str, Any]:
    # A learned policy is its file; only the built-in policies carry run state (RNG, counters).
    return policy.state_dict() if isinstance(policy, HeuristicPolicy | RandomPolicy) else {}


def _load_policy_state(policy: Policy, state: dict[str, Any]) -> None:
    if isinstance(policy, HeuristicPolicy | RandomPolicy):
        policy.load_state_dict(state)


def _save(
    out: Path, config: RunConfig, run_id: str, env: MorphoEnv, policy: Policy, total: float, reg: Registry
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
            "policy": _policy_state(policy),
            "rng": torch.get_rng_state(),
            "cuda_rng": rng_states().get("cuda"),
            "return": total,
            "levers": levers,
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
        "config": unstructure_config(config),
    }
