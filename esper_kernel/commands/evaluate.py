"""``esper eval``: several policies on the same seeds, paired, with confidence intervals.

A seed fixes the task data, the host's initial weights and the batch order, so
two policies run on the same seed differ only by their decisions. Every
policy's per-seed outcome is paired against a reference policy's (``wait``,
the no-growth control, by default) and summarised as the mean difference,
its standard error and a 95% t-interval (:mod:`esper_kernel.infra.stats`).

Policy specs are those of the policy catalogue (:mod:`esper_kernel.tamiyo.catalogue`),
the same for ``esper run``, ``esper eval`` and ``esper sweep``: ``heuristic``,
``random``, ``wait``, ``pretrained``, a policy file, ``greedy:`` before a learned
policy, ``+HEAD=CHOICE`` forcing a lever head (the nearest legal choice where
it is illegal, counted), and ``static`` / ``static:N`` (the starting host
widened to the first growing policy's final parameter count, or to about
``N``, never growing).

The output (``eval.json``, schema ``esper.eval/1``, and ``eval.md``) is
documented in ``docs/eval.md``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from esper_kernel.commands.evaldoc import EVAL_SCHEMA, EpisodeResult, document
from esper_kernel.commands.journal import Journal
from esper_kernel.compose.discovery import Selection
from esper_kernel.compose.names import CORE_HEADS
from esper_kernel.compose.registry import Registry
from esper_kernel.compose.stages import Op, Stage
from esper_kernel.data.taskplugins import HostShape
from esper_kernel.episode.env import (
    EnvBatch,
    EnvConfig,
    MorphoEnv,
    build_registry,
    load_task,
    observation_names,
    size_host,
)
from esper_kernel.episode.loop import Observer, Step, play_batch
from esper_kernel.grow.flops import epoch_flops
from esper_kernel.infra.errors import EsperError
from esper_kernel.infra.numerics import describe, numerics
from esper_kernel.infra.telemetry import null_log
from esper_kernel.infra.workers import iter_jobs
from esper_kernel.settings.config import converter
from esper_kernel.tamiyo.catalogue import (
    BuildContext,
    PolicySpec,
    build_policy,
    check_forced,
    check_spec,
    defaulted_heads,
    describe_fit,
    kind_of,
    learned_of,
    parse_force,
    parse_policy,
    static_width,
)
from esper_kernel.tamiyo.policies import fallbacks
from esper_kernel.tamiyo.schedule import schedule_of

__all__ = [
    "EVAL_SCHEMA",
    "EpisodeResult",
    "EvalJob",
    "PolicySpec",
    "document",
    "evaluate",
    "parse_force",
    "parse_policy",
    "parse_seeds",
    "play_episode",
    "static_width",
]


def parse_seeds(text: str) -> tuple[int, ...]:
    """``0-9`` or ``3,5,8`` or ``0-4,10`` -> seeds, in order, without repeats."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        lo, sep, hi = part.partition("-")
        try:
            seeds = range(int(lo), int(hi) + 1) if sep else [int(part)]
        except ValueError:
            raise EsperError(f"--seeds: {part!r} is not a seed or a range like 0-9") from None
        out += [s for s in seeds if s not in out]
    if not out:
        raise EsperError(f"--seeds: {text!r} names no seed")
    return tuple(out)


@attrs.frozen
class EvalJob:
    """Everything one worker needs to play one (policy, seed) episode; picklable."""

    env: dict[str, Any]
    policy: PolicySpec
    seed: int
    levers: tuple[str, ...] | None
    #: Width of the host for a static-host control (None: the task's own width).
    static_width: int | None = None
    #: For the from-scratch control: ``(slot, blueprint, width_scale)`` modules present from epoch 0.
    fossils: tuple[tuple[int, str, float], ...] = ()
    #: ``--on-lever-error``: a lever failing stops the eval, or is quarantined for the rest of this episode.
    on_error: str = "stop"


def check_forces(
    env: EnvConfig, forced: Sequence[tuple[str, str]], specs: Sequence[PolicySpec], levers: tuple[str, ...] | None
) -> None:
    """``--force``: every head and choice exist, and some policy takes the force; never silently dropped."""
    if not forced:
        return
    registry = build_registry(env, Selection.from_env(levers=levers))
    check_forced(PolicySpec("wait", tuple(forced)), registry)
    taken = [s.name for s in specs if all(pair in s.forced for pair in forced)]
    if not taken:
        given = " ".join(f"--force {h}={c}" for h, c in forced)
        raise EsperError(
            f"{given}: no policy in --policies makes decisions to force ({', '.join(s.name for s in specs)}); "
            "add one that does (heuristic, random, a policy file) or drop --force"
        )


def check_policies(env: EnvConfig, specs: Sequence[PolicySpec], levers: tuple[str, ...] | None) -> None:
    """Every forced head, policy file and schedule checked once, before any episode starts."""
    registry = build_registry(env, Selection.from_env(levers=levers))
    for spec in specs:
        check_spec(spec, registry, env)
    sized = [s for s in specs if s.static and s.static_params is not None]
    if sized:  # a static:N host over the memory limit is refused now, not after the other policies ran
        data = load_task(env, 0)
        for spec in sized:
            assert spec.static_params is not None
            try:
                size_host(attrs.evolve(env, width=static_width(env, HostShape.of(data), spec.static_params)), data)
            except EsperError as exc:
                raise EsperError(f"--policies {spec.name!r}: {exc}") from exc


@attrs.define
class _Tally(Observer):
    """What an eval records of an episode: GERMINATE decisions and their legal choices, the size each epoch."""

    env: MorphoEnv
    levers: list[str]
    multi: dict[str, int]
    legal: dict[str, dict[str, int]]
    germinations: int = 0
    decided: list[dict[str, dict[str, Any]]] = attrs.Factory(list)
    params: list[int] = attrs.Factory(list)
    flops: list[float] = attrs.Factory(list)
    decisions: list[dict[str, Any]] = attrs.Factory(list)
    states: list[dict[str, Any]] = attrs.Factory(list)

    @classmethod
    def of(cls, env: MorphoEnv) -> _Tally:
        space = env.registry.space
        levers = [n for n in space.names if Op.GERMINATE in space.head(n).spec.ops and n not in CORE_HEADS]
        legal = {n: dict.fromkeys(space.head(n).spec.choices, 0) for n in levers}
        return cls(env, levers, dict.fromkeys(levers, 0), legal)

    def before_decision(self, t: int) -> None:
        fates: list[str | None] = [None] * self.env.n_slots
        for seed in self.env.lifecycle.history:  # in the order the seeds ended: the last one in a slot wins
            fates[seed.slot] = "fossilized" if seed.stage is Stage.FOSSILIZED else "culled"
        self.states.append({"plateau": self.env.plateau, "fates": fates})

    def on_step(self, step: Step) -> bool:
        space = self.env.registry.space
        if int(step.sampled.actions[0, space.op_index]) == Op.GERMINATE:
            self.germinations += 1
            for name in self.levers:
                row = step.masks[0, Op.GERMINATE, space.names.index(name), : len(self.legal[name])]
                self.multi[name] += int(row.sum()) > 1
                for choice, ok in zip(self.legal[name], row.tolist(), strict=True):
                    self.legal[name][choice] += bool(ok)
            if self.env.last_choice is not None:
                self.decided.append(self.env.last_choice)
        self.params.append(self.env.param_count())
        task = self.env.task
        self.flops.append(float(epoch_flops(self.env.host, task.val_x[:1], task.n_train, task.n_val)))
        decision = space.decode(step.sampled.actions)[0]
        if decision.op is not Op.WAIT:
            chosen = {h: c for h, c in decision.choices.items() if decision.relevant.get(h) and h not in ("op", "slot")}
            slot = {"slot": int(decision.choices["slot"].removeprefix("s"))} if "slot" in decision.choices else {}
            self.decisions.append({"epoch": step.t, "op": decision.op.name.lower(), **slot, **chosen})
        return True


def play_episode(job: EvalJob) -> EpisodeResult:
    """Play one episode of ``job.policy`` on ``job.seed``; no files written."""
    cfg = converter.structure(job.env, EnvConfig)
    if job.static_width is not None:
        cfg = attrs.evolve(cfg, width=job.static_width)
    registry = build_registry(cfg, Selection.from_env(levers=job.levers, on_error=job.on_error))
    task = load_task(cfg, job.seed)
    env = MorphoEnv(cfg, registry, task, null_log(), index=0)
    env.scratch_fossils = job.fossils
    envs = EnvBatch([env])
    obs = envs.reset([job.seed])
    policy = build_policy(job.policy, BuildContext(registry, env.obs_dim, job.seed, cfg))
    tally = _Tally.of(env)
    started = time.perf_counter()
    (total,) = play_batch(envs, policy, obs, [tally])
    fates = [s.stage for s in env.lifecycle.history]
    return EpisodeResult(
        seed=job.seed,
        final_val_accuracy=env.acc_history[-1],
        best_val_accuracy=env.best,
        params=env.param_count(),
        mean_params=sum(tally.params) / len(tally.params),
        ret=total,
        fallbacks=fallbacks(policy),
        fossilized=sum(s is Stage.FOSSILIZED for s in fates),
        culled=sum(s is not Stage.FOSSILIZED for s in fates),
        germinate_decisions=tally.germinations,
        multi_legal=tally.multi,
        legal_counts=tally.legal,
        wall_seconds=round(time.perf_counter() - started, 2),
        curve=tuple(env.acc_history),
        germinate=tuple(tally.decided),
        final_val_loss=env.loss_history[-1],
        loss_curve=tuple(env.loss_history),
        flops=sum(tally.flops),
        flops_curve=tuple(tally.flops),
        fossil_modules=tuple(
            (s.slot, s.blueprint, float(s.knobs.width_scale))
            for s in env.lifecycle.history
            if s.stage is Stage.FOSSILIZED
        ),
        decisions=tuple(tally.decisions),
        states=tuple(tally.states),
        **_levers_of(env),
    )


def _levers_of(env: MorphoEnv) -> dict[str, Any]:
    # What esper run's summary says of its levers, per episode: the env's own report.
    rep = env.lever_report()
    return {"hook_seconds": rep["hook_seconds"], "quarantined": tuple(rep["quarantined"]), "compile": rep["compile"]}


def check_names(env: EnvConfig, policies: Sequence[PolicySpec], reference: str, levers: tuple[str, ...] | None) -> None:
    """The policies are distinct and valid, and the reference is among them (before anything is written)."""
    names = [p.name for p in policies]
    if not names:
        raise EsperError("--policies names no policy; give one or more, such as heuristic,wait")
    if len(set(names)) != len(names):
        raise EsperError(f"--policies names a policy twice: {', '.join(names)}")
    # The policies first: a bad force in one is what the user mistyped, not the reference it renamed.
    check_policies(env, policies, levers)
    if reference not in names:
        raise EsperError(f"--reference {reference!r} is not among the policies: {', '.join(names)}")


def evaluate(
    env: EnvConfig,
    policies: Sequence[PolicySpec],
    seeds: Sequence[int],
    *,
    levers: tuple[str, ...] | None = None,
    reference: str = "wait",
    workers: int = 1,
    on_done: Callable[[str, EpisodeResult], None] | None = None,
    journal: Path | None = None,
    on_note: Callable[[str], None] | None = None,
    on_lever_error: str = "stop",
) -> dict[str, Any]:
    """Run every policy on every seed and return the ``esper.eval/1`` document.

    With ``journal`` (a path), finished episodes are appended there as they
    finish and episodes already there are not played again (see :class:`Journal`).
    ``on_note`` is told, once per learned policy, the heads of levers it was
    not trained with, held at their defaults (``policy_defaults`` in the document).
    ``on_lever_error="quarantine"`` quarantines a failing lever for the rest of
    its episode instead of stopping; each quarantine is in the document.
    """
    check_names(env, policies, reference, levers)
    held, notes = _policy_defaults(env, policies, levers, seeds[0])
    for name, lines in notes.items():
        for line in lines:
            if on_note is not None:
                on_note(f"{name}: {line}")
    started = time.perf_counter()
    data = converter.unstructure(env)
    book = _journal(journal, data, levers, on_lever_error)
    recipes = {}
    for p in policies:
        if kind_of(p.policy)[0].name == "recipe" and not p.static:
            recipes[p.name] = _recipe(p, data, seeds, levers, workers, book, on_done)
    resolved = [attrs.evolve(p, resolved=recipes[p.name]["schedule"]) if p.name in recipes else p for p in policies]
    growing = [p for p in resolved if not p.static]
    statics = [p for p in resolved if p.static]
    results = _run(growing, data, seeds, levers, workers, book, on_done)
    if statics:
        shape = HostShape.of(load_task(attrs.evolve(env, train_size=1, val_size=1), seeds[0]))
        target = _static_target(growing, results)
        jobs_for = {}
        for p in statics:
            params = p.static_params if p.static_params is not None else target
            if params is None:
                raise EsperError("'static' matches the first growing policy's parameter count: list one before it")
            jobs_for[p.name] = static_width(env, shape, params)
        results |= _run(statics, data, seeds, levers, workers, book, on_done, widths=jobs_for)
    doc = document(env, policies, seeds, levers, reference, results, time.perf_counter() - started)
    if recipes:
        doc["recipes"] = recipes
    doc["policy_defaults"] = held
    _say_elsewhere(book, doc, on_note)
    return doc


def _policy_defaults(
    env: EnvConfig, policies: Sequence[PolicySpec], levers: tuple[str, ...] | None, seed: int
) -> tuple[dict[str, dict[str, str]], dict[str, list[str]]]:
    """Each learned policy's heads new to it, held at their defaults, and the lines that say how it fits
    (asked once, not per episode)."""
    registry = build_registry(env, Selection.from_env(levers=levers))
    ctx = BuildContext(registry, len(observation_names(registry, env.slots)), seed, env)
    found = {p.name: learned_of(p, ctx) for p in policies}
    learned = {name: policy for name, policy in found.items() if policy is not None}
    return (
        {name: defaulted_heads(policy) for name, policy in learned.items()},
        {name: describe_fit(policy) for name, policy in learned.items()},
    )


def _journal(path: Path | None, data: dict[str, Any], levers: tuple[str, ...] | None, on_error: str) -> Journal:
    header = {"schema": EVAL_SCHEMA, "env": data, "levers": list(levers) if levers else levers}
    # Only where it is not the default, so journals written before the flag still resume.
    header |= {"on_lever_error": on_error} if on_error != "stop" else {}
    return Journal(path, header, on_error)


def _say_elsewhere(book: Journal, doc: dict[str, Any], on_note: Callable[[str], None] | None) -> None:
    """Name, in ``doc`` and in a line each, the other machines whose journal episodes this eval used."""
    found = book.elsewhere()
    if found:
        doc["journal_numerics"] = found
    if on_note is None:
        return
    here = describe(numerics())
    for other in found:
        on_note(
            f"{book.path}: {other['episodes']} episode(s) used here were played with {describe(other['numerics'])}; "
            f"this machine has {here}: they are used as recorded, and episodes played here "
            "may differ from them at the float level"
        )


def _recipe(
    spec: PolicySpec,
    data: dict[str, Any],
    seeds: Sequence[int],
    levers: tuple[str, ...] | None,
    workers: int,
    journal: Journal,
    on_done: Callable[[str, EpisodeResult], None] | None,
) -> dict[str, Any]:
    """``recipe:P``: P's most frequent decision sequence over ``seeds`` (ties: the lowest seed's), as a schedule.

    P's episodes go through the journal, so P listed beside its recipe is played once.
    """
    inner = parse_policy(kind_of(spec.policy)[1])
    played = _run([inner], data, seeds, levers, workers, journal, on_done)[inner.name]
    sequences = [json.dumps(r.decisions, sort_keys=True) for r in played]
    counts = {seq: sequences.count(seq) for seq in sequences}
    best = max(range(len(played)), key=lambda i: (counts[sequences[i]], -i))
    source = played[best]
    comment = (
        f"recipe:{inner.name}: its decisions on seed {source.seed}, the most frequent sequence "
        f"({counts[sequences[best]]} of {len(played)} seeds), replayed open-loop."
    )
    schedule = schedule_of(source.decisions, f"recipe-{inner.name}", spec.name)
    return {
        "policy": inner.name,
        "from_seed": source.seed,
        "seeds_with_it": counts[sequences[best]],
        "steps": len(schedule.steps),
        "schedule": schedule.to_toml(comment),
    }


def _static_target(growing: Sequence[PolicySpec], results: dict[str, list[EpisodeResult]]) -> float | None:
    for p in growing:
        if p.policy != "wait":
            rs = results[p.name]
            return sum(r.params for r in rs) / len(rs)
    return None


def _key(job: EvalJob) -> tuple[str, int, int | None]:
    return (job.policy.name, job.seed, job.static_width)


def _run(
    specs: Sequence[PolicySpec],
    data: dict[str, Any],
    seeds: Sequence[int],
    levers: tuple[str, ...] | None,
    workers: int,
    journal: Journal,
    on_done: Callable[[str, EpisodeResult], None] | None,
    widths: dict[str, int] | None = None,
) -> dict[str, list[EpisodeResult]]:
    # Seed-major: an eval stopped early has every policy on its first seeds, which still pair.
    jobs = [
        EvalJob(data, spec, seed, levers, (widths or {}).get(spec.name), on_error=journal.on_error)
        for seed in seeds
        for spec in specs
    ]
    todo = [j for j in jobs if _key(j) not in journal.done]
    names = [f"{j.policy.name} seed {j.seed}" for j in todo]
    for job, res in zip(todo, iter_jobs(play_episode, todo, workers, names=names), strict=True):
        journal.record(_key(job), res)
        if on_done is not None:
            on_done(job.policy.name, res)
    results: dict[str, list[EpisodeResult]] = {}
    for job in jobs:
        results.setdefault(job.policy.name, []).append(journal.use(_key(job)))
    return results


def attribution_specs(base: str, registry: Registry) -> list[PolicySpec]:
    """``base`` and ``base`` with each lever head (not op, slot, blueprint, blend) forced to its default."""
    spec = parse_policy(base)
    heads = [h for h in registry.space.heads if h.name not in CORE_HEADS]
    return [spec, *(attrs.evolve(spec, forced=(*spec.forced, (h.name, h.spec.default))) for h in heads)]
