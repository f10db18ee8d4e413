"""Hosts: shapes, parameter split, and torch.compile stability across a seed lifecycle."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch._dynamo
from torch import nn

from esper_kernel.grow.blueprints import build_seed, param_count
from esper_kernel.grow.hosts import (
    CNNHost,
    CNNHostConfig,
    Host,
    TransformerHost,
    TransformerHostConfig,
    build_host,
)
from esper_kernel.grow.slots import SeedSlot

CNN_CFG = CNNHostConfig(width=8, blocks=2)
TF_CFG = TransformerHostConfig(vocab_size=16, dim=32, heads=2, layers=2, max_len=8)


def _batch(topology: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if topology == "cnn":
        return torch.randn(4, 3, 16, 16, generator=g)
    return torch.randint(0, TF_CFG.vocab_size, (2, TF_CFG.max_len), generator=g)


# ------------------------------------------------------------------ hosts


def test_cnn_host_shapes_and_slot_dims() -> None:
    host = CNNHost()
    assert host.topology == "cnn"
    assert host.slot_dims == (16, 32, 64)
    assert [s.dim for s in host.seed_slots()] == [16, 32, 64]
    assert host(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_transformer_host_shapes_and_slot_dims() -> None:
    host = TransformerHost()
    assert host.topology == "transformer"
    assert host.slot_dims == (64, 64, 64)
    assert len(host.slots) == TransformerHostConfig().layers
    assert host(torch.randint(0, 32, (2, 10))).shape == (2, 10, 32)
    with pytest.raises(ValueError, match="max_len"):
        host(torch.randint(0, 32, (1, 65)))


def test_transformer_host_is_causal_even_with_seeds() -> None:
    torch.manual_seed(0)
    host = TransformerHost(TF_CFG).eval()
    for slot, name in zip(host.seed_slots(), ("attention", "conv1d"), strict=True):
        slot.germinate(build_seed("transformer", name, slot.dim), "gated")
        with torch.no_grad():
            for p in slot.seed_parameters():
                p.add_(0.2 * torch.randn_like(p))
        slot.set_alpha(1.0)
    idx = _batch("transformer")
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % TF_CFG.vocab_size
    out, out_changed = host(idx), host(changed)
    torch.testing.assert_close(out[:, :-1], out_changed[:, :-1], rtol=0, atol=1e-6)
    assert not torch.allclose(out[:, -1], out_changed[:, -1])


def test_host_parameters_exclude_live_seed_only() -> None:
    host = CNNHost(CNN_CFG)
    n_host = param_count(host)
    slot = host.seed_slots()[1]
    slot.germinate(build_seed("cnn", "conv_small", slot.dim), "gated")
    assert sum(p.numel() for p in host.host_parameters()) == n_host
    assert param_count(host) == n_host + sum(p.numel() for p in slot.seed_parameters())


def test_build_host_dispatch_and_config_checks() -> None:
    assert isinstance(build_host("cnn"), CNNHost)
    assert isinstance(build_host("transformer", TF_CFG), TransformerHost)
    with pytest.raises(ValueError, match="CNNHostConfig"):
        build_host("cnn", TF_CFG)
    with pytest.raises(ValueError, match="mlp"):
        build_host("mlp")
    with pytest.raises(ValueError, match="divisible"):
        TransformerHostConfig(dim=30, heads=4)
    with pytest.raises(ValueError):
        CNNHostConfig(blocks=0)


# ------------------------------------------------------------------ compile


class _CountingBackend:
    """A torch.compile backend that records each graph Dynamo hands it."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        self.graphs += 1
        return gm.forward


def _sgd(params: list[nn.Parameter], lr: float = 0.05) -> None:
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p.sub_(lr * p.grad)
                p.grad = None


def _lifecycle(host: Host) -> Iterator[str]:
    """Drive a scripted seed lifecycle; yields a phase label before each training step."""
    a, b = host.seed_slots()[0], host.seed_slots()[1]
    yield from ("dormant",) * 2
    seed_a = "conv_small" if host.topology == "cnn" else "attention"
    a.germinate(build_seed(host.topology, seed_a, a.dim), "sigmoid")
    yield from ("incubate",) * 3
    a.set_incubate(False)
    for i in range(4):
        a.set_alpha((i + 1) / 4)
        yield "blend"
    a.set_isolation(False)
    a.set_alpha(0.9)
    yield "co-adapt"
    a.set_alpha(1.0)
    yield "co-adapt"
    a.fossilize()
    yield from ("fossilized",) * 2
    seed_b = "bottleneck" if host.topology == "cnn" else "lora8"
    b.germinate(build_seed(host.topology, seed_b, b.dim), "gated")
    b.set_incubate(False)
    for i in range(3):
        b.set_alpha((i + 1) / 3)
        b.set_isolation(i % 2 == 0)
        yield "gated blend"
    with b.alpha_forced(0.0):
        yield "counterfactual"
    b.cull()
    yield from ("culled",) * 2


@pytest.mark.parametrize("topology", ["cnn", "transformer"])
def test_compiled_host_recompiles_only_when_live_modules_change(topology: str) -> None:
    """Compiled output tracks eager output through the whole lifecycle, and blend
    state changes (alpha, isolate, incubate) never trigger a recompile.

    Runs in train mode with grad enabled: each step compares outputs, then
    backpropagates through the compiled graph and takes an SGD step on every
    parameter, so seeds drift away from zero and the comparison is non-trivial.
    Only forward graphs are counted (the backend sees Dynamo's forward graph;
    backward runs eagerly through it).
    """
    torch._dynamo.reset()
    torch.manual_seed(0)
    host = build_host(topology, CNN_CFG if topology == "cnn" else TF_CFG).train()
    backend = _CountingBackend()
    compiled = torch.compile(host, backend=backend, fullgraph=True)
    x = _batch(topology)
    keys: set[tuple[tuple[bool, str | None, int], ...]] = set()
    graphs_per_phase: dict[str, int] = {}
    with torch._dynamo.config.patch(recompile_limit=64):
        for phase in _lifecycle(host):
            keys.add(tuple(s.live_key() for s in host.seed_slots()))
            with torch.no_grad():
                eager = host(x)
            out = compiled(x)
            torch.testing.assert_close(out, eager, rtol=0, atol=1e-5, msg=phase)
            out.float().pow(2).mean().backward()
            _sgd(list(host.parameters()))
            graphs_per_phase[phase] = backend.graphs
    print(f"{topology}: {backend.graphs} compiled graphs for {len(keys)} live-key sets: {graphs_per_phase}")
    assert len(keys) == 4
    assert 1 <= backend.graphs <= len(keys)
    # Phases that only changed buffers must not have added graphs.
    assert graphs_per_phase["blend"] == graphs_per_phase["incubate"]
    assert graphs_per_phase["co-adapt"] == graphs_per_phase["incubate"]
    assert graphs_per_phase["counterfactual"] == graphs_per_phase["gated blend"]


def test_slot_buffers_are_not_specialised_by_compile() -> None:
    """A compiled bare slot follows alpha changes without recompiling."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    slot = SeedSlot(8, "transformer")
    seed = build_seed("transformer", "mlp_small", 8)
    with torch.no_grad():
        for p in seed.parameters():
            p.add_(0.2 * torch.randn_like(p))
    slot.germinate(seed, "linear")
    backend = _CountingBackend()
    compiled = torch.compile(slot, backend=backend, fullgraph=True)
    x = torch.randn(2, 3, 8)
    with torch.no_grad():
        s = seed(x)
        for a in (0.0, 0.25, 1.0):
            slot.set_alpha(a)
            torch.testing.assert_close(compiled(x), x + a * s)
    assert backend.graphs == 1
