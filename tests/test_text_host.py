"""The text task's growth-ready host (a bigram model: attention window 1) and its own blueprints."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from esper_kernel.builtin_tasks import TEXT
from esper_kernel.commands.evaluate import EvalJob, PolicySpec, play_episode
from esper_kernel.compose.core import CoreHeads
from esper_kernel.compose.stages import Op
from esper_kernel.data.taskplugins import HostShape
from esper_kernel.episode.env import EnvConfig, add_fossils, build_registry
from esper_kernel.grow.blueprints import blueprint_names
from esper_kernel.grow.flops import forward_flops
from esper_kernel.grow.hosts import TransformerHost, TransformerHostConfig
from esper_kernel.harness import random_view
from esper_kernel.settings.config import converter

T = 16


def _logits_change(host: torch.nn.Module, earlier: int, at: int = T - 1) -> bool:
    """Whether the logits at position ``at`` move when only the token at position ``earlier`` changes."""
    torch.manual_seed(0)
    x = torch.randint(0, 20, (1, T))
    y = x.clone()
    y[0, earlier] = (x[0, earlier] + 1) % 20
    host.eval()
    with torch.no_grad():
        return not torch.allclose(host(x)[0, at], host(y)[0, at])


def _host(window: int | None, layers: int = 2, dim: int = 16) -> TransformerHost:
    torch.manual_seed(0)
    return TransformerHost(
        TransformerHostConfig(vocab_size=20, dim=dim, heads=2, layers=layers, max_len=T, window=window)
    )


def test_a_window_1_host_predicts_from_the_current_character_alone() -> None:
    bigram = _host(window=1)
    assert not any(_logits_change(bigram, earlier) for earlier in range(T - 1))
    assert _logits_change(bigram, T - 1)
    # The default (no window) host does read earlier characters.
    assert _logits_change(_host(window=None), 0)


def test_a_window_w_host_sees_w_positions_per_layer() -> None:
    one_layer = _host(window=3, layers=1)
    assert [_logits_change(one_layer, T - 1 - lag) for lag in range(5)] == [True, True, True, False, False]
    # Two layers of window 3 see 2 * (3 - 1) + 1 = 5 positions.
    two = _host(window=3, layers=2)
    assert [_logits_change(two, T - 1 - lag) for lag in range(7)] == [True] * 5 + [False] * 2


def test_the_text_task_host_has_no_context_at_any_width_of_its_family() -> None:
    shape = HostShape(in_channels=1, num_classes=20, seq_len=T)
    for width in (None, *TEXT.widths):
        host = TEXT.host(shape, 3, width)
        assert isinstance(host, TransformerHost) and host.config.window == 1
        assert not _logits_change(host, 0)


@pytest.mark.parametrize("blueprint", ["attention", "conv1d"])
def test_a_context_seed_gives_the_bigram_host_context(blueprint: str) -> None:
    host = _host(window=1)
    add_fossils(host, [(0, blueprint, 1.0)])
    # Its output projection starts at zero (it changes nothing until trained); train it a little by hand.
    with torch.no_grad():
        for p in host.seed_slots()[0].fossils[0].parameters():
            p.add_(0.3 * torch.randn_like(p))
    assert _logits_change(host, T - 2)
    assert _logits_change(host, T - 4)
    if blueprint == "conv1d":  # a causal kernel of 4 sees back 3 positions, no further
        assert not _logits_change(host, T - 5)


def test_flops_count_no_attention_for_a_window_1_host() -> None:
    x = torch.zeros(1, T, dtype=torch.long)
    full, bigram = forward_flops(_host(None), x), forward_flops(_host(1), x)
    # Two layers of causal attention, 4 * T * T * D each, are all that differ.
    assert full - bigram == 2 * 4 * T * T * 16


def test_the_text_task_may_germinate_only_its_own_blueprints() -> None:
    cfg = EnvConfig(task="text", epochs=4, slots=3)
    registry = build_registry(cfg)
    space = registry.space
    head = space.names.index("blueprint")
    catalogue = blueprint_names("transformer")
    masks = registry.masks(random_view(registry, random.Random(0), n_slots=3))
    legal = {catalogue[i] for i in range(len(catalogue)) if bool(masks[0, Op.GERMINATE, head, i])}
    assert legal == set(TEXT.blueprints or ()) == {"attention", "conv1d"}
    # Every choice stays on the head, so observations and policies keep their shape.
    assert space.head("blueprint").spec.choices == catalogue


def test_random_growth_on_text_draws_only_the_tasks_blueprints(tmp_path: Path) -> None:
    corpus = tmp_path / "play.txt"
    corpus.write_text("When shall we three meet again\nIn thunder, lightning, or in rain?\n" * 40, encoding="utf-8")
    env = EnvConfig(task="text", data_dir=str(corpus), epochs=6, slots=3, batch_size=16, train_size=16)
    drawn = set()
    for seed in range(3):
        result = play_episode(EvalJob(converter.unstructure(env), PolicySpec("random"), seed, None))
        drawn |= {g["choices"]["blueprint"] for g in result.germinate}
    assert drawn and drawn <= {"attention", "conv1d"}


def test_core_heads_refuse_blueprints_outside_the_catalogue() -> None:
    with pytest.raises(ValueError, match=r"allowed blueprints \['mlp_huge'\] must be a non-empty subset"):
        CoreHeads(3, blueprint_names("transformer"), "transformer", allowed=("mlp_huge",))
    with pytest.raises(ValueError, match="non-empty subset"):
        CoreHeads(3, blueprint_names("transformer"), "transformer", allowed=())
