"""Property: random op sequences never drive the lifecycle into an illegal state.

Ops (germinate a random slot/blueprint/blend, cull, fossilize, wait) are
interleaved with ``end_epoch`` calls on fabricated measures (random grad
ratio, contribution, explosions; no training). Each op is checked against the
composed masks first: a mask-legal op must succeed, a mask-illegal one must
raise :class:`LifecycleError` and leave the lifecycle as it was.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from esper_kernel.compose.core import CoreHeads
from esper_kernel.compose.masks import MaskView
from esper_kernel.compose.registry import Registry
from esper_kernel.compose.stages import LIVE_STAGES, TRANSITIONS, Op, Stage
from esper_kernel.grow.blueprints import blueprint_names
from esper_kernel.grow.hosts import CNNHost, CNNHostConfig
from esper_kernel.grow.lifecycle import EpochMeasure, Lifecycle, LifecycleConfig, LifecycleError, SlotMeasure
from esper_kernel.grow.optim import HostOptimizer
from esper_kernel.grow.slots import BLENDS

N_SLOTS = 3
BLUEPRINTS = blueprint_names("cnn")
MAX_EPOCHS = 10  # dwell 1, so seeds reach probation within a short sequence
REGISTRY = Registry(CoreHeads(N_SLOTS, BLUEPRINTS, "cnn"))


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))


def mask_view(lc: Lifecycle, epoch: int) -> MaskView:
    """One env's view, built the way ``EnvBatch.mask_view`` builds it."""
    return MaskView(
        space=REGISTRY.space,
        n_envs=1,
        n_slots=N_SLOTS,
        topology="cnn",
        max_epochs=MAX_EPOCHS,
        epoch=torch.tensor([epoch], dtype=torch.long),
        slot_stage=torch.tensor([[int(s) for s in lc.stages]], dtype=torch.long),
        fossilize_ok=torch.tensor([lc.fossilize_ok()], dtype=torch.bool),
        blueprints=BLUEPRINTS,
    )


def mask_legal(mask: torch.Tensor, action: torch.Tensor) -> bool:
    """Every head relevant to ``action`` chose a legal choice under ``mask`` ``[n_ops, n_heads, max_choices]``."""
    space = REGISTRY.space
    op = int(action[space.op_index])
    relevant = space.relevance(action[None, :])[0]
    return all(bool(mask[op, h, int(action[h])]) for h in range(space.n_heads) if relevant[h] or h == space.op_index)


def snapshot(lc: Lifecycle, opt: HostOptimizer) -> tuple[Any, ...]:
    return (
        list(lc.stages),
        [None if s is None else (s.seed_id, s.stage) for s in lc.seeds],
        [s.live_key() for s in lc.slots],
        [float(s.alpha) for s in lc.slots],
        [g.get("seed_id") for g in opt.param_groups],
    )


def check_invariants(lc: Lifecycle, opt: HostOptimizer, log: Recorder) -> None:
    live_ids = set()
    for i, (seed, stage, slot) in enumerate(zip(lc.seeds, lc.stages, lc.slots, strict=True)):
        assert 0.0 <= float(slot.alpha) <= 1.0, f"slot {i} alpha {float(slot.alpha)}"
        if seed is None:
            assert stage in (Stage.DORMANT, Stage.EMBARGOED), f"empty slot {i} is {stage.name}"
            assert slot.seed is None and slot.seed_parameters() == []
            assert float(slot.alpha) == 0.0
        else:
            assert stage in LIVE_STAGES and seed.stage is stage, f"slot {i}: {seed.stage.name} vs {stage.name}"
            assert seed.slot == i and slot.seed is not None
            assert slot.blend == seed.blend
            assert float(slot.incubate) == float(stage in (Stage.GERMINATED, Stage.TRAINING))
            if stage is Stage.PROBATIONARY:
                assert float(slot.alpha) == 1.0
            elif stage is not Stage.BLENDING:
                assert float(slot.alpha) == 0.0
            live_ids.add(seed.seed_id)
    # One optimizer group per live seed, holding exactly its parameters.
    groups = {g["seed_id"]: g for g in opt.param_groups if g.get("seed_id") is not None}
    assert set(groups) == live_ids
    for seed in lc.live_seeds():
        assert {id(p) for p in groups[seed.seed_id]["params"]} == {id(p) for p in lc.slots[seed.slot].seed_parameters()}
    # Dead seeds ended as fossils or in embargo; every logged change is in the table.
    assert all(s.stage in (Stage.FOSSILIZED, Stage.EMBARGOED) for s in lc.history)
    for name, kw in log.events:
        if name == "seed.stage_changed":
            assert Stage[kw["new"]] in TRANSITIONS[Stage[kw["old"]]]


#: Op draw weights: culls are rare enough, and fossilizing common enough, for seeds to live to the end.
OP_WEIGHTS = {Op.WAIT: 3, Op.GERMINATE: 2, Op.CULL: 1, Op.FOSSILIZE: 4}


def weighted(ops: list[Op]) -> list[Op]:
    return [o for o in ops for _ in range(OP_WEIGHTS[o])]


@st.composite
def actions(draw: st.DrawFn) -> torch.Tensor:
    """Any decision at all: legal or not for the current state."""
    op = draw(st.sampled_from(weighted(list(Op))))
    return REGISTRY.space.encode(
        [
            {
                "op": op.name.lower(),
                "slot": f"s{draw(st.integers(0, N_SLOTS - 1))}",
                "blueprint": draw(st.sampled_from(BLUEPRINTS)),
                "blend": draw(st.sampled_from(BLENDS)),
            }
        ]
    )[0]


@st.composite
def masked_actions(draw: st.DrawFn, mask: torch.Tensor) -> torch.Tensor:
    """A decision drawn only from the choices ``mask`` allows."""
    space = REGISTRY.space
    legal_ops = [o for o in Op if bool(mask[int(Op.WAIT), space.op_index, int(o)])]
    op = draw(st.sampled_from(weighted(legal_ops)))
    row = space.defaults.clone()
    row[space.op_index] = int(op)
    for h in space.heads:
        if h.index == space.op_index or not bool(space.relevance_by_op[int(op), h.index]):
            continue
        choices = [c for c in range(h.spec.size) if bool(mask[int(op), h.index, c])]
        row[h.index] = draw(st.sampled_from(choices))
    return row


slot_measures = st.builds(
    SlotMeasure,
    grad_norm=st.floats(0.0, 10.0),
    grad_ratio=st.floats(0.0, 0.3),
    contribution=st.one_of(st.none(), st.floats(-0.05, 0.1)),
    exploded=st.integers(0, 29).map(lambda i: i == 0),  # rare, as in real runs
)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), embargo=st.integers(1, 2))
def test_random_op_sequences_keep_the_lifecycle_consistent(data: st.DataObject, embargo: int) -> None:
    torch.manual_seed(0)
    log = Recorder()
    host = CNNHost(CNNHostConfig(width=4, blocks=N_SLOTS))
    lc = Lifecycle(host, REGISTRY, LifecycleConfig(max_epochs=MAX_EPOCHS, embargo_epochs=embargo), log=log)
    opt = HostOptimizer(lc)
    n_steps = data.draw(st.integers(1, 60), label="steps")
    for epoch in range(n_steps):
        mask = REGISTRY.masks(mask_view(lc, epoch))[0]
        if data.draw(st.integers(0, 3), label="masked") > 0:
            action = data.draw(masked_actions(mask), label="masked action")
            assert mask_legal(mask, action)
        else:
            action = data.draw(actions(), label="any action")
        decision = REGISTRY.space.decode(action[None, :])[0]
        before = snapshot(lc, opt)
        if mask_legal(mask, action):
            changed = lc.apply(decision, epoch)  # a mask-legal action always executes
            assert changed is (decision.op is not Op.WAIT)
        else:
            with pytest.raises(LifecycleError, match="cannot"):
                lc.apply(decision, epoch)
            assert snapshot(lc, opt) == before, "a refused op changed the lifecycle"
        check_invariants(lc, opt, log)

        live = [i for i, s in enumerate(lc.seeds) if s is not None]
        measures = {i: data.draw(slot_measures, label=f"measure s{i}") for i in live}
        lc.end_epoch(EpochMeasure(epoch, 0.5, 1.0, measures))
        check_invariants(lc, opt, log)
    for ev, kw in log.events:  # coverage, shown by --hypothesis-show-statistics
        if ev == "seed.stage_changed":
            event(f"{kw['old']} -> {kw['new']} ({kw['reason']})")
