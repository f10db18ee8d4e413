"""docs/writing-levers.md: its per-epoch lever, installed as a user would, passes
the contract and ramps a seed's learning rate every epoch."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from conftest import LeverDists, make_view

from esper_kernel import Op
from esper_kernel.compose.discovery import Selection
from esper_kernel.testing import Harness, LeverContract, LeverUnderTest, open_registry

DOC = Path(__file__).resolve().parent.parent / "docs" / "writing-levers.md"


def _per_epoch_example() -> str:
    section = DOC.read_text().split("## 3. A per-epoch lever", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "section 3 of docs/writing-levers.md should hold exactly one python example"
    return blocks[0]


@pytest.fixture
def warmup(lever_dist: LeverDists) -> LeverDists:
    lever_dist("warmup", _per_epoch_example(), dist="esper-lever-warmup")
    return lever_dist


def _lr_per_epoch(h: Harness, epochs: int) -> list[float]:
    out = [h.seed_group_lr(0)]
    for _ in range(epochs - 1):
        h.end_epoch(grad_ratio=1.0)
        out.append(h.seed_group_lr(0))
    return out


@pytest.mark.usefixtures("warmup")
def test_docs_warmup_ramps_the_param_group_lr_every_epoch() -> None:
    h = Harness(["warmup"])
    host_lr = h.lifecycle.config.host_lr
    h.germinate(0, warmup="SHORT")
    assert _lr_per_epoch(h, 5) == pytest.approx([host_lr * f for f in (1 / 3, 2 / 3, 1.0, 1.0, 1.0)])
    long = Harness(["warmup"])
    long.germinate(0, warmup="LONG")
    lrs = _lr_per_epoch(long, 7)
    assert all(b > a for a, b in itertools.pairwise(lrs[:6])), lrs  # rises every epoch of the ramp
    assert lrs[5:] == pytest.approx([host_lr, host_lr])


@pytest.mark.usefixtures("warmup")
def test_docs_warmup_composes_with_the_lr_lever() -> None:
    h = Harness(["lr", "warmup"])
    h.germinate(0, lr="CAUTIOUS", warmup="SHORT")
    cautious = 0.75 * h.lifecycle.config.host_lr
    assert _lr_per_epoch(h, 4) == pytest.approx([cautious / 3, 2 * cautious / 3, cautious, cautious])


def test_docs_warmup_masks_ramps_that_cannot_finish(warmup: LeverDists) -> None:
    reg = warmup.registry()
    assert reg.knob_owners["lr_scale"] == ("warmup",)
    head = reg.space.head("warmup").index
    legal = {
        epoch: reg.masks(make_view(reg, n_envs=1, epoch=epoch))[0, int(Op.GERMINATE), head, :3].tolist()
        for epoch in (14, 15, 17, 18)
    }
    # 20 epochs: a seed germinated at epoch e trains in 20 - e of them; a ramp of s must fit.
    assert legal == {
        14: [True, True, True],
        15: [True, True, False],
        17: [True, True, False],
        18: [True, False, False],
    }


@pytest.mark.parametrize(
    "check",
    [
        "test_hook_conformance",
        "test_head_specs",
        "test_masks_over_random_states",
        "test_telemetry",
        "test_on_enter_stage_every_transition",
        "test_on_epoch_every_stage",
        "test_knob_ownership_with_installed_levers",
        "test_compile_safety",
    ],
)
@pytest.mark.usefixtures("warmup")
def test_docs_warmup_passes_the_contract(check: str) -> None:
    getattr(LeverContract(), check)(LeverUnderTest("warmup", open_registry(["warmup"])))


def test_docs_warmup_is_selectable_by_name(warmup: LeverDists) -> None:
    assert warmup.registry(Selection(only=("warmup",))).names == ("warmup",)


HOOKS_DOC = DOC.parent / "hooks.md"


def _hooks_on_epoch_example() -> str:
    section = HOOKS_DOC.read_text().split("## on_epoch", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    return block


def test_hooks_doc_on_epoch_example_runs_beside_the_builtin_levers(lever_dist: LeverDists) -> None:
    from conftest import make_core

    from esper_kernel.compose.discovery import installed_entry_points
    from esper_kernel.compose.registry import Registry

    lever_dist("warmup", _hooks_on_epoch_example(), dist="esper-lever-warmup")
    # A default install: every builtin lever, the builtin lr among them, beside the docs' example.
    reg = Registry.open(make_core(), Selection(), installed_entry_points())
    assert not reg.failures, [f.describe() for f in reg.failures]
    assert "warmup" in reg.names and "lr" in reg.names
    h = Harness(["lr", "warmup"])
    h.germinate(0, lr="AGGRESSIVE", warmup="short")
    aggressive = 2.0 * h.lifecycle.config.host_lr
    assert _lr_per_epoch(h, 4) == pytest.approx([aggressive / 3, 2 * aggressive / 3, aggressive, aggressive])


@pytest.mark.usefixtures("warmup")
def test_docs_warmup_telemetry_is_for_the_epoch_that_was_trained(tmp_path: Path) -> None:
    from esper_kernel.episode.env import EnvConfig, MorphoEnv, build_registry, load_task
    from esper_kernel.infra.telemetry import Telemetry, read_events

    cfg = EnvConfig(epochs=5, slots=2, batch_size=32, train_size=64, val_size=32, width=4)
    reg = build_registry(cfg, Selection(only=("warmup",)))
    path = tmp_path / "events.jsonl"
    trained_at: list[float] = []
    with Telemetry(path, "warmup", console=False) as tel:
        env = MorphoEnv(cfg, reg, load_task(cfg, 0), tel.log)
        env.reset(0)
        env.step(reg.space.encode([{"op": "germinate", "slot": "s0", "warmup": "SHORT"}])[0])
        while not env.done:
            trained_at.append(env.runner.optimizer.seed_group_lr(0) / env.lifecycle.config.host_lr)
            env.step(reg.space.encode([{"op": "wait"}])[0])
    ramp = [e["warmup.ramp"][0] for e in read_events(path) if e["event"] == "epoch.completed"]
    # Epoch e's field reads the rate epoch e trained at: a third in the germination epoch, not two thirds.
    assert ramp[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert ramp[1 : 1 + len(trained_at)] == pytest.approx(trained_at)
