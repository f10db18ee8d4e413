"""Reliability as a careless or hostile user meets it: bad values, reused output
directories, interrupted runs, crafted data files. Each test is a case from
issue 15 and checks what the user would: the exit status, the one line on
stderr, and that no file of an earlier run was lost.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result

from esper_kernel.cli import main
from esper_kernel.commands.outdir import CHECKPOINT, EVENTS, SUMMARY
from esper_kernel.commands.run import run
from esper_kernel.infra.telemetry import read_events
from esper_kernel.settings.config import RunConfig, with_overrides

TINY = """
[env]
train_size = 32
val_size = 16
batch_size = 16
width = 4
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY, encoding="utf-8")
    return path


def esper(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def one_line_error(result: Result, *names: str) -> str:
    """Exit 2, exactly one line on stderr, no traceback, naming every one of ``names``."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("esper: error: "), line
    assert "Traceback" not in result.output
    missing = [n for n in names if n not in line]
    assert not missing, f"{missing} not in: {line}"
    return line


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def tiny_config(out: Path, **overrides: Any) -> RunConfig:
    base = with_overrides(RunConfig(), out=str(out), policy="random", env__epochs=4)
    env = {
        "env__train_size": 32,
        "env__val_size": 16,
        "env__batch_size": 16,
        "env__width": 4,
        **overrides.pop("env", {}),
    }
    return with_overrides(base, **env, **overrides)


# -- every value a user can type ----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--epochs", "0"], ["env.epochs", "--epochs", "got 0"]),
        (["--epochs", "-1"], ["env.epochs", "--epochs", "got -1"]),
        (["--epochs", "100000000000000000000000"], ["--epochs", "100000000000000000000000"]),
        (["--epochs", "1e23"], ["--epochs", "1e23"]),
        (["--slots", "0"], ["env.slots", "--slots", "got 0"]),
        (["--slots", "1"], ["env.slots", "--slots", "between 2 and 8", "got 1"]),
        (["--slots", "100"], ["env.slots", "--slots", "between 2 and 8", "got 100"]),
        (["--seed", "-1"], ["seed", "--seed"]),
        (["--task", "shapes", "--width", "1024", "--slots", "8"], ["env.width=1024", "parameters", "maximum"]),
        (["--width", "1024", "--slots", "8"], ["env.width=1024", "--width", "--slots", "GiB to train", "limit"]),
        (["--width", "1024"], ["env.slots=3 (--slots)", "env.width=1024 (--width)", "1.4 GiB to train", "1.0 GiB"]),
        (["--task", "shapes", "--width", "512"], ["env.width=512", "--width", "GiB to train", "1.0 GiB"]),
        (["--policy", "/etc/passwd"], ["--policy", "/etc/passwd", "not a complete torch file"]),
        (["--width", "0"], ["env.width", "--width", "got 0"]),
        (["--levers", ""], ["--levers", "names no lever"]),
        (["--levers", ","], ["--levers", "names no lever"]),
        (["--task", "shapez"], ["--task", "'shapez'", "shapes"]),
        (["--policy", "nowhere.pt"], ["--policy", "nowhere.pt"]),
        (["--on-lever-error", "sometimes"], ["--on-lever-error", "sometimes"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0].startswith("--") else None,
)
def test_bad_flag_is_one_line_naming_it_and_writes_nothing(tmp_path: Path, args: list[str], names: list[str]) -> None:
    out = tmp_path / "out"
    one_line_error(esper("run", "--quiet", "--out", str(out), *args), *names)
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "eval", "sweep"])
def test_every_command_refuses_a_host_over_the_memory_limit_before_writing(tmp_path: Path, command: str) -> None:
    out = tmp_path / "out"
    one_line_error(
        esper(command, "--out", str(out), "--width", "1024"), "env.width=1024 (--width)", "GiB to train", "1.0 GiB"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        ("checkpoint_every = 0", ["checkpoint_every", "got 0"]),
        ("[env]\nbatch_size = 0", ["env.batch_size", "got 0"]),
        ("[env]\nwidth = 0", ["env.width", "got 0"]),
        ("[env]\ntrain_size = 0", ["env.train_size", "got 0"]),
        ("[env]\nhost_lr = nan", ["env.host_lr", "finite", "nan"]),
        ("[env]\nhost_lr = -0.1", ["env.host_lr", "-0.1"]),
        ("[env]\nparam_rent = inf", ["env.param_rent", "inf"]),
        ("[env]\nepochs = 1e23", ["env.epochs", "expected int", "float"]),
        ("levers = []", ["levers", "names no lever"]),
        ('on_lever_error = "maybe"', ["on_lever_error", "maybe"]),
        ('out = ""', ["out", "empty"]),
    ],
)
def test_bad_config_value_is_one_line_naming_the_key(tmp_path: Path, toml: str, names: list[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml + "\n", encoding="utf-8")
    out = tmp_path / "out"
    one_line_error(esper("run", "--quiet", "--config", str(config), "--out", str(out)), str(config), *names)
    assert not out.exists()


def test_out_under_a_file_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    one_line_error(esper("run", "--quiet", "--out", str(blocker / "run")), "--out", "is a file")
    assert blocker.read_text() == "not a directory"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through permission bits")
def test_out_in_a_read_only_directory_is_one_line(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        one_line_error(esper("run", "--quiet", "--out", str(locked / "run")), "--out", "cannot write")
    finally:
        locked.chmod(0o700)


def test_resume_with_a_flag_that_would_be_ignored_is_refused(tmp_path: Path) -> None:
    one_line_error(esper("run", "--resume", str(tmp_path), "--epochs", "50"), "--resume", "--epochs")


# -- validate, then write: the two data-loss repros -----------------------------------


def test_failing_command_on_an_existing_run_loses_nothing(tmp_path: Path, tiny: Path) -> None:
    out = tmp_path / "x"
    assert esper("run", "--quiet", "--epochs", "3", "--config", str(tiny), "--out", str(out)).exit_code == 0
    before = snapshot(out)
    assert set(before) == {EVENTS, SUMMARY, CHECKPOINT}

    # The repro: a typo'd task on the same --out.
    one_line_error(esper("run", "--quiet", "--task", "shapez", "--out", str(out)), "--task", "'shapez'")
    assert snapshot(out) == before
    # A correct command is refused too: the run is not silently replaced.
    line = one_line_error(esper("run", "--quiet", "--config", str(tiny), "--out", str(out)), "--overwrite", "--resume")
    assert "already holds a run" in line
    assert snapshot(out) == before

    replaced = esper("run", "--quiet", "--epochs", "2", "--config", str(tiny), "--out", str(out), "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((out / SUMMARY).read_text())["epochs"] == 2
    assert [e["epoch"] for e in read_events(out / EVENTS) if e["event"] == "epoch.completed"] == [0, 1]


def test_interrupted_run_survives_a_typo_then_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    whole = run(tiny_config(tmp_path / "whole"))
    out = tmp_path / "x"
    assert run(tiny_config(out), stop_after=2) == {"interrupted_at": 2}
    before = snapshot(out)

    one_line_error(esper("run", "--quiet", "--task", "shapez", "--out", str(out)), "--task")
    assert snapshot(out) == before

    result = esper("run", "--quiet", "--resume", str(out))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["return"] == whole["return"]
    assert summary["final_val_accuracy"] == whole["final_val_accuracy"]
    events = read_events(out / EVENTS)
    assert [e["epoch"] for e in events if e["event"] == "epoch.completed"] == [0, 1, 2, 3]
    assert [e["event"] for e in events if e["event"].startswith("run.")] == [
        "run.started",
        "run.interrupted",
        "run.started",
        "run.finished",
    ]


def test_resume_drops_epochs_run_after_the_checkpoint_and_stale_temp_files(tmp_path: Path) -> None:
    out = tmp_path / "x"
    # Checkpoints at epochs 2 and 4 only: a stop after epoch 3 leaves epoch 2's events past the checkpoint,
    # as a kill between checkpoints would.
    config = tiny_config(out, env={"env__epochs": 5}, checkpoint_every=2)
    run(config, stop_after=2)
    at_two = (out / CHECKPOINT).read_bytes()
    run(config, resume=out, stop_after=3)
    (out / CHECKPOINT).write_bytes(at_two)  # killed before epoch 3's checkpoint: its events are past the file's
    assert [e["epoch"] for e in read_events(out / EVENTS) if e["event"] == "epoch.completed"] == [0, 1, 2]
    (out / f".{CHECKPOINT}.killed.tmp").write_bytes(b"")  # what kill -9 mid-write leaves

    run(config, resume=out)
    events = read_events(out / EVENTS)
    assert [e["epoch"] for e in events if e["event"] == "epoch.completed"] == [0, 1, 2, 3, 4]
    resumed = [e for e in events if e["event"] == "run.started"][-1]
    assert resumed["resumed_from_epoch"] == 2 and resumed["superseded_events"] > 0
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_run_that_stops_on_an_error_ends_its_stream_with_run_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from esper_kernel.episode import env as env_module

    calls = {"n": 0}
    real = env_module.MorphoEnv.step

    def failing_step(self: Any, actions: torch.Tensor) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk on fire")
        return real(self, actions)

    monkeypatch.setattr(env_module.MorphoEnv, "step", failing_step)
    out = tmp_path / "x"
    with pytest.raises(RuntimeError, match="disk on fire"):
        run(tiny_config(out))
    last = read_events(out / EVENTS)[-1]
    assert (last["event"], last["level"], last["error"], last["error_type"], last["epoch"]) == (
        "run.failed",
        "error",
        "disk on fire",
        "RuntimeError",
        1,  # the epoch it failed in
    )


# -- untrusted data is inert ------------------------------------------------------------


class _Payload:
    """Unpickling this opens (creates) a file: what a hostile ``data_batch_1`` would do."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.target, "w"))


def test_crafted_cifar_batch_runs_nothing_and_is_one_line(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    data = tmp_path / "data"
    data.mkdir()
    marker = tmp_path / "pwned"
    with (data / "data_batch_1").open("wb") as fh:
        pickle.dump({b"data": _Payload(marker), b"labels": [0]}, fh, protocol=2)
    good = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1]}
    with (data / "test_batch").open("wb") as fh:
        pickle.dump(good, fh, protocol=2)
    out = tmp_path / "out"

    result = esper("run", "--quiet", "--task", "cifar10", "--data-dir", str(data), "--out", str(out))

    one_line_error(result, "data_batch_1", "refused to load", "open")
    assert not marker.exists()
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--lr", "nan"], ["--lr", "nan"]),
        (["--entropy-coef", "inf"], ["--entropy-coef", "inf"]),
        (["--slots", "100"], ["--slots", "got 100"]),
        (["--epochs", "1000000000000"], ["--epochs", "1000000000000"]),
        (["--train-size", "1000000000"], ["--train-size", "1000000000"]),
        (["--levers", ""], ["--levers", "names no lever"]),
    ],
)
def test_bad_train_value_is_one_line_and_writes_nothing(tmp_path: Path, args: list[str], names: list[str]) -> None:
    out = tmp_path / "train"
    one_line_error(esper("train", "--episodes", "1", "--envs", "1", "--out", str(out), *args), *names)
    assert not out.exists()


@pytest.mark.parametrize("keep", [0, 0.5, 0.99])
def test_resume_from_a_truncated_checkpoint_is_one_line_naming_the_file(tmp_path: Path, keep: float) -> None:
    out = tmp_path / "x"
    assert run(tiny_config(out), stop_after=2) == {"interrupted_at": 2}
    ckpt = out / CHECKPOINT
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: int(len(data) * keep)])
    before = snapshot(out)
    line = one_line_error(esper("run", "--quiet", "--resume", str(out)), str(ckpt))
    assert "empty" in line if keep == 0 else "truncated" in line
    assert "Errno" not in line and "miniz" not in line
    assert snapshot(out) == before


def test_host_over_the_memory_limit_is_never_built() -> None:
    from esper_kernel.data.tasks import get_task
    from esper_kernel.episode.env import EnvConfig, make_host, size_host
    from esper_kernel.grow.sizing import measure_host
    from esper_kernel.infra.errors import EsperError
    from esper_kernel.settings.bounds import MAX_HOST_PARAMS, MAX_TRAIN_MEMORY

    task = get_task("shapes", seed=0, n_train=2, n_val=2)
    built: list[int] = []

    def big() -> torch.nn.Module:
        built.append(1)
        return make_host(EnvConfig(task="shapes", slots=3, width=1000), task)

    size = measure_host(big, task.train_x[:1], 64, MAX_HOST_PARAMS, MAX_TRAIN_MEMORY)
    assert size.params < MAX_HOST_PARAMS and size.memory_bytes > MAX_TRAIN_MEMORY
    assert built == [1] and size.activations == 0  # counted on the meta device only: never allocated
    with pytest.raises(EsperError, match=r"env.slots=3 \(--slots\), env.width=512 \(--width\).*GiB to train"):
        size_host(EnvConfig(task="shapes", width=512), task)
    assert size_host(EnvConfig(task="shapes"), task).memory_bytes < MAX_TRAIN_MEMORY


@pytest.mark.parametrize(
    "env",
    [{"task": "pairs"}, {"task": "sequences"}, {"task": "mnist1d"}, {"task": "shapes", "width": 16}, {"slots": 8}],
    ids=str,
)
def test_the_default_run_and_the_readme_examples_are_within_the_memory_limit(env: dict[str, Any]) -> None:
    from esper_kernel.data.tasks import get_task
    from esper_kernel.episode.env import EnvConfig, size_host
    from esper_kernel.settings.bounds import MAX_TRAIN_MEMORY

    config = EnvConfig(**env)
    assert size_host(config, get_task(config.task, seed=0)).memory_bytes < MAX_TRAIN_MEMORY


def test_the_memory_estimate_is_at_least_the_measured_peak(tmp_path: Path) -> None:
    """The estimate (run.started's host_memory_bytes) against the peak RSS of the run it is for.

    A wide host (most of the estimate is the host's, not the process baseline),
    one epoch, in its own process so the peak is that run's alone.
    """
    out = tmp_path / "out"
    code = (
        "import sys\nfrom esper_kernel.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork and exec, so it would report pytest's own peak.
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "print(int(hwm.split()[1]) * 1024)"
    )
    args = ["run", "--quiet", "--width", "128", "--epochs", "1", "--train-size", "256", "--val-size", "64"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args, "--out", str(out)], capture_output=True, text=True, check=True
    )
    peak = int(proc.stdout.split()[-1])
    (started,) = [e for e in read_events(out / EVENTS) if e["event"] == "run.started"]
    estimate = started["host_memory_bytes"]
    assert peak <= estimate < 2 * peak, (peak, estimate)


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--policies", "heuristic+tempo=NOPE"], ["--policies", "heuristic+tempo=NOPE", "'NOPE'", "GLACIAL"]),
        (["--policies", "wait,random+tempo=NOPE"], ["--policies", "random+tempo=NOPE", "'NOPE'"]),
        (["--policies", "wait,heuristic+nohead=X"], ["--policies", "nohead=X", "no head 'nohead'"]),
        (["--force", "tempo=NOPE", "--policies", "wait"], ["--force tempo=NOPE", "'NOPE'"]),
        (["--force", "tempo=GLACIAL", "--policies", "wait"], ["--force tempo=GLACIAL", "no policy", "wait"]),
    ],
)
def test_bad_forced_head_in_eval_is_one_line_naming_it(tmp_path: Path, args: list[str], names: list[str]) -> None:
    out = tmp_path / "eval"
    one_line_error(esper("eval", "--seeds", "0", "--epochs", "1", "--workers", "1", "--out", str(out), *args), *names)
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--widths", "8,8"], ["--widths", "8 is given twice"]),
        (["--widths", "0,8,16,32"], ["--widths", "0 is not a width", "between 1 and 1024"]),
        (["--widths", "8,1024"], ["--widths 1024", "env.width=1024", "GiB to train", "1.0 GiB"]),
    ],
)
def test_bad_frontier_widths_are_one_line_before_anything_runs(
    tmp_path: Path, args: list[str], names: list[str]
) -> None:
    out = tmp_path / "frontier"
    one_line_error(esper("frontier", "--seeds", "0", "--epochs", "1", "--out", str(out), *args), *names)
    assert not out.exists()


def test_eval_of_no_policy_says_so(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    one_line_error(esper("eval", "--policies", "", "--seeds", "0", "--out", str(out)), "--policies", "no policy")
    assert not out.exists()


@pytest.mark.parametrize("content", [b"\x00\x01\xff\xfe[env]", b"\xef\xbb\xbf\xff"])
def test_a_config_that_is_not_text_is_one_line_naming_it(tmp_path: Path, content: bytes) -> None:
    config = tmp_path / "model.bin"
    config.write_bytes(content)
    out = tmp_path / "out"
    one_line_error(esper("run", "--quiet", "--config", str(config), "--out", str(out)), str(config), "not UTF-8")
    assert not out.exists()


def _group_members(pgid: int) -> list[str]:
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) == pgid:
                left.append(f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()!r}")
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
    return left


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_train_with_worker_processes_leaves_none_behind(tmp_path: Path) -> None:
    args = ["train", "--episodes", "2", "--envs", "2", "--workers", "2", "--epochs", "2"]
    args += ["--train-size", "32", "--val-size", "16", "--out", str(tmp_path / "t")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "esper_kernel.cli", *args],
        start_new_session=True,  # its own process group, as a shell job is
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    # The moment the command has exited: no worker, fork server or resource tracker is left in its group.
    assert _group_members(proc.pid) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_ends_the_stream_with_the_epoch_and_the_run_resumes(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "x"
    config = tmp_path / "slow.toml"
    config.write_text(
        "checkpoint_every = 1\n[env]\nepochs = 30\ntrain_size = 256\nval_size = 64\nbatch_size = 16\nwidth = 8\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "esper_kernel.cli", "run", "--quiet", "--config", str(config), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    events = out / EVENTS
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / CHECKPOINT).exists():  # written after the first epoch
        time.sleep(0.1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (128 + signal.SIGTERM if sig == signal.SIGTERM else 1), err.decode()
    assert b"Traceback" not in err
    stream = read_events(events)
    last = stream[-1]
    assert last["event"] == "run.interrupted"
    assert last["reason"] == ("SIGTERM" if sig == signal.SIGTERM else "KeyboardInterrupt")
    completed = [e["epoch"] for e in stream if e["event"] == "epoch.completed"]
    assert last["epoch"] in (completed[-1], completed[-1] + 1)
    resumed = esper("run", "--quiet", "--resume", str(out))
    assert resumed.exit_code == 0, resumed.output
    assert [e["epoch"] for e in read_events(events) if e["event"] == "epoch.completed"] == list(range(30))


def test_runs_without_out_follow_one_another_and_runs_latest_is_the_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    tiny = ["--epochs", "2", "--train-size", "32", "--val-size", "16", "--width", "4"]
    first = esper("run", "--quiet", *tiny)
    assert first.exit_code == 0, first.output
    second = esper("run", "--quiet", "--task", "sequences", "--epochs", "2", "--train-size", "32", "--val-size", "16")
    assert second.exit_code == 0, second.output
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if not p.is_symlink())
    assert len(runs) == 2 and all((p / SUMMARY).exists() for p in runs)
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink()
    assert json.loads((latest / SUMMARY).read_text())["config"]["env"]["task"] == "sequences"
    # runs/latest works wherever a run directory does.
    assert esper("report", "runs/latest").exit_code == 0
    interrupted = run(tiny_config(Path("runs/latest")), stop_after=1)
    assert interrupted == {"interrupted_at": 1}
    assert esper("run", "--quiet", "--resume", "runs/latest").exit_code == 0
    assert len([p for p in (tmp_path / "runs").iterdir() if not p.is_symlink()]) == 3


def test_every_command_without_out_writes_a_fresh_directory_and_runs_latest_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README examples run one after another without --out: none is refused for the last one's output."""
    monkeypatch.chdir(tmp_path)
    tiny = ["--epochs", "2", "--train-size", "32", "--val-size", "16", "--width", "4"]
    train = ["train", "--episodes", "1", "--envs", "1", "--workers", "1", *tiny]

    def newest() -> Path:
        return (tmp_path / "runs" / "latest").resolve()

    dirs = []
    for command in (
        train,
        train,
        ["eval", "--policies", "wait", "--seeds", "0", "--workers", "1", *tiny],
        ["eval", "--policies", "random,wait", "--seeds", "0", "--workers", "1", *tiny],  # another config: not refused
        ["sweep", "--policies", "wait", "--seeds", "0", "--workers", "1", *tiny],
        [
            "frontier",
            "--policies",
            "heuristic",
            "--widths",
            "4",
            "--no-scratch",
            "--seeds",
            "0",
            "--epochs",
            "2",
            "--workers",
            "1",
            "--config",
            _tiny_sizes(tmp_path),
        ],
    ):
        result = esper(*command)
        assert result.exit_code == 0, (command, result.output)
        dirs.append(newest())
        assert dirs[-1].name.split("-")[2] == command[0], dirs[-1]
    assert len(set(dirs)) == len(dirs)
    assert (dirs[0] / "policy.pt").exists() and (dirs[1] / "policy.pt").exists()
    assert (dirs[2] / "eval.json").exists() and (dirs[3] / "eval.json").exists()
    assert (dirs[4] / "sweep.json").exists() and (dirs[5] / "frontier.json").exists()
    # --resume still takes an explicit path, runs/latest included.
    resumed = esper("train", "--resume", str(dirs[1]), "--episodes", "2")
    assert resumed.exit_code == 0, resumed.output


def _tiny_sizes(tmp_path: Path) -> str:
    config = tmp_path / "sizes.toml"
    config.write_text("[env]\ntrain_size = 32\nval_size = 16\n")
    return str(config)
