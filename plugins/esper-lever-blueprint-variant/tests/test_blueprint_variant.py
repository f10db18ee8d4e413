"""Contract and effect tests for the blueprint_variant lever, loaded through its installed entry point."""

from __future__ import annotations

import pytest
import torch

from esper_kernel.testing import Harness, LeverContract, compile_graph_counts

torch.set_num_threads(1)


class TestBlueprintVariantContract(LeverContract):
    lever = "blueprint_variant"


@pytest.mark.parametrize("blueprint", ["conv_small", "bottleneck"])
def test_germinated_seed_parameter_count_grows_with_the_variant(blueprint: str) -> None:
    counts = {}
    for choice in ("SMALL", "MEDIUM", "LARGE"):
        h = Harness(["blueprint_variant"], width=16)
        seed = h.germinate(0, blueprint=blueprint, blueprint_variant=choice)
        assert seed.knobs.width_scale == {"SMALL": 0.5, "MEDIUM": 1.0, "LARGE": 2.0}[choice]
        counts[choice] = h.seed_parameter_count(0)
    assert counts["SMALL"] < counts["MEDIUM"] < counts["LARGE"], counts


def test_each_variant_costs_at_most_one_graph() -> None:
    rounds = [[{"blueprint_variant": c}] * 2 for c in ("MEDIUM", "MEDIUM", "SMALL", "LARGE", "SMALL")]
    counts = compile_graph_counts(["blueprint_variant"], rounds)
    assert counts[1] == counts[0]  # same variant again: nothing new
    assert counts[3] - counts[1] >= 1  # a new width is a new graph (honestly SPECIALIZES)
    assert counts[4] == counts[3]  # a variant seen before is cached
