"""Contract and effect tests for the g2_threshold lever, loaded through its installed entry point."""

from __future__ import annotations

import random

import attrs
import torch

from esper_kernel import Op, Stage
from esper_kernel.testing import Harness, LeverContract, open_registry, random_view

torch.set_num_threads(1)


class TestG2ThresholdContract(LeverContract):
    lever = "g2_threshold"


def test_strict_seed_needs_a_higher_grad_ratio_than_lenient() -> None:
    h = Harness(["g2_threshold"])
    strict = h.germinate(0, g2_threshold="STRICT")
    lenient = h.germinate(1, g2_threshold="LENIENT")
    assert (strict.knobs.g2_threshold, lenient.knobs.g2_threshold) == (0.20, 0.05)
    # A ratio between the two thresholds: the lenient seed blends, the strict one keeps training.
    for _ in range(6):
        h.end_epoch(grad_ratio=0.12)
    assert h.stage(1) is Stage.BLENDING
    assert h.stage(0) is Stage.TRAINING
    h.end_epoch(grad_ratio=0.25)
    assert h.stage(0) is Stage.BLENDING


def test_strict_is_masked_out_late_in_the_episode() -> None:
    reg = open_registry(["g2_threshold"])
    # 20 epochs, kernel defaults: germinated 1 + dwell 2 + a 5-epoch ramp, so a seed germinated
    # at epoch 12 blends through epochs 15-19 and one germinated at 13 would not finish.
    view = attrs.evolve(random_view(reg, random.Random(0)), n_envs=3, epoch=torch.tensor([0, 12, 13]))
    view = attrs.evolve(
        view, slot_stage=torch.zeros(3, 2, dtype=torch.long), fossilize_ok=torch.zeros(3, 2, dtype=torch.bool)
    )
    masks = reg.masks(view)  # composed with the kernel's own masks
    strict = masks[:, int(Op.GERMINATE), reg.space.head("g2_threshold").index, 2]
    assert strict.tolist() == [True, True, False]
