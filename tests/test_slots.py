"""SeedSlot: the forward contract, lifecycle, blend schedules, isolation and incubation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from esper_kernel.grow.blueprints import blueprint_names, build_seed, param_count
from esper_kernel.grow.hosts import CNNHost, CNNHostConfig, Host, TransformerHost, TransformerHostConfig
from esper_kernel.grow.slots import SeedSlot, alpha_at, alpha_linear, alpha_sigmoid

BLENDS = ("linear", "sigmoid", "gated")


def _cnn() -> CNNHost:
    return CNNHost(CNNHostConfig(width=8, blocks=2)).eval()


def _tf() -> TransformerHost:
    return TransformerHost(TransformerHostConfig(vocab_size=16, dim=32, heads=2, layers=2, max_len=8)).eval()


def _host(topology: str) -> Host:
    torch.manual_seed(0)
    return _cnn() if topology == "cnn" else _tf()


def _batch(topology: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if topology == "cnn":
        return torch.randn(2, 3, 12, 12, generator=g)
    return torch.randint(0, 16, (2, 8), generator=g)


def _grow(host: Host, slot_index: int, name: str, blend: str = "linear") -> SeedSlot:
    slot = host.seed_slots()[slot_index]
    slot.germinate(build_seed(host.topology, name, slot.dim), blend)
    return slot


def _scramble(module: nn.Module) -> None:
    """Make a fresh (zero-output) seed compute something non-trivial."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))


# ------------------------------------------------------------------ schedules


def test_alpha_linear_endpoints_clipping_and_monotone() -> None:
    assert alpha_linear(0, 10) == 0.0
    assert alpha_linear(10, 10) == 1.0
    assert alpha_linear(-3, 10) == 0.0
    assert alpha_linear(25, 10) == 1.0
    assert alpha_linear(3, 10) == pytest.approx(0.3)
    values = [alpha_linear(s, 10) for s in range(11)]
    assert all(a < b for a, b in itertools.pairwise(values))


@pytest.mark.parametrize("steepness", [0.25, 1.0, 3.0, 50.0])
def test_alpha_sigmoid_endpoints_exact_and_monotone(steepness: float) -> None:
    total = 40
    assert alpha_sigmoid(0, total, steepness) == 0.0
    assert alpha_sigmoid(total, total, steepness) == 1.0
    assert alpha_sigmoid(-1, total, steepness) == 0.0
    assert alpha_sigmoid(total + 5, total, steepness) == 1.0
    values = [alpha_sigmoid(s, total, steepness) for s in range(total + 1)]
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert values[total // 2] == pytest.approx(0.5)


def test_alpha_sigmoid_matches_documented_formula() -> None:
    total, steepness = 30, 1.7
    k = 12 / total

    def raw(s: float) -> float:
        return 1 / (1 + math.exp(-steepness * k * (s - total / 2)))

    for step in range(1, total):
        expected = (raw(step) - raw(0)) / (raw(total) - raw(0))
        assert alpha_sigmoid(step, total, steepness) == pytest.approx(expected, abs=1e-12)


def test_steeper_sigmoid_is_steeper_at_midpoint() -> None:
    total = 100

    def slope(steepness: float) -> float:
        return alpha_sigmoid(55, total, steepness) - alpha_sigmoid(45, total, steepness)

    assert slope(0.5) < slope(1.0) < slope(2.0) < slope(4.0)
    assert slope(0.5) > alpha_linear(55, total) - alpha_linear(45, total) - 1e-3


def test_alpha_sigmoid_rejects_non_positive_steepness() -> None:
    with pytest.raises(ValueError):
        alpha_sigmoid(1, 10, 0.0)


def test_alpha_at_dispatch() -> None:
    assert alpha_at("linear", 3, 10, 5.0) == alpha_linear(3, 10)
    assert alpha_at("gated", 3, 10, 5.0) == alpha_linear(3, 10)
    assert alpha_at("sigmoid", 3, 10, 5.0) == alpha_sigmoid(3, 10, 5.0)
    with pytest.raises(ValueError, match="cosine"):
        alpha_at("cosine", 3, 10, 1.0)


# ------------------------------------------------------------ slot contract


@pytest.mark.parametrize("topology", ["cnn", "transformer"])
def test_dormant_slots_are_identity(topology: str) -> None:
    host = _host(topology)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    for slot in host.seed_slots():
        slot.register_forward_hook(lambda _m, inp, out: seen.append((inp[0], out)))
    host(_batch(topology))
    assert len(seen) == len(host.slots)
    for inp, out in seen:
        assert out is inp or torch.equal(out, inp)


@pytest.mark.parametrize("topology", ["cnn", "transformer"])
@pytest.mark.parametrize("blend", BLENDS)
def test_germinating_any_blueprint_leaves_host_output_unchanged(topology: str, blend: str) -> None:
    host = _host(topology)
    x = _batch(topology)
    before = host(x)
    for i, name in enumerate(blueprint_names(topology)):
        slot = _grow(host, i % len(host.slots), name, blend)
        after = host(x)
        assert torch.equal(after, before), name
        slot.cull()


def test_germinate_sets_invisible_isolated_incubating_state() -> None:
    slot = SeedSlot(8, "cnn")
    slot.set_alpha(0.7)
    slot.set_isolation(False)
    slot.germinate(build_seed("cnn", "conv_small", 8), "gated")
    assert (slot.alpha.item(), slot.isolate.item(), slot.incubate.item()) == (0.0, 1.0, 1.0)
    assert slot.gate is not None and slot.blend == "gated"
    key = slot.live_key()
    assert key[0] is not None and key[1:] == ("gated", ())
    with pytest.raises(RuntimeError):
        slot.germinate(build_seed("cnn", "norm", 8), "linear")


def test_bad_blend_and_bad_alpha_are_rejected() -> None:
    slot = SeedSlot(8, "transformer")
    with pytest.raises(ValueError, match="cosine"):
        slot.germinate(build_seed("transformer", "norm", 8), "cosine")
    assert slot.seed is None
    with pytest.raises(ValueError):
        slot.set_alpha(1.5)
    with pytest.raises(RuntimeError):
        slot.cull()
    with pytest.raises(RuntimeError):
        slot.fossilize()


def test_blend_is_x_plus_alpha_times_seed() -> None:
    torch.manual_seed(0)
    slot = SeedSlot(8, "cnn")
    seed = build_seed("cnn", "conv_small", 8)
    _scramble(seed)
    slot.germinate(seed, "linear")
    slot.set_incubate(False)
    slot.set_alpha(0.3)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(slot(x), x + 0.3 * seed(x))


def test_gated_blend_scales_alpha_per_sample() -> None:
    torch.manual_seed(0)
    slot = SeedSlot(8, "cnn")
    seed = build_seed("cnn", "conv_small", 8)
    _scramble(seed)
    slot.germinate(seed, "gated")
    assert slot.gate is not None
    _scramble(slot.gate)
    slot.set_alpha(1.0)
    x = torch.randn(3, 8, 5, 5)
    g = slot.gate(x)
    assert g.shape == (3, 1, 1, 1)
    assert not torch.allclose(g[0], g[1])
    torch.testing.assert_close(slot(x), x + g * seed(x))


def test_transformer_gate_is_per_token_and_causal() -> None:
    slot = SeedSlot(8, "transformer")
    slot.germinate(build_seed("transformer", "mlp_small", 8), "gated")
    assert slot.gate is not None
    assert slot.gate(torch.randn(2, 5, 8)).shape == (2, 5, 1)


# ------------------------------------------------------------ gradients


@pytest.mark.parametrize("topology", ["cnn", "transformer"])
def test_isolation_blocks_host_gradient_through_seed_path_only(topology: str) -> None:
    """The seed-branch term (slot output minus slot input) has exactly zero
    gradient w.r.t. upstream host parameters when isolated, non-zero when not,
    while the seed itself learns either way."""
    host = _host(topology)
    slot = _grow(host, 1, "norm" if topology == "cnn" else "mlp_small")
    assert slot.seed is not None
    _scramble(slot.seed)
    slot.set_alpha(0.5)
    captured: dict[str, torch.Tensor] = {}
    slot.register_forward_hook(lambda _m, inp, out: captured.update(inp=inp[0], out=out))
    upstream = [p for p in host.blocks[0].parameters()]
    x = _batch(topology)

    def branch_grads() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        host(x)
        branch = (captured["out"] - captured["inp"]).pow(2).sum()
        grads = torch.autograd.grad(branch, upstream + slot.seed_parameters(), allow_unused=True)
        zero = [torch.zeros_like(p) if g is None else g for p, g in zip(upstream, grads, strict=False)]
        return zero, [g for g in grads[len(upstream) :] if g is not None]

    slot.set_isolation(True)
    host_g, seed_g = branch_grads()
    assert all(torch.equal(g, torch.zeros_like(g)) for g in host_g)
    assert any(g.abs().sum() > 0 for g in seed_g)

    slot.set_isolation(False)
    host_g, seed_g = branch_grads()
    assert any(g.abs().sum() > 0 for g in host_g)
    assert any(g.abs().sum() > 0 for g in seed_g)


@pytest.mark.parametrize("topology", ["cnn", "transformer"])
def test_incubation_keeps_output_exact_while_seed_learns(topology: str) -> None:
    host = _host(topology)
    x = _batch(topology)
    baseline = host(x).detach()
    slot = _grow(host, 0, "conv_small" if topology == "cnn" else "attention")
    assert slot.seed is not None
    _scramble(slot.seed)  # seed output is non-zero, yet must stay invisible
    out = host(x)
    assert torch.equal(out, baseline)
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in slot.seed_parameters())
    assert all(p.grad.abs().sum() > 0 for p in slot.seed_parameters() if p.grad is not None)

    # Without incubation (and alpha still 0) the seed gets no task gradient at all.
    host.zero_grad(set_to_none=True)
    slot.set_incubate(False)
    host(x).pow(2).mean().backward()
    assert all(p.grad is None or torch.equal(p.grad, torch.zeros_like(p)) for p in slot.seed_parameters())


# ------------------------------------------------------------ lifecycle


@pytest.mark.parametrize("topology", ["cnn", "transformer"])
@pytest.mark.parametrize("blend", BLENDS)
def test_fossilize_freezes_the_full_blend_into_the_host(topology: str, blend: str) -> None:
    host = _host(topology)
    x = _batch(topology)
    before = host(x)
    slot = _grow(host, 0, "bottleneck" if topology == "cnn" else "gated_mlp", blend)
    seed_params = slot.seed_parameters()
    for p in seed_params:
        with torch.no_grad():
            p.add_(0.2 * torch.randn_like(p))
    slot.set_incubate(False)
    slot.set_alpha(1.0)
    blended = host(x)
    assert not torch.allclose(blended, before)
    host_ids = {id(p) for p in host.host_parameters()}
    assert not any(id(p) in host_ids for p in seed_params)

    slot.fossilize()
    assert slot.seed is None and slot.gate is None
    key = slot.live_key()
    assert key[0] is None and key[1] is None and len(key[2]) == 1
    torch.testing.assert_close(host(x), blended, rtol=0, atol=0)
    host_ids = {id(p) for p in host.host_parameters()}
    assert all(id(p) in host_ids for p in seed_params)
    assert slot.seed_parameters() == []


@pytest.mark.parametrize("topology", ["cnn", "transformer"])
def test_fossil_changes_output_and_slot_can_grow_again(topology: str) -> None:
    host = _host(topology)
    x = _batch(topology)
    before = host(x)
    slot = _grow(host, 0, "conv_small" if topology == "cnn" else "lora8")
    assert slot.seed is not None
    _scramble(slot.seed)
    slot.fossilize()
    with_fossil = host(x)
    assert not torch.allclose(with_fossil, before)
    _grow(host, 0, "norm")
    assert torch.equal(host(x), with_fossil)
    key = slot.live_key()
    assert key[0] is not None and key[1] == "linear" and len(key[2]) == 1


@pytest.mark.parametrize("topology", ["cnn", "transformer"])
def test_cull_removes_seed_parameters(topology: str) -> None:
    host = _host(topology)
    x = _batch(topology)
    before_params = param_count(host)
    before_out = host(x)
    slot = _grow(host, 0, "dilated" if topology == "cnn" else "mlp_large", "gated")
    assert param_count(host) > before_params
    assert slot.seed is not None
    _scramble(slot.seed)
    slot.set_alpha(1.0)
    assert not torch.allclose(host(x), before_out)
    slot.cull()
    assert param_count(host) == before_params
    assert slot.seed is None and slot.gate is None and slot.live_key() == (None, None, ())
    assert torch.equal(host(x), before_out)


@pytest.mark.parametrize("blend", BLENDS)
def test_alpha_forced_zero_is_exactly_the_no_seed_output(blend: str) -> None:
    host = _host("cnn")
    x = _batch("cnn")
    # A fossil in the same slot must survive the counterfactual.
    fossil_slot = _grow(host, 0, "conv_small")
    assert fossil_slot.seed is not None
    _scramble(fossil_slot.seed)
    fossil_slot.fossilize()
    no_seed = host(x)
    slot = _grow(host, 0, "depthwise", blend)
    assert slot.seed is not None
    _scramble(slot.seed)
    slot.set_incubate(False)
    slot.set_alpha(0.8)
    blended = host(x)
    assert not torch.allclose(blended, no_seed)
    with slot.alpha_forced(0.0):
        assert torch.equal(host(x), no_seed)
    assert slot.alpha.item() == pytest.approx(0.8)
    assert torch.equal(host(x), blended)


def test_alpha_forced_restores_even_on_error() -> None:
    slot = SeedSlot(4, "cnn")
    slot.set_alpha(0.25)
    with pytest.raises(KeyError), slot.alpha_forced(1.0):
        assert slot.alpha.item() == 1.0
        raise KeyError("boom")
    assert slot.alpha.item() == 0.25


def test_buffers_follow_the_module_state_dict() -> None:
    slot = SeedSlot(4, "cnn")
    assert {"alpha", "isolate", "incubate"} <= set(slot.state_dict())
    assert all(slot.state_dict()[k].dim() == 0 for k in ("alpha", "isolate", "incubate"))


def test_probe_records_host_gradient_through_seed_path() -> None:
    """The eager diagnostic probe reports exactly zero host gradient via the seed
    when isolated, non-zero when co-adapting, and the gate's alpha spread."""
    torch.manual_seed(0)
    slot = SeedSlot(8, "cnn")
    seed = build_seed("cnn", "conv_small", 8)
    _scramble(seed)
    slot.germinate(seed, "gated")
    assert slot.gate is not None
    _scramble(slot.gate)
    slot.set_alpha(0.5)
    slot.probe = True
    x = torch.randn(4, 8, 5, 5, requires_grad=True)

    slot(x).sum().backward()
    assert slot.probe_grad_norm == 0.0
    assert slot.probe_alpha_var > 0.0

    slot.set_isolation(False)
    slot(x).sum().backward()
    assert slot.probe_grad_norm > 0.0


def test_live_key_tells_blueprints_apart_but_not_two_seeds_of_one_blueprint() -> None:
    # The key counts the graphs a compiled host needs: one per module structure.
    def key(name: str) -> tuple[object, ...]:
        slot = SeedSlot(8, "cnn")
        slot.germinate(build_seed("cnn", name, 8), "linear")
        return slot.live_key()

    assert key("conv_small") == key("conv_small")
    assert key("conv_small") != key("conv_light")


def test_isolation_flag_follows_a_loaded_state() -> None:
    """The eager fast path branches on a Python flag; loading a state must move it with the buffer."""
    torch.manual_seed(0)
    slot = SeedSlot(4, "cnn")
    slot.germinate(nn.Conv2d(4, 4, 3, padding=1), "linear")
    slot.set_alpha(0.5)
    slot.set_isolation(False)
    coadapting = {k: v.clone() for k, v in slot.state_dict().items()}
    slot.set_isolation(True)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    slot(x).sum().backward()
    isolated_grad = x.grad.clone()
    torch.testing.assert_close(isolated_grad, torch.ones_like(x))  # only the identity path reaches the host
    slot.load_state_dict(coadapting)
    x.grad = None
    slot(x).sum().backward()
    assert not torch.allclose(x.grad, isolated_grad)  # the seed path reaches the host again
