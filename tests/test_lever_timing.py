"""Every lever's mask follows the kernel's timeline: a choice is legal exactly up
to the last germination epoch from which its effect still happens in the episode.

Each case finds that last legal epoch from the composed masks, then drives a
real lifecycle (gates passing at their first try, as the timeline assumes) from
it and from the epoch after, and checks the effect happens in the first and not
in the second. Run for two episode lengths, each lever alone and with all six
builtins (whose quickest dwell and tempo then shorten the timeline).
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Callable

import pytest
import torch

from esper_kernel import MaskView, Op, SeedState, Stage
from esper_kernel.testing import Harness

BUILTINS = ("dwell", "isolation", "lr", "probation", "steepness", "tempo")
QUICK = {"dwell": "MINIMAL", "tempo": "FAST"}


def _entered(stage: Stage) -> Callable[[SeedState, int], bool]:
    """The seed trained at least one episode epoch in ``stage`` (recorded per epoch by the lifecycle)."""
    return lambda seed, max_epochs: int(stage) in seed.metrics.stage


def _blended(seed: SeedState, max_epochs: int) -> bool:
    # G3 passed at the end of an episode epoch: the ramp's last epoch ran.
    return seed.stage in (Stage.PROBATIONARY, Stage.FOSSILIZED) or int(Stage.PROBATIONARY) in seed.metrics.stage


def _timed_out(seed: SeedState, max_epochs: int) -> bool:
    return seed.cull_reason == "probation_timeout"


#: lever -> (head, choice, what must happen in the episode for the choice to matter, the choice that
#: must make it happen: the same, except for probation, whose STANDARD is legal while SHORT still times out).
CASES: dict[str, tuple[str, str, Callable[[SeedState, int], bool], str]] = {
    "tempo": ("tempo", "GLACIAL", _blended, "GLACIAL"),
    "dwell": ("dwell", "EXTENDED", _blended, "EXTENDED"),
    "isolation": ("isolation", "COADAPT", _entered(Stage.BLENDING), "COADAPT"),
    "steepness": ("steepness", "SHARP", _entered(Stage.BLENDING), "SHARP"),
    "probation": ("probation", "STANDARD", _timed_out, "SHORT"),
    "g2_threshold": ("g2_threshold", "STRICT", _blended, "STRICT"),
    "blueprint_variant": ("blueprint_variant", "LARGE", _blended, "LARGE"),
    "isolation_strength": ("isolation_strength", "HALF", _entered(Stage.BLENDING), "HALF"),
}


def _installed(name: str) -> bool:
    return any(ep.name == name for ep in md.entry_points(group="esper.levers"))


def _legal(h: Harness, epoch: int, head: str, choice: str) -> bool:
    reg = h.registry
    view = MaskView(
        space=reg.space,
        n_envs=1,
        n_slots=2,
        topology="cnn",
        max_epochs=h.lifecycle.config.max_epochs,
        epoch=torch.tensor([epoch]),
        slot_stage=torch.zeros(1, 2, dtype=torch.long),
        fossilize_ok=torch.zeros(1, 2, dtype=torch.bool),
        blueprints=("conv_small",),
    )
    idx = reg.space.head(head).index
    return bool(reg.masks(view)[0, int(Op.GERMINATE), idx, reg.space.choice_index(head, choice)])


def _live_from(levers: tuple[str, ...], max_epochs: int, epoch: int, choices: dict[str, str]) -> SeedState:
    h = Harness(levers, max_epochs=max_epochs)
    h.epoch = epoch
    seed = h.germinate(0, blend="sigmoid", **choices)
    while h.epoch < max_epochs:
        h.end_epoch(grad_ratio=1.0, contribution=-0.01)  # never worth fossilizing: it lives its whole life
    return seed


@pytest.mark.parametrize("max_epochs", [20, 40])
@pytest.mark.parametrize("with_builtins", [False, True], ids=["alone", "with-builtins"])
@pytest.mark.parametrize("lever", list(CASES))
def test_choice_is_legal_exactly_while_its_effect_can_happen(lever: str, with_builtins: bool, max_epochs: int) -> None:
    if not _installed(lever):
        pytest.skip(f"lever {lever!r} is not installed")
    head, choice, happens, acting = CASES[lever]
    levers = tuple(dict.fromkeys((lever, *BUILTINS))) if with_builtins else (lever,)
    h = Harness(levers, max_epochs=max_epochs)
    legal = [e for e in range(max_epochs) if _legal(h, e, head, choice)]
    last = legal[-1]
    assert legal == list(range(last + 1)), f"{head}={choice} legal at {legal}: not a prefix of the episode"
    assert last < max_epochs - 1, f"{head}={choice} legal to the very end: nothing to test"
    others = {k: v for k, v in QUICK.items() if with_builtins and k != head}
    assert happens(_live_from(levers, max_epochs, last, {head: acting, **others}), max_epochs)
    assert not happens(_live_from(levers, max_epochs, last + 1, {head: acting, **others}), max_epochs)


@pytest.mark.parametrize("max_epochs", [20, 40])
def test_lr_is_legal_to_the_last_epoch_and_acts_in_it(max_epochs: int) -> None:
    h = Harness(["lr"], max_epochs=max_epochs)
    assert all(_legal(h, max_epochs - 1, "lr", c) for c in ("CAUTIOUS", "STANDARD", "AGGRESSIVE"))
    h.epoch = max_epochs - 1
    h.germinate(0, lr="AGGRESSIVE")
    assert h.seed_group_lr(0) == pytest.approx(2 * h.lifecycle.config.host_lr)


@pytest.mark.parametrize("max_epochs", [20, 40])
def test_most_of_an_episode_leaves_a_real_choice(max_epochs: int) -> None:
    h = Harness(BUILTINS, max_epochs=max_epochs)
    for head, choices in (("tempo", ("FAST", "STANDARD")), ("dwell", ("MINIMAL", "SHORT"))):
        several = [e for e in range(max_epochs) if sum(_legal(h, e, head, c) for c in choices) == 2]
        # Two or more choices stay legal until a seed can no longer finish a 5-epoch ramp.
        assert len(several) >= max_epochs - 8, (head, several)
