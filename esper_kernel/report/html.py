"""``esper report``: one self-contained ``report.html`` (images embedded) and the PNGs beside it."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from matplotlib.figure import Figure

from esper_kernel.infra.numerics import describe, recorded
from esper_kernel.report import plots
from esper_kernel.report.console import final_stage
from esper_kernel.report.emergence import HEADER, Pick, choice_tests, markdown, rows
from esper_kernel.report.events import RunData
from esper_kernel.report.outcomes import EvalData, TrainData, load
from esper_kernel.report.reacts import Episode, reaction_tables, tasks_of
from esper_kernel.report.reacts import markdown as react_markdown

REPORT = "report.html"

RETURN_MEANING = (
    "Return is the episode's total reward: each epoch's change in validation accuracy (the first epoch's "
    "from chance), minus a parameter rent for every parameter grown over the host as built, plus the final "
    "validation accuracy once at the end. Higher is better; it trades accuracy against size."
)


@attrs.frozen
class Section:
    id: str
    title: str
    body: str


@attrs.frozen
class Report:
    """What ``esper report`` wrote."""

    kind: str
    html: Path
    pngs: tuple[Path, ...]
    sections: tuple[str, ...]


class _Writer:
    """Saves each figure as a PNG beside the report and keeps its bytes for embedding."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.pngs: list[Path] = []

    def image(self, fig: Figure, name: str, alt: str) -> str:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        data = buf.getvalue()
        path = self.out / f"{name}.png"
        path.write_bytes(data)
        self.pngs.append(path)
        b64 = base64.b64encode(data).decode("ascii")
        return f'<figure><img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}"></figure>'


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    head = ""
    if header is not None:
        head = "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>"
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _machine(found: Mapping[str, str] | None) -> str:
    """Where a summary's numbers were computed: another kind of machine gives slightly other floats."""
    return describe(found) if found is not None else "not recorded"


def _flat(config: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in config.items():
        if isinstance(v, dict):
            rows += _flat(v, f"{prefix}{k}.")
        else:
            rows.append((f"{prefix}{k}", v))
    return rows


def _levers_html(levers: Sequence[Mapping[str, Any]], failed: Sequence[Mapping[str, Any]]) -> str:
    parts = ["<h3>Levers</h3>"]
    if levers:
        parts.append(
            _table([(lv.get("name"), lv.get("distribution"), lv.get("version")) for lv in levers],
                   ("lever", "distribution", "version"))
        )  # fmt: skip
    else:
        parts.append("<p>No lever was active: only the kernel's heads decided.</p>")
    if failed:
        parts.append('<h3 class="bad">Levers that failed to load</h3>')
        parts.append(
            _table([(f.get("name"), f.get("distribution"), f.get("entry_point"), f.get("error")) for f in failed],
                   ("lever", "distribution", "entry point", "error"))
        )  # fmt: skip
    return "".join(parts)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _run_summary_html(run: RunData) -> str:
    """The summary table, with a note where the run lost accuracy late or did not finish."""
    s = run.summary or {}
    final, best = s.get("final_val_accuracy"), s.get("best_val_accuracy")
    if final is None and run.epochs:
        final = run.epochs[-1].val_accuracy
        best = max((r.val_accuracy or 0.0) for r in run.epochs)
    env = run.config.get("env") or {}
    rows: list[tuple[str, Any]] = [
        ("run id", run.run_id),
        ("task", env.get("task")),
        ("policy", run.config.get("policy")),
        ("seed", run.config.get("seed")),
        ("epochs trained", run.total_epochs),
        ("final val accuracy", _pct(final)),
        ("best val accuracy", _pct(best)),
        ("chance level", "-" if run.chance is None else f"{run.chance:.3f} (1/{run.num_classes})"),
        ("return", s.get("return")),
        ("parameters", f"{s.get('base_params', '-')} as built, {s.get('params', '-')} at the end"),
        ("seeds' fates", ", ".join(f"{n} {k.lower()}" for k, n in sorted(run.fates().items())) or "no seed"),
        ("computed on", _machine(recorded(s))),
    ]
    notes = []
    if isinstance(final, float) and isinstance(best, float) and best - final > 0.05:
        notes.append(
            f"<p class='bad'>The final accuracy ({final:.3f}) is well below the best ({best:.3f}): the run "
            "lost accuracy late; see where on the accuracy plot.</p>"
        )
    if s == {}:
        notes.append("<p class='bad'>No summary.json: the run did not finish (interrupted or crashed).</p>")
    return _table(rows) + "".join(notes) + f"<p>{html.escape(RETURN_MEANING)}</p>"


def _seeds_html(seeds: list[dict[str, Any]]) -> str:
    seed_rows = [
        (x.get("seed_id"), x.get("slot"), x.get("blueprint"), x.get("blend"), x.get("germinated_epoch"),
         final_stage(x), x.get("cull_reason"), " ".join(f"{k}={v}" for k, v in (x.get("choices") or {}).items()))
        for x in seeds
    ]  # fmt: skip
    if not seed_rows:
        return "<p>No seed germinated.</p>"
    return _table(seed_rows, ("seed", "slot", "blueprint", "blend", "germinated", "fate", "cull reason", "choices"))


def run_sections(run: RunData, w: _Writer) -> list[Section]:
    summary = _run_summary_html(run)
    acc = w.image(plots.accuracy_figure(run), "accuracy", "accuracy and parameters per epoch")
    timeline = w.image(plots.timeline_figure(run), "timeline", "seed timeline per slot")
    lever_imgs = [
        w.image(plots.lever_figure(run, lever, keys), f"lever-{lever}", f"telemetry of lever {lever}")
        for lever, keys in run.lever_fields().items()
    ]
    seeds_html = _seeds_html((run.summary or {}).get("seeds") or [])
    return [
        Section("summary", "Summary", summary),
        Section(
            "accuracy",
            "Accuracy and parameters",
            acc + "<p>Markers sit on the validation curve where a seed germinated (triangle), started blending "
            "(circle), was fossilized (star) or culled (cross); the same moments are vertical lines on the "
            "parameter plot.</p>",
        ),
        Section("timeline", "Seed timeline", timeline + seeds_html),
        Section(
            "levers",
            "Lever telemetry",
            "".join(lever_imgs) or "<p>No lever declared telemetry.</p>",
        ),
        Section(
            "config",
            "Configuration and levers",
            _table(_flat(run.config)) + _levers_html(run.levers, run.failed_levers),
        ),
    ]


def train_sections(train: TrainData, w: _Writer) -> list[Section]:
    s = train.summary or {}
    rets = [r for u in train.updates for r in u.episode_returns]
    sps = [u.steps_per_second for u in train.updates if u.steps_per_second is not None]
    rows: list[tuple[str, Any]] = [
        ("run id", train.run_id),
        ("task", train.env_config.get("task")),
        ("episodes", s.get("episodes", len(rets))),
        ("updates", len(train.updates)),
        ("epochs per episode", train.env_config.get("epochs")),
        ("first update's mean return", train.updates[0].mean_return if train.updates else None),
        ("last update's mean return", train.updates[-1].mean_return if train.updates else None),
        ("median env steps / s", sorted(sps)[len(sps) // 2] if sps else None),
        ("wall seconds", s.get("seconds")),
        ("computed on", _machine(recorded(s))),
    ]
    summary = _table(rows) + f"<p>{html.escape(RETURN_MEANING)}</p>"
    return [
        Section("summary", "Summary", summary),
        Section(
            "returns",
            "Return per update",
            w.image(plots.returns_figure(train), "returns", "return per PPO update")
            + "<p>The band is the spread of the episodes collected for that update.</p>",
        ),
        Section(
            "entropy",
            "Entropy per head",
            w.image(plots.entropy_figure(train), "entropy", "entropy per head")
            + "<p>A head near its maximum still chooses at random; one at 0 has settled on one choice (or "
            "only one choice was ever legal).</p>",
        ),
        Section(
            "ppo",
            "KL, clip fraction, speed",
            w.image(plots.ppo_figure(train), "ppo", "approx KL, clip fraction and steps per second"),
        ),
        Section(
            "emerged",
            "What emerged",
            w.image(plots.emerged_figure(train), "emerged", "lever choices per blueprint and slot, early vs late"),
        ),
        Section("tested", "Preferences, tested", _emergence_html(train.picks, "early and late in training")),
        *(
            [Section("reacts", "What drives its choices", _reacts_html(late, _task(train), _REACTS_TRAIN))]
            if (late := _policy_episodes(train))
            else []
        ),
        Section(
            "config",
            "Configuration and levers",
            "<h3>Environment</h3>"
            + _table(_flat(train.env_config))
            + "<h3>PPO</h3>"
            + _table(_flat(train.ppo_config))
            + _levers_html(train.levers, train.failed_levers),
        ),
    ]


def _interval(p: Any, metric: str) -> str:
    iv = p.vs_reference.get(metric)
    if iv is None:
        return "-"
    lo = "-" if iv.lo is None else f"{iv.lo:+.4f}"
    hi = "-" if iv.hi is None else f"{iv.hi:+.4f}"
    return f"{iv.mean:+.4f} [{lo}, {hi}]"


def eval_sections(ev: EvalData, w: _Writer) -> list[Section]:
    rows = [
        (p.name, p.n_seeds, p.mean.get("final_val_accuracy"), p.mean.get("params"), p.mean.get("mean_params"),
         p.mean.get("return"), _interval(p, "final_val_accuracy"), _interval(p, "return"))
        for p in ev.policies
    ]  # fmt: skip
    header = (
        "policy", "seeds", "final acc", "params", "mean params", "return",
        f"Δ final acc vs {ev.reference} [95% CI]", f"Δ return vs {ev.reference} [95% CI]",
    )  # fmt: skip
    info = _table(
        [("task", ev.task), ("epochs", ev.epochs), ("seeds", ", ".join(map(str, ev.seeds))),
         ("reference", ev.reference), ("wall seconds", ev.wall_seconds), ("computed on", _machine(ev.numerics)),
         *[("journal episodes from", f"{n} on {describe(where)}") for where, n in ev.journal_numerics]]
    )  # fmt: skip
    return [
        Section("summary", "Summary", info),
        Section(
            "eval",
            "Paired differences",
            w.image(plots.eval_figure(ev), "eval", "paired differences in final accuracy")
            + "<p>Each bar is a policy's mean final accuracy minus the reference's on the same seeds; the "
            "whiskers are the 95% interval. An interval that crosses 0 is a tie.</p>",
        ),
        Section("table", "Table", _table(rows, header)),
        *(
            [Section("tested", "Preferences, tested", "".join(_emergence_html(p, n) for n, p in ev.picks.items()))]
            if ev.picks
            else []
        ),
        *(
            [Section("reacts", "What drives its choices", _reacts_html(ev.episodes, ev.task, _REACTS))]
            if ev.episodes
            else []
        ),
    ]


_REACTS = (
    "Each table counts a policy's decisions under the state they were made in. The p-value permutes "
    "<i>episodes</i>: every episode's decisions are paired with another episode's states at the same epochs, "
    "so a policy that replays a recipe (the same choice at the same epoch whatever the state) is not taken "
    "for one that reacts, and an episode's dependent decisions are never counted as independent evidence. "
    "The masks react too: a replayed step that is illegal in an episode is skipped, so realized choices can "
    "depend on the state with no policy behind it. Read a policy's tables beside those of <i>recipe:P</i> "
    "(its own decisions replayed open-loop): a dependence the recipe shows as well is not the policy's."
)


_REACTS_TRAIN = (
    "The last third of training's episodes, sampled as the policy trained. "
    + _REACTS.split(". ", 1)[1]
    + " The policy still changes within this third, and a drift shows as a dependence too; "
    "the test of a finished policy is <code>esper eval</code> on held-out seeds, beside <i>recipe:P</i>."
)


def _reacts_html(episodes: Mapping[str, Sequence[Episode]], task: str, intro: str) -> str:
    parts = [f"<p>{intro}</p>"]
    for name, eps in episodes.items():
        on = ", ".join(tasks_of(eps)) or task
        parts.append(f"<h3>{html.escape(name)} ({len(eps)} episodes on {html.escape(on)})</h3>")
        for t in reaction_tables(eps):
            test = f"p = {t.p_value:.4f}" if t.p_value is not None else (t.note or "nothing to test")
            parts.append(f"<p><b>{html.escape(t.title)}</b> ({html.escape(test)})</p>")
            rows = [(lab, sum(c), *(f"{x} ({x / max(1, sum(c)):.0%})" for x in c)) for lab, c in t.rows]
            parts.append(_table(rows, ("state", "n", *t.choices)))
    return "".join(parts)


_EMERGENCE = (
    "Each row tests one head's choices at GERMINATE against a policy with no preference: one that picks "
    "uniformly among the choices its masks leave legal at each decision. <i>n</i> counts decisions with more "
    "than one legal choice; p is a Monte Carlo p-value of the chi-square statistic; <i>prefers</i> names the "
    "choice picked most above its expectation where p &lt; 0.01. Rows per blueprint or slot are shown where "
    "p &lt; 0.01."
)


def _emergence_html(picks: Sequence[Pick], what: str) -> str:
    if not picks:
        return f"<p>No GERMINATE decisions with their legal choices recorded ({html.escape(what)}).</p>"
    tests = [t for t in choice_tests(picks) if t.by == "all" or t.p_value < 0.01]
    return f"<h3>{html.escape(what)}</h3><p>{_EMERGENCE}</p>" + _table(rows(tests), HEADER)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .9em; }
td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } figure { margin: .6em 0; } img { max-width: 100%; }
.bad { color: #b10026; } nav a { margin-right: 1em; }
"""

# Says on the page (and to a headless browser) whether every embedded image decoded.
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
  if (ok < imgs.length) {
    var p = document.createElement('p'); p.className = 'bad';
    p.textContent = (imgs.length - ok) + ' image(s) failed to load; the PNG files beside this page hold them.';
    document.body.insertBefore(p, document.body.firstChild);
  }
});
"""


def render_html(title: str, sections: Sequence[Section]) -> str:
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>{s.body}</section>' for s in sections)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style><script>{_SCRIPT}</script></head>"
        f"<body><h1>{html.escape(title)}</h1><nav>{nav}</nav>{body}</body></html>\n"
    )


EMERGENCE_MD = "emergence.md"
#: The name a training run's reacts tables go under.
TRAINING_LATE = "training, last third"


def _task(data: RunData | TrainData | EvalData) -> str:
    if isinstance(data, EvalData):
        return data.task
    return str((data.env_config if isinstance(data, TrainData) else data.config.get("env") or {}).get("task") or "")


def _policy_episodes(data: RunData | TrainData | EvalData) -> Mapping[str, Sequence[Episode]]:
    if isinstance(data, EvalData):
        return data.episodes
    if isinstance(data, TrainData) and data.episodes:
        return {TRAINING_LATE: data.episodes}
    return {}


def _write_emergence(data: RunData | TrainData | EvalData, out: Path) -> None:
    """Every test, every group (not only p < 0.01), as markdown beside the page, for papers and docs."""
    groups: Mapping[str, Sequence[Pick]] = (
        {"training": data.picks} if isinstance(data, TrainData) else data.picks if isinstance(data, EvalData) else {}
    )
    parts = [f"## {name}\n\n{markdown(choice_tests(picks))}" for name, picks in groups.items() if picks]
    text = "# Lever choices against uniform-over-legal\n\n" + "\n".join(parts) if parts else ""
    episodes = _policy_episodes(data)
    if episodes:
        reacts = [react_markdown(n, reaction_tables(eps), tasks_of(eps) or _task(data)) for n, eps in episodes.items()]
        text += ("\n" if text else "") + "# Choices conditioned on state\n\n" + "\n".join(reacts)
    if text:
        (out / EMERGENCE_MD).write_text(text, encoding="utf-8")


def write_report(run_dir: Path, out: Path | None = None) -> Report:
    """Read ``run_dir``, write ``report.html`` and the PNGs to ``out`` (default: ``run_dir``)."""
    data = load(run_dir)
    out = run_dir if out is None else out
    out.mkdir(parents=True, exist_ok=True)
    w = _Writer(out)
    if isinstance(data, RunData):
        kind, title, sections = "run", f"esper run {data.run_id}", run_sections(data, w)
    elif isinstance(data, TrainData):
        kind, title, sections = "train", f"esper train {data.run_id}", train_sections(data, w)
    else:
        kind, title, sections = "eval", f"esper eval: {data.task}", eval_sections(data, w)
    _write_emergence(data, out)
    path = out / REPORT
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_html(title, sections), encoding="utf-8")
    tmp.replace(path)
    return Report(kind, path, tuple(w.pngs), tuple(s.id for s in sections))
