"""Tasks as plugins: discovery through real ``esper.tasks`` entry points, broken plugins, sizes, MNIST-1D.

Task distributions are installed the way pip leaves them (a module plus a
``dist-info`` whose ``entry_points.txt`` names it), so discovery runs for real.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pytest
import torch

from esper_kernel.data.taskplugins import find_task, list_tasks, task_names
from esper_kernel.episode.env import EnvConfig, load_task, make_host
from esper_kernel.infra.errors import EsperError, PluginError

_GOOD = """
from esper_kernel.builtin_tasks import PAIRS
import attrs

TASK = attrs.evolve(PAIRS, name="{name}", description="pairs, as a plugin", widths=(4, 8))
"""
_BROKEN = "raise ImportError('the data module moved')\n"


class TaskDists:
    """Installs task distributions into per-test site directories on ``sys.path``."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp, self.mp, self.sites, self.modules = tmp_path, monkeypatch, [], []

    def __call__(self, name: str, code: str, dist: str) -> None:
        module = f"{dist.replace('-', '_')}_{name}"
        site = self.tmp / f"site{len(self.sites)}"
        (site / f"{dist.replace('-', '_')}-1.0.dist-info").mkdir(parents=True)
        (site / f"{module}.py").write_text(textwrap.dedent(code))
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[esper.tasks]\n{name} = {module}:TASK\n")
        self.mp.syspath_prepend(str(site))
        importlib.invalidate_caches()
        self.sites.append(site)
        self.modules.append(module)

    def esper(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        full = {k: v for k, v in os.environ.items() if not k.startswith("ESPER_")}
        full["PYTHONPATH"] = os.pathsep.join([*map(str, self.sites), full.get("PYTHONPATH", "")])
        full.update(env)
        exe = Path(sys.executable).with_name("esper")
        return subprocess.run([str(exe), *args], env=full, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def task_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TaskDists:
    dists = TaskDists(tmp_path, monkeypatch)
    yield dists
    for m in dists.modules:
        sys.modules.pop(m, None)


def test_a_broken_task_plugin_is_named_by_its_distribution_and_hides_no_other(task_dist: TaskDists) -> None:
    task_dist("mytask", _GOOD.format(name="mytask"), "esper-task-mine")
    task_dist("bad", _BROKEN, "esper-task-broken")
    listing = list_tasks()
    assert {"pairs", "mytask"} <= {t.name for t in listing.tasks}
    (failure,) = listing.failures
    assert (failure.name, failure.distribution) == ("bad", "esper-task-broken")
    assert "the data module moved" in failure.error
    # Using another task is unaffected; using the broken one says which distribution broke.
    assert find_task("mytask").distribution == "esper-task-mine"
    with pytest.raises(PluginError, match=r"task 'bad' from esper-task-broken 1.0 .*the data module moved"):
        find_task("bad")
    # Strict mode turns any broken task plugin into an error, naming it.
    with pytest.raises(PluginError, match=r"esper-task-broken.*ESPER_STRICT_PLUGINS=1"):
        find_task("pairs", environ={"ESPER_STRICT_PLUGINS": "1"})


@pytest.mark.parametrize("code", [_BROKEN, "import sys\nsys.exit(3)\n", "raise BaseException('odd')\n"])
def test_esper_tasks_list_survives_a_broken_plugin_and_only_check_fails_it(task_dist: TaskDists, code: str) -> None:
    task_dist("bad", code, "esper-task-broken")
    out = task_dist.esper("tasks", "list")
    assert out.returncode == 0, out.stderr
    assert "pairs" in out.stdout and "mnist1d" in out.stdout
    assert "FAILED: task 'bad' from esper-task-broken 1.0" in out.stdout
    doc = json.loads(task_dist.esper("tasks", "list", "--json").stdout)
    assert doc["schema"] == "esper.tasks/1"
    assert [(f["name"], f["distribution"]) for f in doc["failures"]] == [("bad", "esper-task-broken")]
    pairs = next(t for t in doc["tasks"] if t["name"] == "pairs")
    assert pairs["distribution"] == "esper-kernel" and pairs["metric"] == "accuracy" and pairs["widths"]
    # Strict mode is about runs: the listing still lists and exits 0. Failing is asked for with --check.
    strict = task_dist.esper("tasks", "list", ESPER_STRICT_PLUGINS="1")
    assert strict.returncode == 0 and "FAILED" in strict.stdout
    check = task_dist.esper("tasks", "list", "--check")
    assert check.returncode == 2
    assert "FAILED" in check.stdout
    assert check.stderr.strip() == "esper: error: 1 task plugin(s) failed to load: 'bad' (esper-task-broken) (--check)"


def test_listing_tasks_imports_no_torch() -> None:
    code = (
        "import sys\nfrom esper_kernel.cli import main\n"
        "try:\n    main(['tasks', 'list', '--json'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().endswith("NO-TORCH"), out.stdout[-300:]


def test_a_plugin_task_runs_as_a_builtin_one(task_dist: TaskDists) -> None:
    task_dist("mytask", _GOOD.format(name="mytask"), "esper-task-mine")
    assert "mytask" in task_names()
    config = EnvConfig(task="mytask", train_size=32, val_size=16)
    data = load_task(config, 0)
    assert (data.n_train, data.n_val) == (32, 16)
    assert config.topology == "cnn"
    assert make_host(config, data)(data.val_x).shape == (16, 10)


def test_a_size_the_task_cannot_take_is_refused_not_ignored(task_dist: TaskDists) -> None:
    code = _GOOD.format(name="fixed").replace("widths=(4, 8))", "widths=(4, 8), size_params=())")
    task_dist("fixed", code, "esper-task-fixed")
    with pytest.raises(EsperError, match=r"task 'fixed' \(esper-task-fixed\) does not accept n_train; it accepts: no"):
        load_task(EnvConfig(task="fixed", train_size=10), 0)


def test_a_task_name_that_is_not_its_entry_point_name_is_a_failure(task_dist: TaskDists) -> None:
    task_dist("alias", _GOOD.format(name="other"), "esper-task-alias")
    failure = next(f for f in list_tasks().failures if f.name == "alias")
    assert "named 'other', not 'alias'" in failure.error


def test_a_plugin_cannot_take_a_builtin_task_name(task_dist: TaskDists) -> None:
    task_dist("pairs", _GOOD.format(name="pairs"), "esper-task-usurper")
    # The builtin keeps the name and runs; the plugin is the one dropped, named, and listed.
    assert find_task("pairs").distribution == "esper-kernel"
    (failure,) = [f for f in list_tasks().failures if f.name == "pairs"]
    assert failure.distribution == "esper-task-usurper" and "builtin task 'pairs'" in failure.error
    listing = task_dist.esper("tasks", "list")
    assert listing.returncode == 0, listing.stderr
    assert "FAILED: task 'pairs' from esper-task-usurper 1.0" in listing.stdout
    with pytest.raises(PluginError, match=r"esper-task-usurper .*\(ESPER_STRICT_PLUGINS=1\)"):
        find_task("pairs", environ={"ESPER_STRICT_PLUGINS": "1"})


def test_two_plugins_on_one_task_name_are_both_named_and_neither_runs(task_dist: TaskDists) -> None:
    task_dist("twin", _GOOD.format(name="twin"), "esper-task-one")
    task_dist("twin", _GOOD.format(name="twin"), "esper-task-two")
    assert sorted(f.distribution for f in list_tasks().failures if f.name == "twin") == [
        "esper-task-one",
        "esper-task-two",
    ]
    with pytest.raises(PluginError, match=r"declared by 2 distributions \(esper-task-one, esper-task-two\)"):
        find_task("twin")
    assert task_dist.esper("tasks", "list").returncode == 0


_HOSTILE_TASK = """
from esper_kernel.builtin_tasks import PAIRS
import attrs

def build(seed, data_dir, n_train=None, n_val=None):
    data = PAIRS.build(seed, data_dir, n_train=n_train, n_val=n_val)
    {build}

def host(shape, slots, width):
    {host}
    return PAIRS.host(shape, slots, width)

TASK = attrs.evolve(PAIRS, name="odd", build=build, host=host)
"""

#: A task plugin's own code failing in every way a run can meet: (build body, host body, what the error says).
HOSTILE_TASKS = {
    "build-raises": ("raise ValueError('no data here')", "pass", r"build\(\) raised ValueError: no data here"),
    "build-exits": ("raise SystemExit(4)", "pass", r"build\(\) raised SystemExit: 4"),
    "build-interrupts": ("raise KeyboardInterrupt", "pass", r"build\(\) raised KeyboardInterrupt"),
    "host-raises": ("return data", "raise RuntimeError('host boom')", r"host\(\) raised RuntimeError: host boom"),
    "labels-out-of-range": (
        "return attrs.evolve(data, num_classes=2)",
        "pass",
        r"cannot be trained on: its training labels run from 0 to \d, outside \[0, 2\)",
    ),
    "nan-inputs": (
        "return attrs.evolve(data, val_x=data.val_x * float('nan'))",
        "pass",
        r"cannot be trained on: its validation inputs hold NaN",
    ),
    "labels-missing": (
        "return attrs.evolve(data, train_y=data.train_y[:3])",
        "pass",
        r"its training split has 32 inputs but 3 labels",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TASKS))
def test_a_task_plugin_failing_in_its_own_code_is_one_line_naming_it(
    task_dist: TaskDists, tmp_path: Path, case: str
) -> None:
    build, host, says = HOSTILE_TASKS[case]
    task_dist("odd", _HOSTILE_TASK.format(build=build, host=host), "esper-task-odd")
    out = task_dist.esper(
        "run", "--quiet", "--task", "odd", "--epochs", "2", "--train-size", "32", "--val-size", "16",
        "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    (error,) = [line for line in out.stderr.splitlines() if line.startswith("esper: error:")]
    assert error.startswith("esper: error: task 'odd' (esper-task-odd"), error
    assert re.search(says, error), error


# -- MNIST-1D ----------------------------------------------------------------------------

if os.environ.get("REQUIRE_MNIST1D") != "1":
    mnist1d = pytest.importorskip("mnist1d", reason="the mnist1d extra is not installed")


@pytest.fixture
def fresh_mnist1d(monkeypatch: pytest.MonkeyPatch) -> None:
    from esper_kernel.data import local as tasks

    monkeypatch.setattr(tasks, "_MNIST1D_CACHE", {})


def test_mnist1d_is_the_standard_split_generated_locally_without_network(
    fresh_mnist1d: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    import numpy as np

    def no_network(*_a: object, **_k: object) -> None:
        raise AssertionError("MNIST-1D must be generated, never downloaded")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    np.random.seed(123)
    random.seed(123)
    data = load_task(EnvConfig(task="mnist1d"), seed=0)
    assert (data.n_train, data.n_val, data.num_classes) == (4000, 1000, 10)
    assert data.train_x.shape == (4000, 1, 40) and data.train_x.dtype == torch.float32
    assert set(data.train_y.tolist()) == set(range(10))
    # make_dataset reseeds numpy and random globally; the caller's streams are left where they were.
    np.random.seed(123)
    expected = np.random.rand()
    random.seed(123)
    expected_py = random.random()
    np.random.seed(123)
    random.seed(123)
    load_task(EnvConfig(task="mnist1d"), seed=0)
    assert np.random.rand() == expected and random.random() == expected_py


def test_mnist1d_is_the_same_benchmark_every_time_and_honours_sizes(fresh_mnist1d: None) -> None:
    from esper_kernel.data import local as tasks

    a = load_task(EnvConfig(task="mnist1d"), seed=0)
    tasks._MNIST1D_CACHE.clear()
    b = load_task(EnvConfig(task="mnist1d"), seed=5)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    small = load_task(EnvConfig(task="mnist1d", train_size=300, val_size=100), seed=0)
    assert torch.equal(small.train_x, a.train_x[:300]) and small.n_val == 100
    with pytest.raises(EsperError, match="n_train=4001, but MNIST-1D's training split holds only 4000"):
        load_task(EnvConfig(task="mnist1d", train_size=4001), seed=0)


def test_mnist1d_host_sees_one_sample_and_a_spatial_seed_widens_it() -> None:
    from esper_kernel.grow.blueprints import build_seed

    config = EnvConfig(task="mnist1d")
    data = load_task(attrs.evolve(config, train_size=8, val_size=8), 0)
    host = make_host(config, data)
    assert host.topology == "cnn1d" and host.slot_dims == (16, 16, 16)
    # Receptive field: perturbing one input sample changes the features at that sample only.
    host.eval()
    x = torch.randn(1, 1, 40, requires_grad=True)
    feats = host.blocks[0](host.stem(x))
    feats[0, :, 20].sum().backward()
    assert x.grad is not None and x.grad.nonzero()[:, 2].tolist() == [20]
    seed = build_seed("cnn1d", "dilated", 16)
    assert seed(torch.randn(2, 16, 40)).abs().max() == 0  # a fresh seed changes nothing


def test_a_task_listing_a_blueprint_its_topology_lacks_fails_naming_task_and_distribution(
    task_dist: TaskDists,
) -> None:
    from esper_kernel.episode.env import build_registry

    code = _GOOD.format(name="oddbp").replace("widths=(4, 8))", 'widths=(4, 8), blueprints=("conv_small", "mlp_huge"))')
    task_dist("oddbp", code, "esper-task-odd")
    with pytest.raises(
        EsperError, match=r"task 'oddbp' \(esper-task-odd\) lists blueprints .*'mlp_huge'.*cnn catalogue"
    ):
        build_registry(EnvConfig(task="oddbp"))
    # A task naming real blueprints may germinate exactly those.
    task_dist(
        "fewbp", _GOOD.format(name="fewbp").replace("widths=(4, 8))", 'widths=(4, 8), blueprints=("dilated",))'), "d"
    )
    assert build_registry(EnvConfig(task="fewbp")).info("esper").plugin.allowed == ("dilated",)
