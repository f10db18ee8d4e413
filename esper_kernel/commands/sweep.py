"""``esper sweep``: a grid of eval cells over lever sets, forced choices, policies and seeds.

A sweep is many ``esper eval`` cells: each *trial* is one policy spec (a
policy with some lever heads forced, :class:`~esper_kernel.commands.evaluate.PolicySpec`)
played on one seed under one lever set, by
:func:`~esper_kernel.commands.evaluate.play_episode`, exactly as ``esper eval``
plays it. Trials run on Ray Tune's grid search when ``ray`` is given (an
address, or ``""`` for ``RAY_ADDRESS`` or a local instance), else on the
local process pool (:func:`~esper_kernel.infra.workers.map_jobs`).

Every lever set also gets the ``wait`` control, and each of its cells is
paired, seed by seed, against that set's ``wait`` (the eval's reference). The
result is one ``esper.eval/1`` document (``sweep.json``; rows are named
``[LEVERS] SPEC``) and its table (``sweep.md``), the same table ``esper eval``
prints, plus one directory per trial holding ``trial.json``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from esper_kernel.commands import evaldoc
from esper_kernel.commands import evaluate as ev
from esper_kernel.episode.env import EnvConfig
from esper_kernel.infra.errors import EsperError
from esper_kernel.infra.numerics import numerics
from esper_kernel.infra.workers import map_jobs
from esper_kernel.settings.config import converter
from esper_kernel.tamiyo.catalogue import expand

REFERENCE = "wait"


@attrs.frozen
class Cell:
    """One eval cell: a policy spec under a lever set (None: every installed lever)."""

    levers: tuple[str, ...] | None
    spec: ev.PolicySpec

    @property
    def lever_label(self) -> str:
        return "all" if self.levers is None else (",".join(self.levers) or "none")

    @property
    def name(self) -> str:
        return f"[{self.lever_label}] {self.spec.name}"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", f"{self.lever_label}__{self.spec.name}")


def parse_lever_set(text: str) -> tuple[str, ...] | None:
    """``tempo,lr`` -> ("tempo", "lr"); ``all`` -> None (every installed lever); ``none`` -> ()."""
    text = text.strip()
    if text == "all":
        return None
    if text == "none":
        return ()
    names = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    if not names:
        raise EsperError(f"--lever-set: {text!r} names no lever (use 'all' or 'none')")
    return names


def build_grid(
    lever_sets: Sequence[tuple[str, ...] | None], policies: Sequence[str], forces: Sequence[str]
) -> list[Cell]:
    """Every lever set x policy x forced choice (each ``--force`` value one grid value), plus each set's ``wait``.

    A ``--force`` value may pin several heads at once: ``tempo=GLACIAL+lr=BOLD``.
    Without ``--force`` each policy runs unforced.
    """
    if not policies:
        raise EsperError("--policies names no policy")
    forced_sets: list[tuple[tuple[str, str], ...]] = [
        tuple(ev.parse_force(part) for part in f.split("+") if part.strip()) for f in forces
    ] or [()]
    cells: list[Cell] = []
    for levers in lever_sets or [None]:
        specs = [ev.parse_policy(REFERENCE)]
        for policy in [p for text in policies for p in expand(text)]:
            for forced in forced_sets:
                spec = ev.parse_policy("+".join([policy, *(f"{h}={c}" for h, c in forced)]))
                if spec.static:
                    raise EsperError("esper sweep runs no static-host control; use esper eval for that")
                if spec.name not in {s.name for s in specs}:
                    specs.append(spec)
        cells += [Cell(levers, s) for s in specs]
    return cells


def _trial_dir(out: Path, cell: Cell, seed: int) -> Path:
    return out / "trials" / cell.slug / f"seed-{seed}"


def _episode_json(result: ev.EpisodeResult) -> str:
    return json.dumps(attrs.asdict(result))


def _episode_from_json(text: str) -> ev.EpisodeResult:
    return ev.EpisodeResult(**json.loads(text))


def _run_local(jobs: Sequence[ev.EvalJob], names: Sequence[str], workers: int) -> list[ev.EpisodeResult]:
    return map_jobs(ev.play_episode, jobs, workers, names=names)


def _tune_trial(config: dict[str, Any], jobs: Sequence[ev.EvalJob]) -> None:
    from ray import tune

    result = ev.play_episode(jobs[config["trial"]])
    tune.report({"episode": _episode_json(result), "return_": result.ret})


def _run_tune(
    jobs: Sequence[ev.EvalJob], names: Sequence[str], workers: int, out: Path, address: str
) -> list[ev.EpisodeResult]:
    from esper_kernel.tamiyo.raypool import init_ray

    init_ray(address or None)
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(_tune_trial, jobs=list(jobs)), {"cpu": 1})
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(list(range(len(jobs))))},
        tune_config=tune.TuneConfig(max_concurrent_trials=workers, reuse_actors=False),
        run_config=tune.RunConfig(name="tune", storage_path=str((out / "ray").resolve()), verbose=0, log_to_file=False),
    )
    grid = tuner.fit()
    found: dict[int, ev.EpisodeResult] = {}
    for i in range(len(grid)):
        res = grid[i]
        index = int((res.config or {})["trial"])
        metrics = res.metrics or {}
        if res.error is not None or "episode" not in metrics:
            cause = " ".join(str(res.error).split())[:300] if res.error is not None else "no result reported"
            raise EsperError(f"sweep trial {names[index]} failed: {cause}")
        found[index] = _episode_from_json(metrics["episode"])
    return [found[i] for i in range(len(jobs))]


def _write_trials(
    out: Path,
    trials: Sequence[tuple[Cell, int]],
    results: Sequence[ev.EpisodeResult],
    on_done: Callable[[str, ev.EpisodeResult], None] | None,
) -> dict[Cell, list[ev.EpisodeResult]]:
    """One ``trial.json`` per trial; the results grouped by cell, in seed order."""
    by_cell: dict[Cell, list[ev.EpisodeResult]] = {}
    for (cell, seed), res in zip(trials, results, strict=True):
        by_cell.setdefault(cell, []).append(res)
        trial_dir = _trial_dir(out, cell, seed)
        trial_dir.mkdir(parents=True, exist_ok=True)
        record = {"cell": cell.name, "levers": cell.levers, "policy": cell.spec.name, "seed": seed, **attrs.asdict(res)}
        (trial_dir / "trial.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if on_done is not None:
            on_done(cell.name, res)
    return by_cell


def sweep(
    env: EnvConfig,
    cells: Sequence[Cell],
    seeds: Sequence[int],
    out: Path,
    *,
    workers: int = 1,
    ray: str | None = None,
    on_done: Callable[[str, ev.EpisodeResult], None] | None = None,
    on_lever_error: str = "stop",
) -> dict[str, Any]:
    """Run every cell on every seed; write the trial directories, ``sweep.json`` and ``sweep.md``; return the doc.

    ``on_lever_error="quarantine"``: a lever failing in a trial is quarantined for the rest of
    that trial's episode (as in ``esper eval``); each quarantine is in its ``trial.json`` and
    under the table.
    """
    started = time.perf_counter()
    data = converter.unstructure(env)
    trials = [(cell, seed) for cell in cells for seed in seeds]
    jobs = [ev.EvalJob(data, cell.spec, seed, cell.levers, on_error=on_lever_error) for cell, seed in trials]
    names = [f"{cell.name} seed {seed}" for cell, seed in trials]
    results = _run_tune(jobs, names, workers, out, ray) if ray is not None else _run_local(jobs, names, workers)
    by_cell = _write_trials(out, trials, results, on_done)
    rows: list[dict[str, Any]] = []
    lever_sets = list(dict.fromkeys(c.levers for c in cells))
    for levers in lever_sets:
        mine = [c for c in cells if c.levers == levers]
        part = evaldoc.document(  # the eval's own rows and pairing, one lever set at a time
            env, [c.spec for c in mine], seeds, levers, REFERENCE, {c.spec.name: by_cell[c] for c in mine}, 0.0
        )
        for cell, row in zip(mine, part["policies"], strict=True):
            rows.append({**row, "name": cell.name, "levers": list(cell.levers) if cell.levers is not None else None})
    doc = {
        "schema": ev.EVAL_SCHEMA,
        "task": env.task,
        "epochs": env.epochs,
        "env": data,
        "levers": None,
        "seeds": list(seeds),
        "reference": REFERENCE,
        "policies": rows,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "numerics": numerics(),
        "sweep": {
            "engine": "ray-tune" if ray is not None else "processes",
            "lever_sets": [list(s) if s is not None else None for s in lever_sets],
            "cells": len(cells),
            "trials": len(trials),
            "paired_against": f"{REFERENCE} of the same lever set",
        },
        **({"on_lever_error": on_lever_error} if on_lever_error != "stop" else {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (out / "sweep.md").write_text(evaldoc.render_markdown(doc), encoding="utf-8")
    return doc
