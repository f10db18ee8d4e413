"""The report's figures, drawn with matplotlib's object API (no pyplot, no global state).

Each function takes the data of :mod:`esper_kernel.report.events` and returns
a :class:`~matplotlib.figure.Figure`. Artists drawn from events carry a
``gid`` (``marker-<kind>``, ``span-<stage>``, ``end-<stage>``) so tests can
count what was drawn against what happened.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from esper_kernel.report.events import END_STAGES, SPAN_STAGES, RunData
from esper_kernel.report.outcomes import EvalData, TrainData

STAGE_COLOURS = {
    "GERMINATED": "#c7e9c0",
    "TRAINING": "#74c476",
    "BLENDING": "#6baed6",
    "PROBATIONARY": "#fd8d3c",
    "EMBARGOED": "#bdbdbd",
    "FOSSILIZED": "#08519c",
    "CULLED": "#cb181d",
}
MARKER_STYLE = {
    "germinate": ("^", "#238b45"),
    "blend": ("o", "#2171b5"),
    "fossilize": ("*", "#08306b"),
    "cull": ("X", "#cb181d"),
}
_DPI = 100


def _interp(x: float, xs: Sequence[float], ys: Sequence[float]) -> float:
    """``ys`` at ``x`` by linear interpolation, clamped at both ends."""
    if not xs:
        return 0.0
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys, strict=True), zip(xs[1:], ys[1:], strict=True), strict=True):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def accuracy_figure(run: RunData) -> Figure:
    """Train/val accuracy (top) and parameters (bottom) per epoch trained, stage changes marked on both."""
    fig = Figure(figsize=(10, 6.5), dpi=_DPI, layout="constrained")
    acc_ax, par_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    rows = [r for r in run.epochs if r.val_accuracy is not None]
    # epoch.completed at epoch e is measured after e + 1 epochs have trained.
    xs = [r.epoch + 1.0 for r in rows]
    val = [r.val_accuracy or 0.0 for r in rows]
    acc_ax.plot(xs, val, "-", color="#2171b5", label="val accuracy")
    train = [(r.epoch + 1.0, r.train_accuracy) for r in run.epochs if r.train_accuracy is not None]
    if train:
        acc_ax.plot([t[0] for t in train], [t[1] for t in train], "--", color="#9ecae1", label="train accuracy")
    if run.chance is not None:
        acc_ax.axhline(run.chance, color="#969696", lw=1, ls=":", label=f"chance (1/{run.num_classes})")
    # The parameters counted after epoch e are those epoch e trained with: drawn over [e, e + 1).
    pr = [(r.epoch + 0.0, float(r.params)) for r in run.epochs if r.params is not None]
    if pr:
        pr.append((pr[-1][0] + 1.0, pr[-1][1]))
    par_ax.step([p[0] for p in pr], [p[1] for p in pr], where="post", color="#525252", label="parameters")
    base = (run.summary or {}).get("base_params")
    if isinstance(base, int):
        par_ax.axhline(base, color="#969696", lw=1, ls=":", label="host as built")
    markers = run.markers()
    for kind, (shape, colour) in MARKER_STYLE.items():
        mine = [m for m in markers if m.kind == kind]
        if not mine:
            continue
        mx = [m.x for m in mine]
        acc_ax.scatter(
            mx, [_interp(x, xs, val) for x in mx], marker=shape, s=90, color=colour, zorder=5,
            edgecolors="white", linewidths=0.8, label=kind, gid=f"marker-{kind}",
        )  # fmt: skip
        for i, x in enumerate(mx):
            # One legend entry per kind: the parameter plot's lines mean what the accuracy markers mean.
            par_ax.axvline(x, color=colour, lw=0.8, alpha=0.5, label=kind if i == 0 else None)
    acc_ax.set_ylabel("accuracy")
    top = max([*val, *(t[1] or 0.0 for t in train), run.chance or 0.0, 0.0])
    acc_ax.set_ylim(0, min(1.02, top + 0.1))
    acc_ax.grid(alpha=0.3)
    acc_ax.legend(loc="lower right", fontsize=8, ncols=2)
    acc_ax.set_title("Accuracy and parameters; markers: seeds germinated, blending, fossilized, culled")
    par_ax.set_ylabel("parameters")
    par_ax.set_xlabel("epochs trained")
    par_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    par_ax.grid(alpha=0.3)
    par_ax.legend(loc="upper left", fontsize=8)
    par_ax.set_xlim(0, max(run.total_epochs, 1) + 0.5)
    return fig


def _choice_text(choices: dict[str, str] | object, width: int | None = None) -> str:
    """``k=v`` pairs; with ``width`` (characters), only the whole pairs that fit, then an ellipsis.

    A pair is never cut in two: ``isolation=DE`` would read as a choice that does not exist.
    """
    if not isinstance(choices, dict):
        return ""
    pairs = [f"{k}={v}" for k, v in choices.items()]
    if width is None:
        return " ".join(pairs)
    kept: list[str] = []
    for pair in pairs:
        if len(" ".join([*kept, pair, "…"])) > width:
            return " ".join([*kept, "…"])
        kept.append(pair)
    return " ".join(kept)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def timeline_figure(run: RunData) -> Figure:
    """One row per slot; each seed's stages as coloured spans, labelled with its blueprint and choices."""
    n = max(run.n_slots, 1)
    fig = Figure(figsize=(11, 1.2 + 1.1 * n), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    spans = run.spans()
    for stage in SPAN_STAGES:
        mine = [s for s in spans if s.stage == stage]
        for s in mine:
            ax.broken_barh(
                [(s.start, max(s.end - s.start, 0.08))], (s.slot - 0.35, 0.5),
                facecolors=STAGE_COLOURS[stage], edgecolor="white", gid=f"span-{stage}",
            )  # fmt: skip
    for stage in END_STAGES:
        ends = [c for c in run.ends() if c.new == stage]
        if ends:
            shape = "*" if stage == "FOSSILIZED" else "X"
            ax.scatter(
                [c.x for c in ends], [c.slot - 0.1 for c in ends], marker=shape, s=140,
                color=STAGE_COLOURS[stage], zorder=5, edgecolors="white", gid=f"end-{stage}",
            )  # fmt: skip
    # Characters of a 7-point label per epoch of span, from the axes' width (about 10 of the 11 inches).
    per_epoch = 10.0 / (max(run.total_epochs, 1) + 0.5) / 0.055
    for label in run.labels():
        width = max(int(max(label.end - label.x, 0.5) * per_epoch), 1)
        first = _fit(f"{label.seed_id}: {label.blueprint}", width)
        text = ax.text(
            label.x + 0.05, label.slot + 0.2, f"{first}\n{_choice_text(label.choices, width)}",
            fontsize=7, va="top", ha="left", clip_on=True,
        )  # fmt: skip
        # Each label stays within the epochs its seed occupied, so neighbours never overprint;
        # the report's seed table has every choice in full.
        box = Rectangle((label.x, label.slot - 0.4), max(label.end - label.x, 0.5), 1.0, transform=ax.transData)
        text.set_clip_path(box)
        text.set_in_layout(False)
    ax.set_yticks(range(n), [f"slot {i}" for i in range(n)])
    ax.set_ylim(n - 0.2, -0.55)
    ax.set_xlim(0, max(run.total_epochs, 1) + 0.5)
    ax.set_xlabel("epochs trained")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(axis="x", alpha=0.3)
    handles: list[Artist] = [Patch(color=STAGE_COLOURS[s], label=s.lower()) for s in SPAN_STAGES]
    handles += [
        Line2D([], [], marker="*", ls="", color=STAGE_COLOURS["FOSSILIZED"], markersize=12, label="fossilized"),
        Line2D([], [], marker="X", ls="", color=STAGE_COLOURS["CULLED"], markersize=10, label="culled"),
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.08 - 0.25 / n), ncols=7, fontsize=8)
    ax.set_title("Seed timeline: stage spans per slot (label: seed, blueprint, blend and lever choices)")
    return fig


def lever_figure(run: RunData, lever: str, keys: Sequence[str]) -> Figure:
    """Each telemetry field of one lever over epochs, one line per slot (gaps where it does not apply)."""
    cols = min(3, len(keys))
    rows_n = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4 * cols + 1, 2.8 * rows_n), dpi=_DPI, layout="constrained")
    axes = fig.subplots(rows_n, cols, squeeze=False)
    xs = [r.epoch + 1.0 for r in run.epochs]
    for i, key in enumerate(keys):
        ax: Axes = axes[i // cols][i % cols]
        for slot in range(run.n_slots):
            ys = [(r.fields.get(key, ())[slot] if slot < len(r.fields.get(key, ())) else None) for r in run.epochs]
            if all(y is None for y in ys):
                continue
            ax.plot(xs, [math.nan if y is None else y for y in ys], ".-", label=f"slot {slot}")
        ax.set_title(key, fontsize=9)
        ax.set_xlim(0, max(run.total_epochs, 1) + 0.5)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "never applied", transform=ax.transAxes, ha="center", va="center", color="#969696")
    for j in range(len(keys), rows_n * cols):
        axes[j // cols][j % cols].set_visible(False)
    fig.suptitle(f"Lever {lever}: telemetry per slot over epochs trained", fontsize=11)
    return fig


# -- training ---------------------------------------------------------------------


def returns_figure(train: TrainData) -> Figure:
    """Mean episode return per update, with the spread (min to max) of that update's episodes."""
    fig = Figure(figsize=(10, 4), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    ups = [u for u in train.updates if u.episode_returns]
    xs = [u.update for u in ups]
    ax.fill_between(
        xs, [min(u.episode_returns) for u in ups], [max(u.episode_returns) for u in ups],
        color="#9ecae1", alpha=0.5, label="min to max over the update's episodes",
    )  # fmt: skip
    ax.plot(xs, [sum(u.episode_returns) / len(u.episode_returns) for u in ups], "o-", color="#08519c", label="mean")
    ax.set_xlabel("PPO update")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("episode return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Return per update")
    return fig


def entropy_figure(train: TrainData) -> Figure:
    """Each head's entropy per update against its maximum (uniform over its choices)."""
    heads = sorted({h for u in train.updates for h in u.head_entropy}, key=_head_order(train))
    cols = min(4, max(len(heads), 1))
    rows_n = max(math.ceil(len(heads) / cols), 1)
    fig = Figure(figsize=(3.2 * cols + 1, 2.4 * rows_n), dpi=_DPI, layout="constrained")
    axes = fig.subplots(rows_n, cols, squeeze=False, sharex=True)
    xs = [u.update for u in train.updates]
    for i, head in enumerate(heads):
        ax: Axes = axes[i // cols][i % cols]
        ys = [u.head_entropy.get(head) for u in train.updates]
        ax.plot(xs, [math.nan if y is None else y for y in ys], "o-", color="#6a51a3", ms=3)
        top = train.max_entropy(head)
        if top is not None:
            ax.axhline(top, color="#969696", ls="--", lw=1, gid="max-entropy")
            ax.set_ylim(-0.05 * top - 0.01, top * 1.1 + 0.01)
        ax.set_title(head if top is None else f"{head} (max {top:.2f})", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    for j in range(len(heads), rows_n * cols):
        axes[j // cols][j % cols].set_visible(False)
    fig.suptitle("Entropy per head (dashed: the maximum, a uniform choice)", fontsize=11)
    fig.supxlabel("PPO update", fontsize=9)
    return fig


def _head_order(train: TrainData) -> Callable[[str], tuple[int, str]]:
    order = list(train.head_choices)

    def key(head: str) -> tuple[int, str]:
        return (order.index(head) if head in order else len(order), head)

    return key


def ppo_figure(train: TrainData) -> Figure:
    """Approximate KL, clip fraction and env steps per second, per update."""
    fig = Figure(figsize=(12, 3.4), dpi=_DPI, layout="constrained")
    axes = fig.subplots(1, 3)
    xs = [u.update for u in train.updates]
    series = (
        ("approx KL", [u.approx_kl for u in train.updates], "#d94801"),
        ("clip fraction", [u.clip_fraction for u in train.updates], "#8c2d04"),
        ("env steps (host epochs) / s", [u.steps_per_second for u in train.updates], "#238b45"),
    )
    for ax, (title, ys, colour) in zip(axes, series, strict=True):
        ax.plot(xs, [math.nan if y is None else y for y in ys], "o-", color=colour, ms=3)
        target = train.ppo_config.get("target_kl")
        if title == "approx KL" and isinstance(target, int | float):
            ax.axhline(target, color="#969696", ls="--", lw=1, label="target_kl (passes stop above)")
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("PPO update", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return fig


def emerged_figure(train: TrainData) -> Figure:
    """What each lever head chose at germination, by blueprint and by slot, early vs late in training."""
    heads = train.lever_heads()
    rows_n = max(len(heads), 1)
    fig = Figure(figsize=(13, 2.6 * rows_n + 0.6), dpi=_DPI, layout="constrained")
    axes = fig.subplots(rows_n, 2, squeeze=False)
    split = train.split_episode()
    for i, head in enumerate(heads):
        choices = list(train.head_choices.get(head, ()))
        for j, by in enumerate(("blueprint", "slot")):
            ax: Axes = axes[i][j]
            counts = train.choice_counts(head, by)
            for bucket in counts.values():
                choices += [c for c in bucket if c not in choices]
            groups = sorted({g for g, _ in counts})
            bottoms: list[float] = []
            positions: list[float] = []
            for gi in range(len(groups)):
                for pi in range(2):
                    positions.append(gi * 2.6 + pi)
                    bottoms.append(0.0)
            for ci, choice in enumerate(choices):
                heights = []
                for group in groups:
                    for phase in ("early", "late"):
                        bucket = counts.get((group, phase), {})
                        total = sum(bucket.values())
                        heights.append(bucket.get(choice, 0) / total if total else 0.0)
                if not any(heights):
                    continue
                bars = ax.bar(
                    positions, heights, bottom=bottoms, width=0.9, label=choice, color=f"C{ci % 10}",
                    gid=f"choice-{head}-{by}",
                )  # fmt: skip
                for bar in bars[1::2]:
                    bar.set_hatch("///")
                bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
            ax.set_xticks([gi * 2.6 + 0.5 for gi in range(len(groups))], groups, fontsize=7, rotation=20)
            ax.set_ylim(0, 1.05)
            ax.set_ylabel("share of germinations", fontsize=8)
            ax.set_title(f"{head} by {by}", fontsize=9)
            if ax.patches:
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if not heads:
        axes[0][0].text(0.5, 0.5, "no seed germinated", ha="center", va="center")
    fig.suptitle(
        f"What emerged: lever choices at germination; per group, left bar: early (episodes < {split}), "
        "right, hatched: late",
        fontsize=11,
    )
    return fig


# -- evaluation ---------------------------------------------------------------------


def eval_figure(ev: EvalData, metric: str = "final_val_accuracy") -> Figure:
    """Each policy's mean paired difference from the reference, with its 95% interval."""
    fig = Figure(figsize=(10, 1.2 + 0.55 * max(len(ev.policies), 1)), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    rows = [(p.name, p.vs_reference[metric]) for p in ev.policies if metric in p.vs_reference]
    ys = list(range(len(rows)))
    means = [iv.mean for _, iv in rows]
    lo = [iv.mean - iv.lo if iv.lo is not None and math.isfinite(iv.lo) else 0.0 for _, iv in rows]
    hi = [iv.hi - iv.mean if iv.hi is not None and math.isfinite(iv.hi) else 0.0 for _, iv in rows]
    colours = ["#238b45" if (iv.lo or 0) > 0 else "#cb181d" if (iv.hi or 0) < 0 else "#969696" for _, iv in rows]
    ax.barh(ys, means, xerr=[lo, hi], color=colours, capsize=4, gid="eval-bars")
    ax.axvline(0, color="black", lw=0.8)
    names = [f"{name} (reference)" if name == ev.reference else f"{name} (n={iv.n})" for name, iv in rows]
    ax.set_yticks(ys, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} minus {ev.reference}'s, same seeds (mean, 95% CI)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"{ev.task}: paired difference from {ev.reference} (green/red: interval excludes 0)")
    return fig
