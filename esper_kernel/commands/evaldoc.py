"""``esper eval``'s results and what is written of them: each episode, the paired ``eval.json``, its Markdown.

The document (schema ``esper.eval/1``, ``docs/eval.md``) pairs every policy
with the reference seed by seed (:mod:`esper_kernel.infra.stats`); the
renderers print its tables, the lever effects and the lever attribution.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from esper_kernel.compose.watch import merge_levers
from esper_kernel.infra.errors import EsperError
from esper_kernel.infra.files import write_text_atomic
from esper_kernel.infra.numerics import numerics
from esper_kernel.infra.stats import mean_se, paired_difference
from esper_kernel.settings.config import EnvConfig, converter
from esper_kernel.tamiyo.catalogue import PolicySpec

EVAL_SCHEMA = "esper.eval/1"
#: The outcomes every policy is compared on, seed by seed.
METRICS = ("final_val_accuracy", "final_val_loss", "return", "params", "mean_params", "flops")


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
    #: The state before each decision, one per epoch: ``{"plateau": epochs without a new best,
    #: "fates": each slot's last seed's end ("fossilized", "culled" or None)}`` (``esper report``'s reaction tables).
    states: tuple[dict[str, Any], ...] = ()
    #: What ``esper run``'s summary says of its levers: seconds per lever and hook, the levers quarantined
    #: (``--on-lever-error quarantine``: lever, distribution, hook, error, epoch), ``--compile``'s counts.
    hook_seconds: dict[str, dict[str, float]] = attrs.Factory(dict)
    quarantined: tuple[dict[str, Any], ...] = ()
    compile: dict[str, Any] | None = None

    def outcome(self, metric: str) -> float:
        return self.ret if metric == "return" else float(getattr(self, metric))


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
                **_levers_row(rs),
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
        "numerics": numerics(),
    }


def _levers_row(rs: Sequence[EpisodeResult]) -> dict[str, Any]:
    """A policy's lever report over its episodes, as ``esper run``'s summary has it: every quarantine (with
    its seed), hook seconds summed, ``--compile`` counts summed (only when compiled)."""
    merged = merge_levers(
        {
            "hook_seconds": r.hook_seconds,
            "quarantined": [{"seed": r.seed, **q} for q in r.quarantined],
            "compile": r.compile,
        }
        for r in rs
    )
    return {k: v for k, v in merged.items() if k != "compile" or v is not None}


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
    lines += _quarantine_lines(doc)
    return "\n".join(lines) + "\n"


def _quarantine_lines(doc: dict[str, Any]) -> list[str]:
    """Every quarantine, under the table: an episode that lost a lever is not the episode its pair played."""
    found = [(p["name"], q) for p in doc["policies"] for q in p.get("quarantined", ())]
    if not found:
        return []
    lines = [
        "",
        f"**{len(found)} lever quarantine(s)** (`--on-lever-error quarantine`); those episodes ran on without:",
    ]
    for name, q in found:
        lines.append(
            f"- {name} seed {q['seed']}: lever `{q['lever']}` ({q['distribution']}), {q['hook']} failed "
            f"at epoch {q['epoch']}: {q['error']}"
        )
    return lines


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
