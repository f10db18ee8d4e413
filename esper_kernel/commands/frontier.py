"""``esper frontier``: accuracy (or validation loss) for parameters and for compute, growth beside static hosts.

On the same seeds it plays:

* the task's **static-host family** (``Task.widths``, or ``--widths``): the
  starting host at each width, never growing (the ``wait`` policy);
* each **growing policy** (``heuristic`` by default; any ``esper eval`` spec);
* for each growing policy, the **from-scratch control**: on each seed, the
  architecture that policy grew there (every fossilized module, in its slot,
  at its width) built into the host at epoch 0 and trained for the same
  epochs, never growing. It is paired with the growing run by seed.

Each run reports its final metric, its mean and final parameter count and its
training FLOPs (:mod:`esper_kernel.grow.flops`: estimated per epoch from the host and
the live seeds). Growth pays where its points lie above the static curve.

Outputs (``OUT/frontier.json``, schema ``esper.frontier/1``, ``OUT/frontier.md``
and ``OUT/frontier.png``) are documented in ``docs/growth.md``; every episode
is journalled in ``OUT/episodes.jsonl`` as it finishes, and a rerun of the same
command plays only what is missing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from esper_kernel.commands.evaluate import EpisodeResult, EvalJob, play_episode
from esper_kernel.commands.journal import Journal
from esper_kernel.data.taskplugins import find_task
from esper_kernel.episode.env import load_task, size_host
from esper_kernel.infra.errors import EsperError
from esper_kernel.infra.files import write_text_atomic
from esper_kernel.infra.numerics import numerics
from esper_kernel.infra.stats import mean_se, paired_difference
from esper_kernel.infra.workers import iter_jobs
from esper_kernel.settings.config import EnvConfig, converter
from esper_kernel.settings.declare import range_problems
from esper_kernel.tamiyo.catalogue import PolicySpec, parse_policy

__all__ = ["FRONTIER_SCHEMA", "frontier", "render_markdown", "write_outputs"]

FRONTIER_SCHEMA = "esper.frontier/1"
_OUTCOMES = ("final_val_accuracy", "final_val_loss", "params", "mean_params", "flops")


@attrs.frozen
class _Arm:
    """One row of the frontier: what is played, on which seeds."""

    kind: str  # "static", "growing" or "scratch"
    name: str
    spec: PolicySpec
    width: int | None = None
    #: For a scratch arm: the growing arm whose architectures it trains from epoch 0.
    of: str | None = None


def _play(
    arms: Sequence[_Arm],
    jobs: Sequence[tuple[_Arm, EvalJob]],
    journal: Journal,
    workers: int,
    on_done: Callable[[str, EpisodeResult], None] | None,
) -> None:
    todo = [(a, j) for a, j in jobs if (a.name, j.seed) not in journal.done]
    names = [f"{a.name} seed {j.seed}" for a, j in todo]
    results = iter_jobs(play_episode, [j for _, j in todo], workers, names=names)
    for (arm, job), res in zip(todo, results, strict=True):
        journal.record((arm.name, job.seed), res)
        if on_done is not None:
            on_done(arm.name, res)


def check_frontier(
    env: EnvConfig, growing: Sequence[str], widths: Sequence[int] | None
) -> tuple[tuple[int, ...], list[PolicySpec]]:
    """The static family's widths and the growing policies, checked before anything is written."""
    task = find_task(env.task).task
    family = tuple(widths) if widths else task.widths
    if len(family) < 1:
        raise EsperError(f"task {env.task!r} declares no static-host widths; pass --widths A,B,C,D")
    for w in family:  # the range --width declares, read from its one declaration
        if problems := range_problems(attrs.evolve(env, width=w)):
            raise EsperError(f"--widths: {w} is not a width; {problems[0]}")
    twice = sorted({w for w in family if family.count(w) > 1})
    if twice:
        raise EsperError(f"--widths: {twice[0]} is given twice; each static host is played once")
    data = load_task(env, 0)
    for w in family:  # a static host the memory limit refuses is refused here, not after the others ran
        try:
            size_host(attrs.evolve(env, width=w), data)
        except EsperError as exc:
            raise EsperError(f"--widths {w}: {exc}") from exc
    specs = [parse_policy(p, flag="--policies") for p in growing]
    if any(s.static or s.policy == "wait" for s in specs):
        raise EsperError("--policies: name growing policies only; the static family and wait are played anyway")
    return family, specs


def frontier(
    env: EnvConfig,
    growing: Sequence[str],
    seeds: Sequence[int],
    *,
    widths: Sequence[int] | None = None,
    levers: tuple[str, ...] | None = None,
    scratch: bool = True,
    workers: int = 1,
    out: Path,
    on_done: Callable[[str, EpisodeResult], None] | None = None,
) -> dict[str, Any]:
    """Play the static family, the growing policies and their from-scratch controls; the ``esper.frontier/1`` doc."""
    family, specs = check_frontier(env, growing, widths)
    data = converter.unstructure(env)
    started = time.perf_counter()
    header = {"schema": FRONTIER_SCHEMA, "env": data, "levers": levers}
    journal = Journal(out / "episodes.jsonl", header, fields=("arm", "seed"), holds="frontier")
    wait = parse_policy("wait", flag="--policies")
    statics = [_Arm("static", f"static-w{w}", wait, width=w) for w in family]
    grow_arms = [_Arm("growing", s.name, s) for s in specs]
    first = [(a, EvalJob(data, a.spec, s, levers, a.width)) for s in seeds for a in [*statics, *grow_arms]]
    _play([*statics, *grow_arms], first, journal, workers, on_done)
    arms = [*statics, *grow_arms]
    if scratch:
        scratch_arms = [_Arm("scratch", f"scratch:{a.name}", wait, of=a.name) for a in grow_arms]
        jobs = [
            (a, EvalJob(data, wait, s, levers, fossils=journal.done[(a.of, s)].fossil_modules))
            for s in seeds
            for a in scratch_arms
            if a.of is not None
        ]
        _play(scratch_arms, jobs, journal, workers, on_done)
        arms += scratch_arms
    results = {a.name: [journal.done[(a.name, s)] for s in seeds] for a in arms}
    return document(env, find_task(env.task).task.metric, arms, seeds, results, time.perf_counter() - started)


def _summary(rs: Sequence[EpisodeResult]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {"mean": {}, "se": {}}
    for m in _OUTCOMES:
        mean, se = mean_se([float(getattr(r, m)) for r in rs])
        out["mean"][m], out["se"][m] = mean, se
    return out


def _metric_key(metric: str) -> str:
    return "final_val_loss" if metric == "val_loss" else "final_val_accuracy"


def document(
    env: EnvConfig,
    metric: str,
    arms: Sequence[_Arm],
    seeds: Sequence[int],
    results: dict[str, list[EpisodeResult]],
    wall: float,
) -> dict[str, Any]:
    """The ``esper.frontier/1`` document (schema in docs/growth.md)."""
    key = _metric_key(metric)
    points = []
    for a in arms:
        rs = results[a.name]
        points.append(
            {
                "kind": a.kind,
                "name": a.name,
                "width": a.width,
                "of": a.of,
                **_summary(rs),
                "per_seed": [
                    {"seed": r.seed, **{m: getattr(r, m) for m in _OUTCOMES}, "fossil_modules": r.fossil_modules}
                    for r in rs
                ],
            }
        )
    return {
        "schema": FRONTIER_SCHEMA,
        "task": env.task,
        "metric": metric,
        "metric_key": key,
        "higher_is_better": metric != "val_loss",
        "epochs": env.epochs,
        "seeds": list(seeds),
        "env": converter.unstructure(env),
        "points": points,
        "comparisons": _comparisons(arms, results, key, metric != "val_loss"),
        "wall_seconds": round(wall, 1),
        "numerics": numerics(),
    }


def _comparisons(
    arms: Sequence[_Arm], results: dict[str, list[EpisodeResult]], key: str, higher: bool
) -> list[dict[str, Any]]:
    """Per growing policy: against its from-scratch control, and against the cheapest static host that matches it."""
    statics = sorted((a for a in arms if a.kind == "static"), key=lambda a: a.width or 0)
    out = []
    for g in (a for a in arms if a.kind == "growing"):
        grown = results[g.name]
        g_metric, _ = mean_se([float(getattr(r, key)) for r in grown])
        g_flops, _ = mean_se([float(r.flops or 0.0) for r in grown])
        row: dict[str, Any] = {"policy": g.name}
        for s in statics:
            mean, _ = mean_se([float(getattr(r, key)) for r in results[s.name]])
            if (mean >= g_metric) if higher else (mean <= g_metric):
                s_flops, _ = mean_se([float(r.flops or 0.0) for r in results[s.name]])
                row["smallest_static_matching"] = {"name": s.name, "width": s.width, key: mean, "flops": s_flops}
                row["flops_ratio_vs_static"] = g_flops / s_flops if s_flops else None
                break
        else:
            row["smallest_static_matching"] = None
            row["flops_ratio_vs_static"] = None
        sc = next((a for a in arms if a.kind == "scratch" and a.of == g.name), None)
        if sc is not None:
            scr = results[sc.name]
            diff = paired_difference([float(getattr(r, key)) for r in grown], [float(getattr(r, key)) for r in scr])
            s_flops, _ = mean_se([float(r.flops or 0.0) for r in scr])
            row["vs_scratch"] = {
                "scratch": sc.name,
                f"{key}_difference": diff.as_dict(),
                "flops_ratio": g_flops / s_flops if s_flops else None,
            }
        out.append(row)
    return out


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render_markdown(doc: dict[str, Any]) -> str:
    """The frontier as Markdown tables (``frontier.md``)."""
    key = doc["metric_key"]
    lines = [
        f"# esper frontier: {doc['task']}, {doc['epochs']} epochs, {len(doc['seeds'])} paired seeds",
        "",
        f"Metric: {key} ({'higher' if doc['higher_is_better'] else 'lower'} is better); "
        f"mean ± standard error over seeds {doc['seeds']}. Wall time {doc['wall_seconds']} s.",
        "",
        "| run | kind | final acc | val loss | final params | mean params | train GFLOPs |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in doc["points"]:
        m, se = p["mean"], p["se"]
        lines.append(
            f"| {p['name']} | {p['kind']} | {m['final_val_accuracy']:.3f} ± {se['final_val_accuracy']:.3f} "
            f"| {m['final_val_loss']:.3f} ± {se['final_val_loss']:.3f} | {m['params']:,.0f} "
            f"| {m['mean_params']:,.0f} | {m['flops'] / 1e9:,.2f} |"
        )
    lines += [
        "",
        "| growing policy | smallest static that matches it | FLOPs ratio | vs from-scratch (paired) "
        "| FLOPs ratio vs scratch |",
        "|---|---|---|---|---|",
    ]
    for c in doc["comparisons"]:
        st = c["smallest_static_matching"]
        vs = c.get("vs_scratch")
        if vs is not None:
            d = vs[f"{key}_difference"]
            vs_text = f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
        else:
            vs_text = "—"
        lines.append(
            f"| {c['policy']} | {st['name'] if st else 'none reaches it'} | {_fmt(c['flops_ratio_vs_static'], 2)} "
            f"| {vs_text} | {_fmt(vs['flops_ratio'] if vs else None, 2)} |"
        )
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> Path:
    """``frontier.png``: the metric against mean parameters and against training FLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = doc["metric_key"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, x_key, label in ((axes[0], "mean_params", "mean parameters"), (axes[1], "flops", "training FLOPs")):
        statics = [p for p in doc["points"] if p["kind"] == "static"]
        ax.errorbar(
            [p["mean"][x_key] for p in statics],
            [p["mean"][key] for p in statics],
            yerr=[p["se"][key] for p in statics],
            marker="o",
            color="grey",
            label="static hosts",
        )
        for p in doc["points"]:
            if p["kind"] == "static":
                continue
            marker = "*" if p["kind"] == "growing" else "s"
            ax.errorbar(
                [p["mean"][x_key]], [p["mean"][key]], yerr=[p["se"][key]], marker=marker, markersize=10, label=p["name"]
            )
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{doc['task']}: {key} for parameters and compute ({len(doc['seeds'])} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(doc: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "frontier.json", out / "frontier.md"]
    write_text_atomic(paths[0], json.dumps(doc, indent=2) + "\n")
    write_text_atomic(paths[1], render_markdown(doc))
    paths.append(plot(doc, out / "frontier.png"))
    return paths
