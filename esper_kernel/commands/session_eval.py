"""``esper eval``, ``esper sweep`` and ``esper frontier``'s sessions: flags, config, progress lines and outputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import click

if TYPE_CHECKING:
    from esper_kernel.commands.evaluate import EpisodeResult, PolicySpec

from esper_kernel.commands.session import (
    Flags,
    check_env,
    load_config,
    setup_threads,
    stderr,
)
from esper_kernel.settings.config import LATEST

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
    out: str = LATEST
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

    from esper_kernel.commands import evaldoc
    from esper_kernel.commands import evaluate as ev
    from esper_kernel.commands.outdir import claim_out
    from esper_kernel.infra.workers import usable_cores
    from esper_kernel.settings.config import RunConfig

    config = load_config(RunConfig, f.config_file, **f.given)
    check_env(config.env)
    specs = _policy_specs(f, config)
    seed_list = ev.parse_seeds(f.seeds)
    n_workers = f.workers or usable_cores()
    ev.check_names(config.env, specs, f.reference, config.levers)  # before the header: a refusal is its one line
    console = stderr()
    console.print(
        f"esper eval: {len(specs)} policies x {len(seed_list)} seeds on {config.env.task} "
        f"({config.env.epochs} epochs), {n_workers} worker(s)"
    )

    def on_done(name: str, r: EpisodeResult) -> None:
        console.print(f"  {name} seed {r.seed}: acc {r.final_val_accuracy:.3f} params {r.params:,} ({r.wall_seconds}s)")
        _print_quarantines(console, name, r)

    out = claim_out(f.out, "eval")
    doc = ev.evaluate(
        config.env,
        specs,
        seed_list,
        levers=config.levers,
        reference=f.reference,
        workers=n_workers,
        on_done=on_done,
        journal=out / "episodes.jsonl",
        on_note=lambda line: console.print(f"esper eval: {line}"),
        on_lever_error=config.on_lever_error,
    )
    base = ev.parse_policy(f.attribution).name if f.attribution else None
    paths = evaldoc.write_outputs(doc, out, effects=f.effects, attribution=base)
    click.echo(evaldoc.render_markdown(doc))
    if f.effects:
        click.echo(evaldoc.render_effects(doc))
    if base is not None:
        click.echo(evaldoc.render_attribution(doc, base))
    console.print(f"wrote {', '.join(map(str, paths))} in {doc['wall_seconds']} s")


def _print_quarantines(console: Any, name: str, r: EpisodeResult) -> None:
    """Each lever quarantined in an episode, one warning line: played in a worker, perhaps, so said here."""
    from rich.markup import escape

    for q in r.quarantined:
        console.print(
            f"  [yellow]warning:[/] {name} seed {r.seed}: quarantined lever {q['lever']!r} "
            f"({q['distribution']}) at epoch {q['epoch']}: {escape(q['hook'])} failed ({escape(q['error'])})",
            highlight=False,
        )


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
    out: str = LATEST
    config_file: str | None = None
    workers: int | None = None
    ray_address: str | None = None
    threads: int | None = None


def esper_sweep(f: SweepFlags) -> None:
    """``esper sweep``: the grid's trials, one line each, then the paired table."""
    from esper_kernel.commands import evaldoc
    from esper_kernel.commands import evaluate as ev
    from esper_kernel.commands.outdir import claim_out
    from esper_kernel.commands.sweep import build_grid, parse_lever_set
    from esper_kernel.commands.sweep import sweep as run_sweep
    from esper_kernel.infra.workers import usable_cores
    from esper_kernel.settings.config import RunConfig

    setup_threads(f.threads)
    config = load_config(RunConfig, f.config_file, **f.given)
    check_env(config.env)
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
        _print_quarantines(console, name, r)

    out = claim_out(f.out, "sweep")
    doc = run_sweep(
        config.env,
        cells,
        seed_list,
        out,
        workers=n_workers,
        ray=f.ray_address,
        on_done=on_done,
        on_lever_error=config.on_lever_error,
    )
    click.echo(evaldoc.render_markdown(doc))
    console.print(f"wrote {out}/sweep.json, {out}/sweep.md and {doc['sweep']['trials']} trial directories")


# -- esper frontier ------------------------------------------------------------------------


def esper_frontier(flags: Mapping[str, Any]) -> None:
    """``esper frontier``: static hosts at every width beside the growing policies and their from-scratch controls."""
    setup_threads(flags["threads"])
    from esper_kernel.commands import frontier as fr
    from esper_kernel.commands.evaluate import parse_seeds
    from esper_kernel.commands.outdir import claim_out
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
    policies = [p for p in flags["policies"].split(",") if p.strip()]
    check_env(config.env)
    fr.check_frontier(config.env, policies, widths)
    out = claim_out(flags["out"], "frontier")
    console = stderr()
    console.print(f"esper frontier: {config.env.task} ({config.env.epochs} epochs), seeds {flags['seeds']}")

    def on_done(name: str, r: EpisodeResult) -> None:
        console.print(
            f"  {name} seed {r.seed}: acc {r.final_val_accuracy:.3f} loss {r.final_val_loss:.3f} "
            f"params {r.params:,} ({r.wall_seconds}s)"
        )

    doc = fr.frontier(
        config.env,
        policies,
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
