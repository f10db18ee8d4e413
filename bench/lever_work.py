"""The kernel's per-step lever work, through the registry and hand-wired, for figures 3 and 4.

One environment step of ``esper run`` makes the kernel: compose every
lever's mask, decode the chosen action, run every lever's
``on_enter_stage`` when a seed changes stage, and compute every lever's
telemetry fields for every slot. The fixture charges the step generously:
a germinate action (so every lever head is decoded as relevant), one stage
change for each of the three slots, and three live seeds ten epochs into
their lives, so fields that scan a seed's history have history to scan.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import attrs
import torch

from bench import fixtures
from esper_kernel.compose.actions import N_OPS, Decision
from esper_kernel.compose.masks import MaskView
from esper_kernel.compose.registry import Registry
from esper_kernel.compose.seeds import SeedState
from esper_kernel.compose.specs import FieldContext
from esper_kernel.compose.stages import Op, Stage
from esper_kernel.episode.env import EnvConfig, cnn_host_config
from esper_kernel.episode.sampling import sample
from esper_kernel.grow.hosts import build_host
from esper_kernel.grow.lifecycle import EpochMeasure, Lifecycle, LifecycleConfig
from esper_kernel.grow.training import EpochResult, compute_fields
from esper_levers_builtin import dwell, isolation, lr, probation, steepness, tempo

#: The six levers in the registry's order (entry points load sorted by name).
LEVERS: tuple[ModuleType, ...] = (dwell, isolation, lr, probation, steepness, tempo)
EPOCH = 10
#: The stage change charged to each slot every step: the one most levers act on.
TRANSITION = (Stage.TRAINING, Stage.BLENDING)


@attrs.define
class Step:
    """Everything one step's lever work reads."""

    reg: Registry
    lifecycle: Lifecycle
    view: MaskView
    actions: torch.Tensor
    seeds: list[SeedState]
    result: EpochResult


def make_step(config: EnvConfig | None = None) -> Step:
    cfg = config or EnvConfig()
    reg = fixtures.registry(cfg)
    host = build_host("cnn", cnn_host_config(cfg, 10))
    lc = Lifecycle(host, reg, LifecycleConfig(max_epochs=cfg.epochs, host_lr=cfg.host_lr), log=fixtures.NullLog())
    stages = (Stage.TRAINING, Stage.BLENDING, Stage.PROBATIONARY)
    seeds = [fixtures.seed_with_history(i, stages[i], EPOCH, cfg.epochs) for i in range(cfg.slots)]
    lc.seeds = list(seeds)
    lc.stages = [s.stage for s in seeds]
    view = fixtures.mask_view(reg, 1, cfg)
    # A germinate action drawn under the real masks: every lever head is then relevant and decoded.
    view = attrs.evolve(view, slot_stage=torch.zeros_like(view.slot_stage), epoch=torch.tensor([2]))
    masks = reg.masks(view)
    logits = torch.zeros(1, reg.space.n_heads, reg.space.max_choices)
    logits[0, reg.space.op_index, int(Op.GERMINATE)] = 50.0
    actions = sample(reg.space, logits, masks, torch.Generator().manual_seed(0)).actions
    assert int(actions[0, reg.space.op_index]) == int(Op.GERMINATE)
    result = EpochResult(
        epoch=EPOCH,
        train_loss=1.0,
        train_accuracy=0.5,
        val_loss=1.1,
        val_accuracy=0.45,
        host_grad_norm=0.3,
        measure=EpochMeasure(epoch=EPOCH, val_accuracy=0.45, host_grad_norm=0.3),
    )
    return Step(reg, lc, view, actions, seeds, result)


def through_registry(step: Step) -> tuple[torch.Tensor, list[Decision], dict[str, list[float | None]]]:
    reg = step.reg
    masks = reg.masks(step.view)
    decisions = reg.space.decode(step.actions)
    old, new = TRANSITION
    for seed in step.seeds:
        reg.enter_stage(seed, old, new)
    fields = compute_fields(reg, step.lifecycle, step.result)
    return masks, decisions, fields


class HandWired:
    """The same six levers called as plain functions: masks ANDed, decoded and fields computed by hand.

    Built once from the lever modules and the kernel's core heads object;
    the per-step path touches no registry, no pluggy and no ActionSpace.
    """

    def __init__(self, step: Step) -> None:
        reg = step.reg
        self.core = reg.info("esper").plugin
        # (name, choices, values, default index, ops, condition) per head, in the composed order.
        specs = [*self.core.action_head(), *(m.action_head() for m in LEVERS)]
        self.heads = [(s.name, s.choices, s.values, s.default_index, s.ops, s.condition) for s in specs]
        self.index = {name: i for i, (name, *_rest) in enumerate(self.heads)}
        self.sizes = [len(h[1]) for h in self.heads]
        max_c = max(self.sizes)
        valid = torch.zeros(len(self.heads), max_c, dtype=torch.bool)
        for i, size in enumerate(self.sizes):
            valid[i, :size] = True
        self.valid = valid
        lever_specs = [m.action_head() for m in LEVERS]
        # Declared masks (HeadSpec.until) and declared knobs (HeadSpec.knob) wired by hand, as the registry does.
        self.mask_fns: list[Callable[[MaskView], dict[str, torch.Tensor]]] = [
            self.core.mask,
            *(_declared_mask(s.name, s.until) for s in lever_specs if s.until is not None),
            *(m.mask for m in LEVERS if hasattr(m, "mask")),
        ]
        self.knob_settings = [(s.name, s.knob, s.on_enter) for s in lever_specs if s.knob is not None]
        self.stage_fns = [m.on_enter_stage for m in LEVERS if hasattr(m, "on_enter_stage")]
        self.fields: list[tuple[str, Callable[[FieldContext], float | None]]] = [
            (f"{m.__name__.rsplit('.', 1)[-1]}.{f.name}", f.compute) for m in LEVERS for f in m.telemetry_fields()
        ]

    def masks(self, view: MaskView) -> torch.Tensor:
        out = self.valid.expand(view.n_envs, N_OPS, -1, -1).clone()
        for fn in self.mask_fns:
            for name, m in fn(view).items():
                i = self.index[name]
                size = self.sizes[i]
                if m.dim() == 2:
                    out[:, :, i, :size] &= m[:, None, :]
                else:
                    out[:, :, i, :size] &= m
        return out

    def decode(self, actions: torch.Tensor) -> list[Decision]:
        out = []
        for row in actions.tolist():
            op = Op(row[0])
            relevant: dict[str, bool] = {}
            choices: dict[str, str] = {}
            values: dict[str, Any] = {}
            for (name, ch, vals, default, ops, cond), a in zip(self.heads, row, strict=True):
                rel = op in ops
                if rel and cond is not None:
                    ci = self.index[cond.head]
                    rel = relevant[cond.head] and self.heads[ci][1][row[ci]] in cond.choices
                idx = a if rel else default
                relevant[name] = rel
                choices[name] = ch[idx]
                values[name] = vals[idx]
            out.append(Decision(op, choices, values, relevant))
        return out

    def enter_stage(self, seed: SeedState, new: Stage) -> None:
        for head, knob, stage in self.knob_settings:
            if stage is new and head in seed.values:
                setattr(seed.knobs, knob, seed.values[head])
        for fn in self.stage_fns:
            fn(seed=seed, new=new)

    def compute_fields(self, step: Step) -> dict[str, list[float | None]]:
        lc, res = step.lifecycle, step.result
        out: dict[str, list[float | None]] = {}
        for key, fn in self.fields:
            vals: list[float | None] = []
            for slot, seed in enumerate(lc.seeds):
                ctx = FieldContext(seed, slot, res.epoch, lc.config.max_epochs, res.val_accuracy, res.train_loss)
                v = fn(ctx)
                # Same NaN guard as the kernel's, so both sides return the same numbers.
                vals.append(None if v is None or not math.isfinite(float(v)) else float(v))
            out[key] = vals
        return out

    def __call__(self, step: Step) -> tuple[torch.Tensor, list[Decision], dict[str, list[float | None]]]:
        masks = self.masks(step.view)
        decisions = self.decode(step.actions)
        for seed in step.seeds:
            self.enter_stage(seed, TRANSITION[1])
        return masks, decisions, self.compute_fields(step)


def _declared_mask(head: str, point: Any) -> Callable[[MaskView], dict[str, torch.Tensor]]:
    return lambda view: {head: view.reaching_each(head, point)}


def check_equal(a: Sequence[Any], b: Sequence[Any]) -> None:
    """Both paths must produce the same masks, decisions and fields, or the ratio compares different work."""
    if not torch.equal(a[0], b[0]):
        raise AssertionError("hand-wired masks differ from the registry's")
    if a[1] != b[1]:
        raise AssertionError(f"hand-wired decisions differ: {a[1]} vs {b[1]}")
    if a[2] != b[2]:
        raise AssertionError(f"hand-wired fields differ: {a[2]} vs {b[2]}")
