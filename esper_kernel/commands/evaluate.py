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
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from esper_kernel.compose.discovery import Selection
from esper_kernel.compose.names import CORE_HEADS
from esper_kernel.compose.registry import Registry
from esper_kernel.compose.stages import Op, Stage
from esper_kernel.data.taskplugins import HostShape
from esper_kernel.episode.env import EnvBatch, EnvConfig, MorphoEnv, build_registry, load_task
from esper_kernel.episode.loop import Observer, Step, play_batch
from esper_kernel.grow.flops import epoch_flops
from esper_kernel.infra.errors import EsperError
from esper_kernel.infra.files import write_text_atomic
from esper_kernel.infra.stats import mean_se, paired_difference
from esper_kernel.infra.telemetry import null_log
from esper_kernel.infra.workers import iter_jobs
from esper_kernel.settings.config import converter
from esper_kernel.tamiyo.catalogue import (
    BuildContext,
    PolicySpec,
    build_policy,
    check_forced,
    check_spec,
    kind_of,
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
    "render_markdown",
    "static_width",
]

EVAL_SCHEMA = "esper.eval/1"
#: The outcomes every policy is compared on, seed by seed.
METRICS = ("final_val_accuracy", "final_val_loss", "return", "params", "mean_params", "flops")


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


@attrs.frozen
class EpisodeResult:
    seed: int
    final_val_accuracy: float
    best_val_accuracy: float
    params: int
    mean_params: float
    #: The env's reward summed over the episode (docs/telemetry.md defines it).
    ret: float
    fallbacks: int
    fossilized: int
    culled: int
    #: Per lever head: GERMINATE decisions seen, and how many had more than one legal choice.
    germinate_decisions: int
    multi_legal: dict[str, int]
    #: Per lever head and choice: at how many GERMINATE decisions that choice was legal.
    legal_counts: dict[str, dict[str, int]]
    wall_seconds: float
    #: Validation accuracy after every epoch.
    curve: tuple[float, ...] = ()
    #: Every GERMINATE decision: ``{"choices": {head: choice}, "legal": {head: [legal choices]}}`` over the
    #: relevant heads (op aside); the emergence report tests choices against uniform-over-legal with it.
    germinate: tuple[dict[str, dict[str, Any]], ...] = ()
    #: Validation loss after the last epoch (nats per token; text tasks are judged on it), and after every epoch.
    final_val_loss: float | None = None
    loss_curve: tuple[float, ...] = ()
    #: Estimated training FLOPs of the episode (esper_kernel.grow.flops), and of each epoch.
    flops: float | None = None
    flops_curve: tuple[float, ...] = ()
    #: The grown architecture: ``(slot, blueprint, width_scale)`` of every fossilized seed, in order.
    fossil_modules: tuple[tuple[int, str, float], ...] = ()
    #: Every decision but WAIT, as a schedule step: ``{"epoch", "op", "slot", head: choice...}`` (``recipe:``).
    decisions: tuple[dict[str, Any], ...] = ()

    def outcome(self, metric: str) -> float:
        return self.ret if metric == "return" else float(getattr(self, metric))


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

    @classmethod
    def of(cls, env: MorphoEnv) -> _Tally:
        space = env.registry.space
        levers = [n for n in space.names if Op.GERMINATE in space.head(n).spec.ops and n not in CORE_HEADS]
        legal = {n: dict.fromkeys(space.head(n).spec.choices, 0) for n in levers}
        return cls(env, levers, dict.fromkeys(levers, 0), legal)

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
    registry = build_registry(cfg, Selection.from_env(levers=job.levers))
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
    )


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
) -> dict[str, Any]:
    """Run every policy on every seed and return the ``esper.eval/1`` document.

    With ``journal`` (a path), finished episodes are appended there as they
    finish and episodes already there are not played again (see :class:`Journal`).
    """
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise EsperError(f"--policies names a policy twice: {', '.join(names)}")
    # The policies first: a bad force in one is what the user mistyped, not the reference it renamed.
    check_policies(env, policies, levers)
    if reference not in names:
        raise EsperError(f"--reference {reference!r} is not among the policies: {', '.join(names)}")
    started = time.perf_counter()
    data = converter.unstructure(env)
    book = Journal(journal, {"schema": EVAL_SCHEMA, "env": data, "levers": list(levers) if levers else levers})
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
    return doc


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


class Journal:
    """``episodes.jsonl``: every finished episode, appended as it finishes.

    An eval that stops (a kill, a crash, a full disk) keeps what it had; the
    same command run again plays only the episodes still missing. The first
    line records the env config and lever selection, so episodes of a
    different configuration are never mixed in.
    """

    def __init__(self, path: Path | None, header: dict[str, Any]) -> None:
        self.path = path
        self.done: dict[tuple[str, int, int | None], EpisodeResult] = {}
        if path is None:
            return
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines()
            if lines and json.loads(lines[0]) != header:
                raise EsperError(
                    f"{path} holds episodes of another configuration; pass another --out or delete the file"
                )
            for line in lines[1:]:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line torn by a kill: that episode is simply played again
                self.done[(rec["policy"], rec["seed"], rec["width"])] = converter.structure(
                    rec["result"], EpisodeResult
                )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(header) + "\n", encoding="utf-8")

    def add(self, job: EvalJob, result: EpisodeResult) -> None:
        self.done[(job.policy.name, job.seed, job.static_width)] = result
        if self.path is not None:
            rec = {"policy": job.policy.name, "seed": job.seed, "width": job.static_width}
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({**rec, "result": converter.unstructure(result)}) + "\n")


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
    jobs = [EvalJob(data, spec, seed, levers, (widths or {}).get(spec.name)) for seed in seeds for spec in specs]
    todo = [j for j in jobs if (j.policy.name, j.seed, j.static_width) not in journal.done]
    names = [f"{j.policy.name} seed {j.seed}" for j in todo]
    for job, res in zip(todo, iter_jobs(play_episode, todo, workers, names=names), strict=True):
        journal.add(job, res)
        if on_done is not None:
            on_done(job.policy.name, res)
    results: dict[str, list[EpisodeResult]] = {}
    for job in jobs:
        results.setdefault(job.policy.name, []).append(journal.done[(job.policy.name, job.seed, job.static_width)])
    return results


def document(
    env: EnvConfig,
    policies: Sequence[PolicySpec],
    seeds: Sequence[int],
    levers: tuple[str, ...] | None,
    reference: str,
    results: dict[str, list[EpisodeResult]],
    wall: float,
) -> dict[str, Any]:
    """The ``esper.eval/1`` document for finished episodes (``esper sweep`` builds its cells with it)."""
    ref = results[reference]
    rows = []
    for spec in policies:
        rs = results[spec.name]
        per_seed = [_seed_row(r) for r in rs]
        rows.append(
            {
                "name": spec.name,
                "policy": "static" if spec.static else spec.policy,
                "forced": dict(spec.forced),
                "per_seed": per_seed,
                "mean": {m: mean_se([r.outcome(m) for r in rs])[0] for m in METRICS},
                "se": {m: mean_se([r.outcome(m) for r in rs])[1] for m in METRICS},
                "vs_reference": {
                    m: paired_difference([r.outcome(m) for r in rs], [r.outcome(m) for r in ref]).as_dict()
                    for m in METRICS
                },
                "fallbacks": sum(r.fallbacks for r in rs),
                "legal": _legal_summary(rs),
                "last_third_change": _last_third_change(rs),
            }
        )
    return {
        "schema": EVAL_SCHEMA,
        "task": env.task,
        "epochs": env.epochs,
        "env": converter.unstructure(env),
        "levers": list(levers) if levers is not None else None,
        "seeds": list(seeds),
        "reference": reference,
        "policies": rows,
        "wall_seconds": round(wall, 1),
    }


def _seed_row(r: EpisodeResult) -> dict[str, Any]:
    return {
        "seed": r.seed,
        "final_val_accuracy": r.final_val_accuracy,
        "best_val_accuracy": r.best_val_accuracy,
        "params": r.params,
        "mean_params": r.mean_params,
        "return": r.ret,
        "fallbacks": r.fallbacks,
        "fossilized": r.fossilized,
        "culled": r.culled,
        "germinate_decisions": r.germinate_decisions,
        "wall_seconds": r.wall_seconds,
        "val_accuracy_curve": list(r.curve),
        "final_val_loss": r.final_val_loss,
        "val_loss_curve": list(r.loss_curve),
        "flops": r.flops,
        "fossil_modules": [list(f) for f in r.fossil_modules],
    }


def _last_third_change(rs: Sequence[EpisodeResult]) -> dict[str, float] | None:
    """How far validation accuracy moves over the last third of the episode (the plateau test).

    Per seed: the mean of the last three epochs minus the mean of the three
    epochs ending where the last third starts; then the mean over seeds and
    its standard error. Three-epoch means keep one noisy epoch from deciding it.
    """
    changes = []
    for r in rs:
        n = len(r.curve)
        start = n - n // 3
        if n < 6 or start < 3:
            return None
        changes.append(sum(r.curve[-3:]) / 3 - sum(r.curve[start - 3 : start]) / 3)
    mean, se = mean_se(changes)
    return {"mean": mean, "se": se}


def _legal_summary(rs: Sequence[EpisodeResult]) -> dict[str, Any]:
    decisions = sum(r.germinate_decisions for r in rs)
    out: dict[str, Any] = {"germinate_decisions": decisions, "heads": {}}
    heads = rs[0].multi_legal.keys() if rs else []
    for head in heads:
        multi = sum(r.multi_legal[head] for r in rs)
        choices = {c: sum(r.legal_counts[head][c] for r in rs) for c in rs[0].legal_counts[head]}
        out["heads"][head] = {
            "multi_legal_share": multi / decisions if decisions else None,
            "choice_legal_share": {c: (n / decisions if decisions else None) for c, n in choices.items()},
        }
    return out


def _fmt_diff(d: dict[str, Any], scale: float = 1.0) -> str:
    lo, hi = d["ci95"]
    return f"{d['mean'] * scale:+.3f} [{lo * scale:+.3f}, {hi * scale:+.3f}]"


def render_markdown(doc: dict[str, Any]) -> str:
    """The eval as a Markdown table (``eval.md``)."""
    ref = doc["reference"]
    lines = [
        f"# esper eval: {doc['task']}, {doc['epochs']} epochs, {len(doc['seeds'])} paired seeds",
        "",
        f"Seeds {doc['seeds']}; paired differences are against `{ref}`, mean with 95% t-interval. "
        f"Wall time {doc['wall_seconds']} s.",
        "",
        f"| policy | final acc | Δ acc vs {ref} | val loss | Δ val loss vs {ref} | return | Δ return vs {ref} "
        "| final params | mean params | train GFLOPs | fallbacks |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in doc["policies"]:
        m, v = p["mean"], p["vs_reference"]
        same = p["name"] == ref
        lines.append(
            f"| {p['name']} | {m['final_val_accuracy']:.3f} ± {p['se']['final_val_accuracy']:.3f} "
            f"| {'—' if same else _fmt_diff(v['final_val_accuracy'])} "
            f"| {m['final_val_loss']:.3f} | {'—' if same else _fmt_diff(v['final_val_loss'])} "
            f"| {m['return']:.3f} | {'—' if same else _fmt_diff(v['return'])} "
            f"| {m['params']:,.0f} | {m['mean_params']:,.0f} | {m['flops'] / 1e9:,.2f} | {p['fallbacks']} |"
        )
    return "\n".join(lines) + "\n"


def lever_effects(doc: dict[str, Any], baseline: str = "heuristic") -> list[dict[str, Any]]:
    """Per forced head: the paired effect of its extreme choices, from an ``--effects`` eval.

    For each head forced to two or more choices in ``doc``: the paired
    difference of final accuracy last-vs-first choice, and each extreme
    against ``baseline`` (the unforced policy, which takes every default),
    with how often each choice was legal at a GERMINATE decision.
    """
    rows = {p["name"]: p for p in doc["policies"]}
    if baseline not in rows:
        raise EsperError(f"lever effects need the unforced {baseline!r} policy in the eval")

    def accs(name: str) -> list[float]:
        return [r["final_val_accuracy"] for r in rows[name]["per_seed"]]

    forced: dict[str, list[str]] = {}
    for p in doc["policies"]:
        if p["policy"] == baseline and len(p["forced"]) == 1:
            ((head, choice),) = p["forced"].items()
            forced.setdefault(head, []).append(choice)
    legal = rows[baseline]["legal"]["heads"]
    out = []
    for head, choices in forced.items():
        if len(choices) < 2:
            continue
        first, last = f"{baseline}+{head}={choices[0]}", f"{baseline}+{head}={choices[-1]}"
        effect = paired_difference(accs(last), accs(first))
        out.append(
            {
                "head": head,
                "first": choices[0],
                "last": choices[-1],
                "last_vs_first": effect.as_dict(),
                "significant_2se": abs(effect.mean) > 2 * effect.se,
                "first_vs_default": paired_difference(accs(first), accs(baseline)).as_dict(),
                "last_vs_default": paired_difference(accs(last), accs(baseline)).as_dict(),
                "fallbacks": {c: rows[f"{baseline}+{head}={c}"]["fallbacks"] for c in (choices[0], choices[-1])},
                "multi_legal_share": legal.get(head, {}).get("multi_legal_share"),
                "choice_legal_share": legal.get(head, {}).get("choice_legal_share", {}),
            }
        )
    return out


def render_effects(doc: dict[str, Any], baseline: str = "heuristic") -> str:
    """The lever-effect table (``effects.md``): extreme vs extreme, and each extreme vs the default."""
    effects = lever_effects(doc, baseline)
    lines = [
        f"# Lever effects on {doc['task']} ({doc['epochs']} epochs), {len(doc['seeds'])} paired seeds",
        "",
        f"Policy `{baseline}` with one lever head forced to an extreme choice; final validation accuracy, "
        "paired by seed: mean difference ± standard error [95% CI]. `|Δ| > 2 SE` marks an effect larger than "
        "twice its standard error. Legal shares are over the unforced policy's GERMINATE decisions.",
        "",
        "| lever | last − first | \\|Δ\\| > 2 SE | first − default | last − default | fallbacks (first/last) "
        "| >1 legal | legal share per choice |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in effects:
        d = e["last_vs_first"]
        shares = ", ".join(f"{c} {v:.0%}" for c, v in e["choice_legal_share"].items() if v is not None)
        multi = e["multi_legal_share"]
        lines.append(
            f"| {e['head']} ({e['last']} vs {e['first']}) | {d['mean']:+.3f} ± {d['se']:.3f} "
            f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] | {'yes' if e['significant_2se'] else 'no'} "
            f"| {_fmt_diff(e['first_vs_default'])} | {_fmt_diff(e['last_vs_default'])} "
            f"| {e['fallbacks'][e['first']]}/{e['fallbacks'][e['last']]} "
            f"| {'—' if multi is None else f'{multi:.0%}'} | {shares} |"
        )
    return "\n".join(lines) + "\n"


def lever_attribution(doc: dict[str, Any], base: str) -> list[dict[str, Any]]:
    """Per lever head: ``base`` minus ``base`` with that head forced to its default, paired by seed.

    What each lever earned the policy: a positive difference says the policy's
    own use of the lever beat leaving it at its default.
    """
    rows = {p["name"]: p for p in doc["policies"]}
    if base not in rows:
        raise EsperError(f"lever attribution needs the unforced {base!r} policy in the eval")
    out = []
    for p in doc["policies"]:
        if p["name"].startswith(f"{base}+") and len(p["forced"]) == 1:
            ((head, choice),) = p["forced"].items()
            diffs = {}
            for metric in ("final_val_accuracy", "return"):
                mine = [r[metric] for r in rows[base]["per_seed"]]
                pinned = [r[metric] for r in p["per_seed"]]
                diffs[metric] = paired_difference(mine, pinned).as_dict()
            out.append({"head": head, "default": choice, "fallbacks": p["fallbacks"], **diffs})
    return out


def render_attribution(doc: dict[str, Any], base: str) -> str:
    """``attribution.md``: which levers earned their keep for ``base``."""
    lines = [
        f"# Lever attribution for `{base}` on {doc['task']} ({doc['epochs']} epochs), {len(doc['seeds'])} paired seeds",
        "",
        "Each row: the policy as trained minus the same policy with one lever head held at its default, paired "
        "by seed (mean ± SE [95% CI]). Above 0: the policy's own use of that lever beat its default.",
        "",
        "| lever (held at) | Δ final accuracy | Δ return | earned its keep (return CI > 0) |",
        "|---|---|---|---|",
    ]
    for a in lever_attribution(doc, base):
        ret = a["return"]
        lines.append(
            f"| {a['head']} ({a['default']}) | {_fmt_diff(a['final_val_accuracy'])} | {_fmt_diff(ret)} "
            f"| {'yes' if ret['ci95'][0] > 0 else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def attribution_specs(base: str, registry: Registry) -> list[PolicySpec]:
    """``base`` and ``base`` with each lever head (not op, slot, blueprint, blend) forced to its default."""
    spec = parse_policy(base)
    heads = [h for h in registry.space.heads if h.name not in CORE_HEADS]
    return [spec, *(attrs.evolve(spec, forced=(*spec.forced, (h.name, h.spec.default))) for h in heads)]


def write_outputs(doc: dict[str, Any], out: Path, effects: bool = False, attribution: str | None = None) -> list[Path]:
    """``eval.json`` and ``eval.md`` (and ``effects.md``, ``attribution.md``) in ``out``, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    files = {out / "eval.json": json.dumps(doc, indent=2) + "\n", out / "eval.md": render_markdown(doc)}
    if effects:
        files[out / "effects.md"] = render_effects(doc)
    if attribution is not None:
        files[out / "attribution.md"] = render_attribution(doc, attribution)
    for name, recipe in doc.get("recipes", {}).items():
        # Playable anywhere as --policy schedule:FILE.
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name.removeprefix("recipe:")).strip("-")
        files[out / f"recipe-{slug}.toml"] = recipe["schedule"]
    for path, text in files.items():
        write_text_atomic(path, text)
    return list(files)
