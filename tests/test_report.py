"""``esper report`` / ``esper compare`` / ``--tensorboard`` / the run summary, on real tiny runs.

The module's fixtures make one real ``esper run`` (with ``--tensorboard``),
one with the random policy on the same seed, and one tiny ``esper train``;
each test reads what those wrote. Plots are checked against the events that
drew them, read independently of the report code.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

from esper_kernel.cli import main
from esper_kernel.infra.stats import paired_difference
from esper_kernel.infra.telemetry import read_events
from esper_kernel.report import plots
from esper_kernel.report.compare import compare
from esper_kernel.report.console import run_summary
from esper_kernel.report.events import MARKER_KINDS, SPAN_STAGES, RunData
from esper_kernel.report.outcomes import TrainData, load

TINY = """
[env]
epochs = 10
train_size = 128
val_size = 64
"""

TRAIN_ARGS = ("--episodes", "4", "--envs", "2", "--group-size", "2", "--epochs", "5", "--train-size", "64",
              "--val-size", "32")  # fmt: skip


def esper(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"COLUMNS": "200"})


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    toml = root / "tiny.toml"
    toml.write_text(TINY, encoding="utf-8")
    heur = ok(esper("run", "--config", str(toml), "--out", str(root / "heuristic"), "--quiet",
                    "--tensorboard", str(root / "tb")))  # fmt: skip
    (root / "heuristic.out").write_text(heur.output, encoding="utf-8")
    ok(esper("run", "--config", str(toml), "--policy", "random", "--out", str(root / "random"), "--quiet"))
    ok(esper("train", *TRAIN_ARGS, "--out", str(root / "train")))
    return {"heuristic": root / "heuristic", "random": root / "random", "train": root / "train", "tb": root / "tb",
            "root": root}  # fmt: skip


def _events(d: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in read_events(d / "events.jsonl") if e["event"] == name]


def _gid_count(fig: Figure, prefix: str) -> int:
    """How many points (scatter) or bars (broken_barh) carry a gid starting with ``prefix``."""
    n = 0
    for ax in fig.axes:
        for coll in ax.collections:
            gid = coll.get_gid() or ""
            if not gid.startswith(prefix):
                continue
            n += len(coll.get_offsets()) if isinstance(coll, PathCollection) else len(coll.get_paths())
    return n


# -- esper report on a run ----------------------------------------------------------------


@pytest.mark.parametrize("which", ["heuristic", "random"])
def test_accuracy_plot_marks_every_germinate_blend_fossilize_and_cull(runs: dict[str, Path], which: str) -> None:
    changes = _events(runs[which], "seed.stage_changed")
    data = load(runs[which])
    assert isinstance(data, RunData)
    fig = plots.accuracy_figure(data)
    for stage, kind in MARKER_KINDS.items():
        expected = sum(1 for c in changes if c["new"] == stage)
        assert _gid_count(fig, f"marker-{kind}") == expected, kind
    assert any(c["new"] == "GERMINATED" for c in changes), "the tiny run germinated nothing; the test checks nothing"


@pytest.mark.parametrize("which", ["heuristic", "random"])
def test_timeline_draws_one_span_per_stage_entered_and_marks_each_end(runs: dict[str, Path], which: str) -> None:
    changes = _events(runs[which], "seed.stage_changed")
    data = load(runs[which])
    assert isinstance(data, RunData)
    fig = plots.timeline_figure(data)
    for stage in SPAN_STAGES:
        assert _gid_count(fig, f"span-{stage}") == sum(1 for c in changes if c["new"] == stage), stage
    for stage in ("FOSSILIZED", "CULLED"):
        assert _gid_count(fig, f"end-{stage}") == sum(1 for c in changes if c["new"] == stage), stage
    epochs = len(_events(runs[which], "epoch.completed"))
    assert all(0 <= s.start <= s.end <= epochs for s in data.spans())
    # Each seed is labelled once, with its blueprint, where it germinated.
    texts = [t.get_text() for t in fig.axes[0].texts]
    germinated = [c for c in changes if c["new"] == "GERMINATED"]
    assert len(texts) == len(germinated)
    for c, text in zip(germinated, texts, strict=True):
        assert text.startswith(f"{c['seed_id']}: {c['blueprint']}")


def test_lever_telemetry_plot_per_lever_with_one_panel_per_field(runs: dict[str, Path]) -> None:
    data = load(runs["heuristic"])
    assert isinstance(data, RunData)
    started = _events(runs["heuristic"], "run.started")[0]
    epoch = _events(runs["heuristic"], "epoch.completed")[0]
    by_lever = data.lever_fields()
    assert sorted(by_lever) == sorted(lv["name"] for lv in started["levers"])
    for lever, keys in by_lever.items():
        assert keys == [k for k in epoch if k.startswith(f"{lever}.")]
        fig = plots.lever_figure(data, lever, keys)
        titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
        assert titles == keys


def _png_ok(data: bytes) -> None:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("L")
    lo, hi = img.getextrema()
    assert img.width > 200 and img.height > 100 and hi - lo > 100, "a blank image"


def test_report_on_a_run_writes_a_self_contained_page_and_the_pngs(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rep"
    result = ok(esper("report", str(runs["heuristic"]), "--out", str(out)))
    assert "report.html" in result.output
    page = (out / "report.html").read_text(encoding="utf-8")
    for section in ("summary", "accuracy", "timeline", "levers", "config"):
        assert f'<section id="{section}">' in page
    pngs = sorted(out.glob("*.png"))
    levers = _events(runs["heuristic"], "run.started")[0]["levers"]
    assert {p.name for p in pngs} == {"accuracy.png", "timeline.png", *(f"lever-{lv['name']}.png" for lv in levers)}
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(pngs)
    assert sorted(base64.b64decode(b) for b in embedded) == sorted(p.read_bytes() for p in pngs)
    for p in pngs:
        _png_ok(p.read_bytes())
    # Nothing is fetched from elsewhere: the page stands alone.
    assert "http://" not in page and "https://" not in page
    summary = json.loads((runs["heuristic"] / "summary.json").read_text())
    assert f"{summary['final_val_accuracy']:.3f}" in page
    assert f"1/{summary['num_classes']}" in page


def test_report_on_a_training_run(runs: dict[str, Path], tmp_path: Path) -> None:
    ok(esper("report", str(runs["train"]), "--out", str(tmp_path)))
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    for section in ("summary", "returns", "entropy", "ppo", "emerged", "config"):
        assert f'<section id="{section}">' in page
    for name in ("returns", "entropy", "ppo", "emerged"):
        _png_ok((tmp_path / f"{name}.png").read_bytes())
    data = load(runs["train"])
    assert isinstance(data, TrainData)
    updates = _events(runs["train"], "ppo.update")
    assert [u.update for u in data.updates] == [u["update"] for u in updates]
    assert all(u.steps_per_second is not None and u.steps_per_second > 0 for u in data.updates)
    # Each head's dashed line is log(number of its choices), from run.started.
    choices = _events(runs["train"], "run.started")[0]["head_choices"]
    fig = plots.entropy_figure(data)
    drawn = {
        ax.get_title().split(" ")[0]: ax.lines[1].get_ydata()[0]
        for ax in fig.axes
        if ax.get_visible() and len(ax.lines) > 1
    }
    assert drawn.keys() == set(updates[0]["head_entropy"])
    for head, top in drawn.items():
        assert top == pytest.approx(math.log(len(choices[head])))
    # The "what emerged" bars count every germination of the run, by blueprint, early and late together.
    germinations = [c for c in _events(runs["train"], "seed.stage_changed") if c["new"] == "GERMINATED"]
    for head in data.lever_heads():
        counts = data.choice_counts(head, "blueprint")
        assert sum(sum(b.values()) for b in counts.values()) == sum(
            1 for g in germinations if head in g["choices"] or (head == "blend" and g.get("blend"))
        )


EVAL = {
    "schema": "esper.eval/1",
    "task": "shapes",
    "epochs": 10,
    "seeds": [0, 1, 2],
    "reference": "wait",
    "policies": [
        {
            "name": name,
            "policy": name.split("+")[0],
            "forced": {},
            "per_seed": [
                {
                    "seed": s,
                    "final_val_accuracy": 0.5 + d + 0.01 * s,
                    "best_val_accuracy": 0.6,
                    "params": 1000,
                    "mean_params": 900,
                    "return": 0.3 + d,
                    "fallbacks": 0,
                    "fossilized": 1,
                    "culled": 0,
                }
                for s in range(3)
            ],
            "mean": {"final_val_accuracy": 0.51 + d, "params": 1000, "mean_params": 900, "return": 0.3 + d},
            "vs_reference": {
                "final_val_accuracy": {"mean": d, "se": 0.01, "ci95": [d - 0.03, d + 0.03], "n": 3},
                "return": {"mean": d, "se": 0.01, "ci95": [d - 0.03, d + 0.03], "n": 3},
            },
        }
        for name, d in (("wait", 0.0), ("heuristic", 0.05), ("heuristic+tempo=GLACIAL", -0.01))
    ],
    "wall_seconds": 12.5,
}


@pytest.fixture
def eval_dir(tmp_path: Path) -> Path:
    d = tmp_path / "eval"
    d.mkdir()
    (d / "eval.json").write_text(json.dumps(EVAL), encoding="utf-8")
    return d


def test_report_on_an_eval_draws_each_policy_with_its_interval(eval_dir: Path) -> None:
    ok(esper("report", str(eval_dir)))
    page = (eval_dir / "report.html").read_text(encoding="utf-8")
    for section in ("summary", "eval", "table"):
        assert f'<section id="{section}">' in page
    for p in EVAL["policies"]:
        assert p["name"] in page
    data = load(eval_dir)
    fig = plots.eval_figure(data)  # type: ignore[arg-type]
    bars = [b for b in fig.axes[0].patches]
    assert [round(b.get_width(), 6) for b in bars] == [0.0, 0.05, -0.01]
    # One whisker per policy, spanning its ci95.
    (err,) = [c for c in fig.axes[0].collections if len(c.get_segments()) == 3]
    spans = [(min(s[:, 0]), max(s[:, 0])) for s in err.get_segments()]
    expected = [tuple(p["vs_reference"]["final_val_accuracy"]["ci95"]) for p in EVAL["policies"]]
    assert spans == [pytest.approx(e) for e in expected]


def test_report_refuses_an_eval_of_another_schema_in_one_line(eval_dir: Path) -> None:
    (eval_dir / "eval.json").write_text(json.dumps({**EVAL, "schema": "esper.eval/9"}), encoding="utf-8")
    result = esper("report", str(eval_dir))
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "esper.eval/9" in result.stderr and "eval.json" in result.stderr


def test_report_on_a_directory_without_a_run_says_so_in_one_line(tmp_path: Path) -> None:
    result = esper("report", str(tmp_path))
    assert result.exit_code == 2
    assert "events.jsonl" in result.stderr and result.stderr.strip().count("\n") == 0


def test_report_on_a_torn_events_file_names_the_line(runs: dict[str, Path], tmp_path: Path) -> None:
    lines = (runs["heuristic"] / "events.jsonl").read_text().splitlines()
    (tmp_path / "events.jsonl").write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    result = esper("report", str(tmp_path))
    assert result.exit_code == 2
    assert "events.jsonl:2" in result.stderr


# -- esper compare ------------------------------------------------------------------


def test_compare_two_runs_on_one_seed_prints_their_paired_difference(runs: dict[str, Path]) -> None:
    result = ok(esper("compare", str(runs["heuristic"]), str(runs["random"])))
    assert "paired differences" in result.output and "policy=random" in result.output
    doc = json.loads(ok(esper("compare", str(runs["heuristic"]), str(runs["random"]), "--json")).output)
    assert doc["schema"] == "esper.compare/1"
    assert doc["reference"] == "policy=heuristic"
    h = json.loads((runs["heuristic"] / "summary.json").read_text())
    r = json.loads((runs["random"] / "summary.json").read_text())
    by_metric = {p["metric"]: p for p in doc["paired"]}
    assert by_metric["final_val_accuracy"]["mean"] == pytest.approx(r["final_val_accuracy"] - h["final_val_accuracy"])
    assert by_metric["return"]["mean"] == pytest.approx(r["return"] - h["return"])
    assert by_metric["return"]["n"] == 1 and by_metric["return"]["ci95"] == [None, None]
    assert [run["seed"] for run in doc["runs"]] == [0, 0]


def _fake_run(root: Path, name: str, policy: str, seed: int, acc: float) -> Path:
    d = root / name
    d.mkdir()
    summary = {
        "run_id": name, "out": str(d), "epochs": 5, "num_classes": 10, "final_val_accuracy": acc,
        "best_val_accuracy": acc + 0.01, "return": acc / 2, "params": 100 + seed, "base_params": 100,
        "seeds": [{"seed_id": "seed1-s0", "final_stage": "FOSSILIZED"}],
        "levers": [{"name": "tempo", "distribution": "esper-kernel", "version": "0.1.0"}],
        "wall_seconds": 1.0,
        "config": {"policy": policy, "levers": None, "seed": seed, "out": str(d), "env": {"task": "shapes"}},
    }  # fmt: skip
    (d / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return d


def test_compare_pairs_arms_seed_by_seed_with_a_confidence_interval(tmp_path: Path) -> None:
    a = {0: 0.50, 1: 0.55, 2: 0.61}
    b = {0: 0.52, 1: 0.60, 2: 0.62, 3: 0.9}  # seed 3 has no partner: left out of the pairing
    dirs = [_fake_run(tmp_path, f"a{s}", "heuristic", s, v) for s, v in a.items()]
    dirs += [_fake_run(tmp_path, f"b{s}", "random", s, v) for s, v in b.items()]
    comp = compare(dirs)
    assert list(comp.arms) == ["policy=heuristic", "policy=random"]
    (acc,) = [p for p in comp.paired if p.metric == "final_val_accuracy"]
    expected = paired_difference([b[s] for s in a], [a[s] for s in a])
    assert acc.seeds == (0, 1, 2)
    assert (acc.mean, acc.lo, acc.hi, acc.n) == pytest.approx((expected.mean, expected.lo, expected.hi, 3))
    plot = tmp_path / "cmp.png"
    ok(esper("compare", *map(str, dirs), "--plot", str(plot), "--reference", str(dirs[-1])))
    _png_ok(plot.read_bytes())
    assert compare(dirs, reference=dirs[-1]).reference == "policy=random"


def test_compare_refuses_two_runs_of_one_arm_with_the_same_seed(tmp_path: Path) -> None:
    dirs = [_fake_run(tmp_path, "x", "heuristic", 0, 0.5), _fake_run(tmp_path, "y", "heuristic", 0, 0.6)]
    result = esper("compare", *map(str, dirs))
    assert result.exit_code == 2 and "same seed 0" in result.stderr


def _fake_training(root: Path, name: str, seed: int, ret: float, **ppo: Any) -> Path:
    d = root / name
    d.mkdir()
    summary = {
        "run_id": name, "env_config": {"task": "pairs"}, "levers": ["tempo"], "episode_returns": [ret],
        "ppo_config": {"episodes": 1, "n_envs": 1, "seed": seed, **ppo},
    }  # fmt: skip
    (d / "train_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return d


def test_compare_puts_a_training_saved_before_a_setting_in_the_arm_of_its_default(tmp_path: Path) -> None:
    # Seeds 0-1 were trained before ppo.contribution existed (no such key), seeds 2-3 at its default.
    value = [_fake_training(tmp_path, f"v{s}", s, 0.1 * s) for s in (0, 1)]
    value += [_fake_training(tmp_path, f"v{s}", s, 0.1 * s, contribution="value") for s in (2, 3)]
    sign = [_fake_training(tmp_path, f"s{s}", s, 0.1 * s + 0.05, contribution="sign") for s in range(4)]
    comp = compare([*value, *sign])
    assert list(comp.arms) == ["contribution=value", "contribution=sign"]
    (ret,) = [p for p in comp.paired if p.metric == "return"]
    assert ret.seeds == (0, 1, 2, 3) and ret.mean == pytest.approx(0.05)


def test_compare_of_a_directory_without_a_summary_is_one_line(tmp_path: Path) -> None:
    result = esper("compare", str(tmp_path))
    assert result.exit_code == 2 and "summary.json" in result.stderr


# -- TensorBoard ------------------------------------------------------------------


def test_tensorboard_stream_holds_the_runs_scalars(runs: dict[str, Path]) -> None:
    _needs("tensorboard", "the tensorboard extra is not installed (pip install -e '.[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(runs["tb"]))
    acc.Reload()
    epochs = _events(runs["heuristic"], "epoch.completed")
    val = acc.Scalars("host/val_accuracy")
    assert [s.step for s in val] == [e["epoch"] for e in epochs]
    assert [s.value for s in val] == pytest.approx([e["val_accuracy"] for e in epochs], rel=1e-6)
    assert [s.value for s in acc.Scalars("host/params")] == [e["params"] for e in epochs]
    summary = json.loads((runs["heuristic"] / "summary.json").read_text())
    assert acc.Scalars("run/return")[0].value == pytest.approx(summary["return"], rel=1e-6)
    # Every lever value that applied to a slot is a scalar of its own.
    key = next(k for e in epochs for k, v in e.items() if "." in k and any(x is not None for x in v))
    assert any(t.startswith(f"lever/{key}/slot") for t in acc.Tags()["scalars"])


def test_tensorboard_scalars_show_while_the_run_is_still_going(tmp_path: Path) -> None:
    _needs("tensorboard", "the tensorboard extra is not installed (pip install -e '.[tensorboard]')")
    import time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from esper_kernel.infra.telemetry import Telemetry
    from esper_kernel.infra.tensorboard import TensorBoardSink

    sink = TensorBoardSink(tmp_path / "tb", flush_secs=1)
    with Telemetry(tmp_path / "events.jsonl", "live", console=False, sinks=[sink]) as tel:
        tel.log.info("run.started", config={"env": {"epochs": 5}})
        tel.log.bind(env=0, episode=0, epoch=0).info("epoch.completed", val_accuracy=0.25, params=10)
        deadline = time.monotonic() + 10
        seen: list[float] = []
        while not seen and time.monotonic() < deadline:
            time.sleep(0.5)
            acc = EventAccumulator(str(tmp_path / "tb"))
            acc.Reload()
            if "host/val_accuracy" in acc.Tags()["scalars"]:
                seen = [s.value for s in acc.Scalars("host/val_accuracy")]
        # Read back before the run's telemetry closes: TensorBoard sees a live run.
        assert seen == [0.25]


def test_tensorboard_without_the_package_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    result = esper("run", "--tensorboard", str(tmp_path / "tb"), "--out", str(tmp_path / "o"), "--quiet")
    assert result.exit_code == 2
    assert "esper-kernel[tensorboard]" in result.stderr
    assert not (tmp_path / "o").exists()


# -- the console summary ---------------------------------------------------------------


def test_run_prints_chance_return_seeds_and_the_report_line(runs: dict[str, Path]) -> None:
    out = (runs["root"] / "heuristic.out").read_text(encoding="utf-8")
    summary = json.loads((runs["heuristic"] / "summary.json").read_text())
    assert f"chance is {1 / summary['num_classes']:.3f}" in out
    assert "return" in out and "parameter" in out
    assert f"esper report {runs['heuristic']}" in out
    for seed in summary["seeds"]:
        assert seed["seed_id"] in out


def test_summary_remarks_a_final_accuracy_well_below_the_best() -> None:
    from rich.console import Console

    base = {"final_val_accuracy": 0.367, "best_val_accuracy": 0.457, "num_classes": 10, "return": 0.2,
            "seeds": [], "out": "runs/x"}  # fmt: skip
    console = Console(width=120, record=True)
    console.print(run_summary(base))
    assert "0.090 below the best" in console.export_text()
    console = Console(width=120, record=True)
    console.print(run_summary({**base, "final_val_accuracy": 0.45}))
    assert "below the best" not in console.export_text()


# -- the page in a real browser ------------------------------------------------------

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")  # fmt: skip


def _missing(why: str) -> None:
    """Skip on a developer's machine; fail in CI, which .ci/run equips with everything these tests need."""
    if os.environ.get("CI"):
        pytest.fail(f"{why}; .ci/run should have installed it")
    pytest.skip(why)


def _needs(module: str, why: str) -> None:
    if importlib.util.find_spec(module) is None:
        _missing(why)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    _missing("chromium is not installed (apt-get install chromium)")
    raise AssertionError("unreachable")


def _browse(page: Path, tmp: Path, *args: str) -> str:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    proc = subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.parametrize(
    ("which", "sections"),
    [
        ("heuristic", ("summary", "accuracy", "timeline", "levers", "config")),
        ("train", ("summary", "returns", "entropy", "ppo", "emerged", "config")),
        ("eval", ("summary", "eval", "table")),
    ],
)
def test_report_renders_in_headless_chromium_with_every_section_and_image(
    runs: dict[str, Path], tmp_path: Path, which: str, sections: tuple[str, ...]
) -> None:
    from PIL import Image

    if which == "eval":
        src = tmp_path / "eval"
        src.mkdir()
        (src / "eval.json").write_text(json.dumps(EVAL), encoding="utf-8")
    else:
        src = runs[which]
    out = tmp_path / "out"
    ok(esper("report", str(src), "--out", str(out)))
    page = out / "report.html"
    dom = _browse(page, tmp_path, "--virtual-time-budget=5000", "--dump-dom")
    n_images = len(list(out.glob("*.png")))
    # The page's own script counts the images that decoded once the page loaded.
    assert f'data-images-loaded="{n_images}/{n_images}"' in dom
    for section in sections:
        assert f'<section id="{section}">' in dom
    # The same page with its images hidden but keeping their place: what text and tables alone darken in the
    # same layout, however much text the page holds below the images.
    bare = out / "bare.html"
    bare.write_text(page.read_text(encoding="utf-8").replace("<img ", '<img style="visibility:hidden" '),
                    encoding="utf-8")  # fmt: skip
    ink = {}
    for name, html_file in (("page", page), ("bare", bare)):
        shot = tmp_path / f"{name}.png"
        _browse(html_file, tmp_path, "--window-size=1280,2400", f"--screenshot={shot}")
        img = Image.open(shot).convert("L")
        ink[name] = sum(img.histogram()[:200]) / (img.width * img.height)
    assert ink["bare"] > 0.001, "the page shows no text"
    assert ink["page"] > 1.5 * ink["bare"], f"the images add little to the page: {ink}"


def test_report_seed_table_says_a_culled_seed_was_culled() -> None:
    from esper_kernel.report.html import _seeds_html

    # A culled seed's slot is embargoed, so the summary's final stage reads EMBARGOED: the fate is culled.
    page = _seeds_html([{"seed_id": "seed1-s0", "slot": 0, "final_stage": "EMBARGOED", "cull_reason": "g1_failed"}])
    assert "CULLED" in page and "EMBARGOED" not in page


def test_compare_piped_keeps_each_run_on_one_line(tmp_path: Path) -> None:
    import sys

    policies = ("heuristic", "random")
    long = "a-run-directory-with-a-long-name"
    dirs = [_fake_run(tmp_path, f"{long}-{p}", p, 0, 0.5 + i / 10) for i, p in enumerate(policies)]
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    piped = subprocess.run(
        [sys.executable, "-m", "esper_kernel.cli", "compare", *map(str, dirs)],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    # Written to a pipe (a file, less, grep), no row is folded at 80 columns: each run's directory is whole.
    for d in dirs:
        assert any(str(d) in line for line in piped.stdout.splitlines()), piped.stdout


def test_parameter_plot_legend_names_its_event_lines(runs: dict[str, Path]) -> None:
    data = load(runs["heuristic"])
    assert isinstance(data, RunData)
    fig = plots.accuracy_figure(data)
    par_ax = fig.axes[-1]
    legend = {t.get_text() for t in par_ax.get_legend().get_texts()}
    kinds = {m.kind for m in data.markers()}
    assert kinds and kinds <= legend


def test_timeline_labels_cut_whole_choices_never_a_choice_in_two() -> None:
    from esper_kernel.report.plots import _choice_text

    choices = {"tempo": "GLACIAL", "isolation": "DETACH", "lr": "AGGRESSIVE"}
    assert _choice_text(choices) == "tempo=GLACIAL isolation=DETACH lr=AGGRESSIVE"
    assert _choice_text(choices, 24) == "tempo=GLACIAL …"
    assert _choice_text(choices, 32) == "tempo=GLACIAL isolation=DETACH …"
    assert _choice_text(choices, 5) == "…"
