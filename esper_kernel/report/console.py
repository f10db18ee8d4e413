"""What ``esper run`` prints when it ends: the result, explained, and the line to type for the plots."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

#: A final accuracy this far below the run's best is called out.
FINAL_BELOW_BEST = 0.05

RETURN_LINE = (
    "return = the sum over epochs of the change in val accuracy (the first epoch's from chance), minus a rent "
    "for parameters grown over the host as built, plus the final val accuracy once; higher is better."
)


def _fmt_choices(choices: Mapping[str, Any] | None) -> str:
    return " ".join(f"{k}={v}" for k, v in (choices or {}).items()) or "-"


def final_stage(seed: Mapping[str, Any]) -> str:
    """A seed's fate: an embargoed seed was culled (the embargo is its slot's wait, not the seed's)."""
    stage = str(seed.get("final_stage", "?"))
    return "CULLED" if stage == "EMBARGOED" else stage


def seeds_table(seeds: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(title="seeds", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("seed", "slot", "blueprint", "blend", "germinated", "fate"):
        table.add_column(col, no_wrap=True)
    colours = {"FOSSILIZED": "green", "CULLED": "red"}
    for s in seeds:
        stage = final_stage(s)
        fate = stage
        if s.get("cull_reason"):
            fate += f" ({s['cull_reason']})"
        table.add_row(
            str(s.get("seed_id")),
            str(s.get("slot")),
            str(s.get("blueprint")),
            str(s.get("blend")),
            str(s.get("germinated_epoch")),
            Text(fate.lower(), style=colours.get(stage, "yellow")),
        )
    return table


def choices_text(seeds: Sequence[Mapping[str, Any]]) -> Text:
    """Each seed's lever choices on a line of its own: too wide for a table column on a terminal."""
    text = Text("lever choices at germination\n", style="bold")
    for s in seeds:
        text.append(f"  {s.get('seed_id')}: ", style="cyan")
        text.append(_fmt_choices(s.get("choices")) + "\n")
    return text


def run_summary(summary: Mapping[str, Any]) -> RenderableType:
    """The end-of-run view: accuracy against chance, final against best, return explained, seeds, next step."""
    final = summary.get("final_val_accuracy")
    best = summary.get("best_val_accuracy")
    n_classes = summary.get("num_classes")
    lines = Text()
    if isinstance(final, float):
        lines.append("val accuracy ", style="bold")
        lines.append(f"{final:.3f}", style="bold cyan")
        lines.append(f" at the end, best {best:.3f}" if isinstance(best, float) else "")
        if isinstance(n_classes, int) and n_classes > 0:
            chance = 1.0 / n_classes
            lines.append(f"; chance is {chance:.3f} (1/{n_classes} classes)")
            if final <= chance * 1.2:
                lines.append(" - the host has barely learned", style="yellow")
        lines.append("\n")
        if isinstance(best, float) and best - final > FINAL_BELOW_BEST:
            lines.append(
                f"note: the final accuracy is {best - final:.3f} below the best; the run lost accuracy late "
                "(see where in the report's accuracy plot)\n",
                style="yellow",
            )
    ret = summary.get("return")
    if isinstance(ret, float):
        lines.append("return ", style="bold")
        lines.append(f"{ret:+.3f}", style="bold cyan")
        lines.append(f"  ({RETURN_LINE})\n", style="dim")
    params, base = summary.get("params"), summary.get("base_params")
    if isinstance(params, int) and isinstance(base, int) and base > 0:
        lines.append("parameters ", style="bold")
        lines.append(f"{params:,} ({params / base - 1:+.1%} over the host as built, {base:,})\n")
    seeds = list(summary.get("seeds") or ())
    parts: list[RenderableType] = [lines]
    if seeds:
        parts.append(seeds_table(seeds))
        parts.append(choices_text(seeds))
    else:
        parts.append(Text("no seed germinated: the host trained alone"))
    out = str(summary.get("out", "."))
    wall = summary.get("wall_seconds")
    footer = Text(f"wrote {out}/events.jsonl, summary.json, checkpoint.pt")
    if wall is not None:
        footer.append(f" in {wall}s")
    footer.append("\nplots and timeline: ")
    footer.append(f"esper report {shlex.quote(out)}", style="bold green")
    parts.append(footer)
    return Panel(Group(*parts), title="esper run: done", title_align="left")
