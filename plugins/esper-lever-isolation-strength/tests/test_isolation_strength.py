"""Contract and effect tests for the isolation_strength lever, loaded through its installed entry point."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from esper_lever_isolation_strength import scale_gradient

from esper_kernel import PluginError, Stage
from esper_kernel.testing import CountingBackend, Harness, LeverContract, check_compile_safety, open_registry

torch.set_num_threads(1)

KEEP = {"NONE": 1.0, "HALF": 0.5, "MOST": 0.1}


class TestIsolationStrengthContract(LeverContract):
    lever = "isolation_strength"


def test_scale_gradient_is_identity_forward_and_scales_backward() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    y = scale_gradient(x, strength=0.9)
    assert torch.equal(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 0.1))
    z = torch.zeros(2, requires_grad=True)
    (scale_gradient(z, 0.5) * float("inf")).sum().backward()
    assert torch.equal(z.grad, torch.zeros(2))  # a non-finite gradient is dropped


def _host_grad_via_seed(choice: str) -> float:
    """Host gradient norm through the seed path, with the path opened by the isolation lever."""
    torch.manual_seed(0)
    h = Harness(["isolation", "isolation_strength"])
    seed = h.germinate(0, isolation="COADAPT", isolation_strength=choice)
    with torch.no_grad():  # a fresh seed's last layer is zero: give it a gradient to pass on
        for p in h.lifecycle.slots[0].seed_parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    assert h.run_until(Stage.BLENDING, grad_ratio=1.0)
    assert seed.isolated_when_blending is False
    slot = h.lifecycle.slots[0]
    slot.probe = True
    h.host.train()
    h.host(h.batch()).pow(2).mean().backward()
    return slot.probe_grad_norm


def test_host_gradient_through_the_seed_scales_by_one_minus_strength() -> None:
    grads = {c: _host_grad_via_seed(c) for c in KEEP}
    assert grads["NONE"] > 0
    for choice, keep in KEEP.items():
        assert grads[choice] == pytest.approx(keep * grads["NONE"], rel=1e-4), grads


def test_transform_really_breaks_the_graph() -> None:
    torch._dynamo.reset()
    h = Harness(["isolation_strength"])
    h.germinate(0, isolation_strength="HALF")
    backend = CountingBackend()
    compiled = torch.compile(h.host, backend=backend, fullgraph=False)
    compiled(h.batch()).sum().backward()
    assert backend.graphs > 1
    explained = torch._dynamo.explain(h.host)(h.batch())
    assert explained.graph_break_count >= 1
    assert any("item" in str(r.reason) for r in explained.break_reasons)
    torch._dynamo.reset()


def test_compile_refuses_it_unless_graph_breaks_are_allowed() -> None:
    reg = open_registry(["isolation_strength"])
    with pytest.raises(PluginError, match=r"isolation_strength.*\.item\(\)"):
        check_compile_safety(reg, allow_graph_breaks=False)
    check_compile_safety(reg, allow_graph_breaks=True)
