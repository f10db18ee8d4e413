"""``esper compare``: a table across runs, and paired differences where runs share seeds.

Runs are grouped into *arms*: runs whose configuration is the same except for
the seed and the output directory. The first directory's arm is the reference
(or ``--reference``'s); each other arm is compared with it seed by seed on the
seeds both ran, with :func:`esper_kernel.infra.stats.paired_difference`.
The ``--json`` schema (``esper.compare/1``) is documented in docs/report.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from esper_kernel.infra.numerics import describe, kind, recorded
from esper_kernel.infra.stats import paired_difference
from esper_kernel.report.events import SUMMARY, TRAIN_SUMMARY, ReportError, read_json
from esper_kernel.settings.config import PPOConfig
from esper_kernel.settings.declare import with_defaults

COMPARE_SCHEMA = "esper.compare/1"
METRICS = ("final_val_accuracy", "best_val_accuracy", "return", "params")
_SHORT = {"final_val_accuracy": "final acc", "best_val_accuracy": "best acc"}
#: Keys that differ between runs of one arm.
_PER_RUN = frozenset({"seed", "out", "checkpoint_every"})


@attrs.frozen
class RunRow:
    dir: str
    kind: str
    run_id: str
    arm: str
    seed: int | None
    policy: str | None
    task: str | None
    levers: tuple[str, ...]
    final_val_accuracy: float | None
    best_val_accuracy: float | None
    params: int | None
    base_params: int | None
    return_: float | None
    fates: Mapping[str, int]
    #: Where it ran (:func:`esper_kernel.infra.numerics.numerics`); None in files written before it was kept.
    numerics: Mapping[str, str] | None = None

    def metric(self, name: str) -> float | None:
        value = self.return_ if name == "return" else getattr(self, name)
        return None if value is None else float(value)

    def as_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["return"] = d.pop("return_")
        d["levers"] = list(self.levers)
        return d


@attrs.frozen
class Paired:
    arm: str
    reference: str
    metric: str
    mean: float
    se: float
    lo: float | None
    hi: float | None
    n: int
    seeds: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "arm": self.arm,
            "reference": self.reference,
            "metric": self.metric,
            "mean": self.mean,
            "se": self.se,
            "ci95": [self.lo, self.hi],
            "n": self.n,
            "seeds": list(self.seeds),
        }


@attrs.frozen
class Comparison:
    runs: tuple[RunRow, ...]
    arms: Mapping[str, tuple[RunRow, ...]]
    reference: str | None
    paired: tuple[Paired, ...]

    def to_json(self) -> str:
        doc = {
            "schema": COMPARE_SCHEMA,
            "runs": [r.as_dict() for r in self.runs],
            "arms": [
                {"name": name, "dirs": [r.dir for r in rows], "seeds": [r.seed for r in rows]}
                for name, rows in self.arms.items()
            ],
            "reference": self.reference,
            "paired": [p.as_dict() for p in self.paired],
        }
        return json.dumps(doc, indent=2, allow_nan=False)


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)


def _fates(seeds: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in seeds if isinstance(seeds, list) else ():
        stage = str(s.get("final_stage", "?")) if isinstance(s, dict) else "?"
        stage = "CULLED" if stage == "EMBARGOED" else stage
        counts[stage] = counts.get(stage, 0) + 1
    return counts


def _arm_key(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _PER_RUN}


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _machines(runs: Sequence[RunRow]) -> list[Mapping[str, str]]:
    """The distinct numerics the runs were computed with (those that recorded one), in order of first use."""
    seen: dict[tuple[str, ...], Mapping[str, str]] = {}
    for r in runs:
        if r.numerics is not None:
            seen.setdefault(kind(r.numerics), r.numerics)
    return list(seen.values())


def _load_one(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(row fields, arm config)`` for one directory."""
    if (path / SUMMARY).is_file():
        s = read_json(path / SUMMARY)
        config: dict[str, Any] = s["config"] if isinstance(s.get("config"), dict) else {}
        env = config.get("env") or {}
        levers = tuple(str(lv.get("name")) for lv in s.get("levers") or () if isinstance(lv, dict))
        arm = {**_arm_key(config), "levers": list(levers)}
        params, base = s.get("params"), s.get("base_params")
        return (
            {
                "kind": "run",
                "run_id": str(s.get("run_id", path.name)),
                "seed": config.get("seed"),
                "policy": config.get("policy"),
                "task": env.get("task"),
                "levers": levers,
                "final_val_accuracy": _finite(s.get("final_val_accuracy")),
                "best_val_accuracy": _finite(s.get("best_val_accuracy")),
                "params": params if isinstance(params, int) else None,
                "base_params": base if isinstance(base, int) else None,
                "return_": _finite(s.get("return")),
                "fates": _fates(s.get("seeds")),
                "numerics": recorded(s),
            },
            arm,
        )
    if (path / TRAIN_SUMMARY).is_file():
        s = read_json(path / TRAIN_SUMMARY)
        ppo = with_defaults(PPOConfig, s.get("ppo_config") or {})  # a run from before a setting: at its default
        rets = [r for r in (_finite(x) for x in s.get("episode_returns") or ()) if r is not None]
        # The return a training run ended on: the mean over its last rollout's episodes.
        last = rets[-int(ppo.get("n_envs") or 1) :] if rets else []
        env = dict(s.get("env_config") or {})
        levers = tuple(str(x) for x in s.get("levers") or ())
        arm = {"command": "train", "env": env, **{k: v for k, v in ppo.items() if k != "seed"}, "levers": list(levers)}
        return (
            {
                "kind": "train",
                "run_id": str(s.get("run_id", path.name)),
                "seed": ppo.get("seed"),
                "policy": "ppo",
                "task": env.get("task"),
                "levers": levers,
                "final_val_accuracy": None,
                "best_val_accuracy": None,
                "params": None,
                "base_params": None,
                "return_": sum(last) / len(last) if last else None,
                "fates": {},
                "numerics": recorded(s),
            },
            arm,
        )
    if not path.is_dir():
        raise ReportError(f"{path}: no such directory")
    raise ReportError(
        f"{path}: holds neither {SUMMARY} (a finished esper run) nor {TRAIN_SUMMARY} (esper train); "
        "pass the --out directory of a finished run"
    )


def _arm_names(arms: list[dict[str, Any]]) -> list[str]:
    """Name each arm by the settings that tell it apart from the others."""
    flats = [_flat(a) for a in arms]
    keys = sorted({k for f in flats for k in f})
    differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]
    names = []
    for f in flats:
        parts = []
        for k in differing:
            v = f.get(k)
            v_text = ",".join(map(str, v)) if isinstance(v, list) else str(v)
            parts.append(f"{k.removeprefix('env.')}={v_text}")
        names.append(" ".join(parts) or "all")
    return names


def compare(dirs: Sequence[Path], reference: Path | None = None) -> Comparison:
    """Load every directory, group into arms, pair each arm with the reference arm on shared seeds."""
    if not dirs:
        raise ReportError("esper compare needs at least one run directory")
    loaded = [_load_one(d) for d in dirs]
    arm_configs: list[dict[str, Any]] = []
    arm_of: list[int] = []
    for _, arm in loaded:
        key = json.dumps(arm, sort_keys=True, default=str)
        found = next((i for i, a in enumerate(arm_configs) if json.dumps(a, sort_keys=True, default=str) == key), None)
        if found is None:
            arm_configs.append(arm)
            found = len(arm_configs) - 1
        arm_of.append(found)
    names = _arm_names(arm_configs)
    runs = tuple(RunRow(dir=str(d), arm=names[a], **row) for d, (row, _), a in zip(dirs, loaded, arm_of, strict=True))
    arms: dict[str, tuple[RunRow, ...]] = {n: tuple(r for r in runs if r.arm == n) for n in names}
    for name, rows in arms.items():
        seen: dict[Any, str] = {}
        for r in rows:
            if r.seed in seen:
                raise ReportError(
                    f"{seen[r.seed]} and {r.dir} are the same arm ({name}) with the same seed {r.seed}; "
                    "compare needs one run per seed in each arm"
                )
            seen[r.seed] = r.dir
    ref_name: str | None = names[arm_of[0]]
    if reference is not None:
        match = next((r for r in runs if Path(r.dir) == reference), None)
        if match is None:
            raise ReportError(f"--reference {reference} is not one of the directories compared")
        ref_name = match.arm
    paired: list[Paired] = []
    if len(arms) > 1 and ref_name is not None:
        ref = {r.seed: r for r in arms[ref_name]}
        for name, rows in arms.items():
            if name == ref_name:
                continue
            mine = {r.seed: r for r in rows}
            for metric in METRICS:
                seeds = sorted(
                    s for s in mine.keys() & ref.keys()
                    if isinstance(s, int) and mine[s].metric(metric) is not None and ref[s].metric(metric) is not None
                )  # fmt: skip
                if not seeds:
                    continue
                a = [mine[s].metric(metric) or 0.0 for s in seeds]
                b = [ref[s].metric(metric) or 0.0 for s in seeds]
                d = paired_difference(a, b)
                paired.append(
                    Paired(name, ref_name, metric, d.mean, d.se, _finite(d.lo), _finite(d.hi), d.n, tuple(seeds))
                )
    return Comparison(runs, arms, ref_name, tuple(paired))


# -- views ---------------------------------------------------------------------


def _f(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def render(comp: Comparison) -> Any:
    """The rich table of runs, and one of paired differences when there are any."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    lever_sets = {r.levers for r in comp.runs}
    same_levers = len(lever_sets) == 1
    runs = Table(title="runs", title_justify="left")
    cols = ["run", "arm", "seed", "final acc", "best acc", "params", "return", "seeds fossil/cull/live"]
    for col in cols if same_levers else [*cols, "levers"]:
        runs.add_column(col, overflow="fold")
    for r in comp.runs:
        live = sum(n for k, n in r.fates.items() if k not in ("FOSSILIZED", "CULLED"))
        fates = f"{r.fates.get('FOSSILIZED', 0)}/{r.fates.get('CULLED', 0)}/{live}" if r.kind == "run" else "-"
        row = [
            r.dir, r.arm, str(r.seed), _f(r.final_val_accuracy), _f(r.best_val_accuracy),
            "-" if r.params is None else f"{r.params:,}", _f(r.return_, "+.3f"), fates,
        ]  # fmt: skip
        runs.add_row(*row if same_levers else [*row, ",".join(r.levers) or "-"])
    parts: list[Any] = [runs]
    kinds = _machines(comp.runs)
    if len(kinds) > 1:
        said = "; ".join(describe(m) for m in kinds)
        note = (
            f"These runs were computed on {len(kinds)} kinds of machine ({said}): one config gives slightly "
            "different floats on each, so pair runs computed on one kind (docs/report.md)."
        )
        parts.append(Text(note, style="yellow"))
    if same_levers:
        parts.append(Text(f"levers (every run): {', '.join(next(iter(lever_sets))) or 'none'}", style="dim"))
    if comp.paired:
        title = f"paired differences: arm minus reference ({comp.reference}), same seeds"
        table = Table(title=title, title_justify="left")
        for col in ("arm", "metric", "mean diff", "95% CI", "se", "n seeds"):
            table.add_column(col, overflow="fold")
        for p in comp.paired:
            spec = ",.0f" if p.metric == "params" else "+.4f"
            if p.lo is None or p.hi is None:
                ci = Text("none (1 seed)" if p.n < 2 else "-", style="dim")
            else:
                style = "green" if p.lo > 0 else "red" if p.hi < 0 else ""
                ci = Text(f"[{p.lo:{spec}}, {p.hi:{spec}}]", style=style)
            se = format(p.se, spec.lstrip("+"))
            table.add_row(p.arm, _SHORT.get(p.metric, p.metric), format(p.mean, spec), ci, se, str(p.n))
        parts.append(table)
        parts.append(
            Text(
                "An interval that excludes 0 (green: above, red: below) is a difference; one that contains 0 is a "
                "tie. One seed gives no interval: run more seeds per arm.",
                style="dim",
            )
        )
    elif len(comp.arms) > 1:
        hint = "The arms share no seed: no paired difference (run each arm on the same --seed values)."
        parts.append(Text(hint, style="yellow"))
    return Group(*parts)


def write_plot(comp: Comparison, path: Path) -> None:
    """Final accuracy (or return, for training runs) per run, grouped by arm, with each arm's mean."""
    from matplotlib.figure import Figure

    metric = "final_val_accuracy" if any(r.final_val_accuracy is not None for r in comp.runs) else "return"
    names = list(comp.arms)
    fig = Figure(figsize=(max(6.0, 1.6 * len(names) + 2), 4.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    for i, name in enumerate(names):
        ys = [v for v in (r.metric(metric) for r in comp.arms[name]) if v is not None]
        if not ys:
            continue
        ax.bar(i, sum(ys) / len(ys), color="#c6dbef", width=0.6, gid="arm-mean")
        ax.scatter([i] * len(ys), ys, color="#08519c", zorder=3, s=20, gid="run")
    ax.set_xticks(range(len(names)), [n if len(n) < 40 else n[:37] + "..." for n in names], fontsize=8, rotation=15)
    ax.set_ylabel(metric)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{metric} per arm (bar: mean; dots: runs)")
    fig.savefig(path)
