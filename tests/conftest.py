"""Shared fixtures: real installed lever distributions, and the CLI in a subprocess.

``lever_dist`` installs a lever the way pip would leave it on disk: a module
plus a ``<name>-<version>.dist-info`` folder whose ``entry_points.txt`` names
it in the ``esper.levers`` group. ``importlib.metadata`` then finds it like any
installed package, so registry tests exercise discovery for real rather than
handing the registry fake entry points.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import attrs
import pytest
import torch

from esper_kernel.compose.core import CoreHeads
from esper_kernel.compose.discovery import ENTRY_POINT_GROUP, LoadResult, Selection, load_levers
from esper_kernel.compose.masks import MaskView
from esper_kernel.compose.registry import Registry
from esper_kernel.compose.seeds import SeedState
from esper_kernel.compose.stages import Stage

#: Blueprint names for tests' core heads: fixed, so tests do not depend on the blueprint catalogue.
TEST_BLUEPRINTS = ("conv_small", "attention", "norm")


def seeded(seed: int) -> torch.Generator:
    """A generator of the test's own: another test's use of torch's global RNG changes none of its draws."""
    return torch.Generator().manual_seed(seed)


def make_core() -> CoreHeads:
    return CoreHeads(n_slots=3, blueprints=TEST_BLUEPRINTS, topology="cnn")


def make_view(reg: Registry, n_envs: int = 2, stage: Stage = Stage.DORMANT, epoch: int = 0) -> MaskView:
    """Every slot of every env in ``stage``: with DORMANT, germinating is legal everywhere."""
    return MaskView(
        space=reg.space,
        n_envs=n_envs,
        n_slots=3,
        topology="cnn",
        max_epochs=20,
        epoch=torch.full((n_envs,), epoch),
        slot_stage=torch.full((n_envs, 3), int(stage)),
        fossilize_ok=torch.zeros(n_envs, 3, dtype=torch.bool),
        blueprints=TEST_BLUEPRINTS,
    )


def make_seed(reg: Registry, **choices: str) -> SeedState:
    """A seed as GERMINATE records it: every head's choice (default unless given) and value."""
    decision = reg.space.decode(reg.space.encode([{"op": "germinate", **choices}]))[0]
    return SeedState(
        seed_id="seed-0",
        slot=0,
        blueprint=decision.choices["blueprint"],
        blend=decision.choices["blend"],
        topology="cnn",
        germinated_epoch=2,
        max_epochs=20,
        choices=decision.choices,
        values=decision.values,
    )


@attrs.frozen
class InstalledLever:
    name: str
    dist: str
    version: str
    module: str
    site: Path

    @property
    def entry_point(self) -> str:
        return self.module


def _normalize(dist: str) -> str:
    return re.sub(r"[-_.]+", "_", dist).lower()


class LeverDists:
    """Installs lever distributions into per-test site directories.

    Each distribution gets its own directory, prepended to ``sys.path``, so the
    most recently installed one is found first: tests of ordering can then
    tell discovery order from the registry's order.
    """

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self._tmp = tmp_path
        self._mp = monkeypatch
        self.installed: list[InstalledLever] = []

    def __call__(
        self,
        name: str,
        code: str,
        dist: str | None = None,
        version: str = "1.0",
        *,
        entry_point: str | None = None,
    ) -> InstalledLever:
        """Install lever ``name`` whose module source is ``code``.

        ``dist`` defaults to ``esper-lever-<name>``: importlib.metadata keeps
        only the first distribution of a given name, so levers meant to be
        distinct need distinct distributions. ``entry_point`` overrides the
        entry point's value (to point it at something that does not exist).
        """
        dist = dist or f"esper-lever-{name.replace('_', '-')}"
        module = f"{_normalize(dist)}_{name}"
        site = self._tmp / f"site{len(self.installed)}"
        site.mkdir()
        (site / f"{module}.py").write_text(textwrap.dedent(code))
        info = site / f"{_normalize(dist)}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{name} = {entry_point or module}\n")
        self._mp.syspath_prepend(str(site))  # also invalidates importlib's caches
        importlib.invalidate_caches()
        lever = InstalledLever(name, dist, version, module, site)
        self.installed.append(lever)
        return lever

    @property
    def dists(self) -> set[str]:
        return {lv.dist for lv in self.installed}

    def entry_points(self) -> list[md.EntryPoint]:
        """The real entry points of the distributions this fixture installed, and no others.

        The esper-kernel distribution's own levers are installed too; tests
        that must not depend on them load only these.
        """
        return [
            ep
            for ep in md.entry_points(group=ENTRY_POINT_GROUP)
            if ep.dist is not None and ep.dist.metadata["Name"] in self.dists
        ]

    def load(self, selection: Selection | None = None) -> LoadResult:
        return load_levers(selection or Selection(), self.entry_points())

    def registry(self, selection: Selection | None = None) -> Registry:
        return Registry.open(make_core(), selection or Selection(), self.entry_points())

    @property
    def pythonpath(self) -> str:
        return os.pathsep.join(str(lv.site) for lv in reversed(self.installed))

    def cleanup(self) -> None:
        for lv in self.installed:
            sys.modules.pop(lv.module, None)


@pytest.fixture
def lever_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LeverDists]:
    dists = LeverDists(tmp_path, monkeypatch)
    yield dists
    # Module names repeat across tests; a cached module would leak one test's lever into the next.
    dists.cleanup()


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread_session() -> Iterator[None]:
    """One intra-op thread from the start, so module-scoped fixtures (tasks, registries) get it too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_intra_op_thread(_one_intra_op_thread_session: None) -> Iterator[None]:
    """One intra-op thread in every test, restored after it even if the test changed it.

    The models under test are tiny: on a shared 2-core box intra-op thread
    hand-off dominates and makes them several times slower, and conv sums
    differ in the last bits between thread counts (workers run one thread).
    """
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_esper_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own ESPER_* settings must not change what tests see."""
    for key in list(os.environ):
        if key.startswith("ESPER_"):
            monkeypatch.delenv(key)


def _esper_command() -> list[str]:
    script = Path(sys.executable).with_name("esper")
    return [str(script)] if script.exists() else [sys.executable, "-m", "esper_kernel.cli"]


class CliRunner:
    """Runs the ``esper`` console script in a fresh process that sees the test levers."""

    def __init__(self, dists: LeverDists) -> None:
        self._dists = dists

    def __call__(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full = {k: v for k, v in os.environ.items() if not k.startswith("ESPER_")}
        paths: Sequence[str] = [p for p in (self._dists.pythonpath, full.get("PYTHONPATH", "")) if p]
        full["PYTHONPATH"] = os.pathsep.join(paths)
        full["COLUMNS"] = "200"  # so rich does not wrap the names tests look for
        full.update(env or {})
        return subprocess.run(
            [*_esper_command(), *args], env=full, capture_output=True, text=True, timeout=120, check=False
        )


@pytest.fixture
def run_esper(lever_dist: LeverDists) -> CliRunner:
    return CliRunner(lever_dist)
