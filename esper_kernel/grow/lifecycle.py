"""The seed lifecycle engine: stage changes, gates, knobs applied to slots.

One :class:`Lifecycle` drives the slots of one host. Tamiyo's ops arrive
through :meth:`Lifecycle.apply`; everything else advances once per host epoch
in :meth:`Lifecycle.end_epoch`, from the measurements the epoch produced.
Every transition goes through the transition table, runs every lever's
``on_enter_stage`` and then applies the seed's knobs; before every epoch a
seed lives through, every lever's ``on_epoch`` runs and the knobs are applied
again, so a knob written at any time takes effect from the next epoch. Every
gate evaluation and transition is an event.

The lifecycle owns no optimizer: it tells its listeners (the epoch runner's
:class:`~esper_kernel.grow.training.HostOptimizer`) what changed, a seed added,
removed or fossilized or its knobs applied, and they keep their own state.
"""

from __future__ import annotations

import functools
import math
import pkgutil
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import structlog
import torch
from torch import nn

from esper_kernel.compose.actions import Decision
from esper_kernel.compose.names import CORE_HEADS as CORE_HEADS  # read by the policies and reports
from esper_kernel.compose.seeds import SeedState, initial_knobs, seed_from_dict, seed_to_dict
from esper_kernel.compose.stages import LIVE_STAGES, Op, Stage, check_transition
from esper_kernel.grow.blueprints import build_seed
from esper_kernel.grow.slots import SeedSlot, alpha_at
from esper_kernel.infra.errors import EsperError
from esper_kernel.settings.config import LifecycleConfig as LifecycleConfig  # re-exported: its old home

if TYPE_CHECKING:
    from esper_kernel.compose.actions import ActionSpace


class LeverHooks(Protocol):
    """What the lifecycle needs of the composed levers (a :class:`~esper_kernel.compose.registry.Registry`)."""

    space: ActionSpace

    def enter_stage(self, seed: SeedState, old: Stage, new: Stage) -> None: ...

    def on_epoch(self, seed: SeedState, epoch: int) -> None: ...


class LifecycleListener(Protocol):
    """Told what changed in the lifecycle, in order, as it happens (the runner's optimizer is one)."""

    def seed_added(self, seed: SeedState) -> None:
        """``seed`` germinated: its module is built and in its slot, its first knobs set."""

    def seed_removed(self, seed: SeedState) -> None:
        """``seed`` was culled: its parameters are about to leave the host."""

    def seed_fossilized(self, seed: SeedState) -> None:
        """``seed`` is host now: its parameters stay, at the host's terms."""

    def knobs_changed(self, seed: SeedState) -> None:
        """``seed``'s knobs were (re)applied to its slot; they hold from the next epoch on."""


#: The heads the kernel itself owns; everything else is a lever's choice.


@attrs.frozen
class SlotMeasure:
    """What one epoch measured for the seed in one slot."""

    grad_norm: float = 0.0
    #: RMS seed gradient over RMS host gradient: per parameter, so a small seed
    #: is not judged by its size.
    grad_ratio: float = 0.0
    host_grad_via_seed: float = 0.0
    contribution: float | None = None
    alpha_batch_var: float = 0.0
    exploded: bool = False
    coadaptation_delta: float | None = None


@attrs.frozen
class EpochMeasure:
    """What one host epoch measured, handed to :meth:`Lifecycle.end_epoch`."""

    epoch: int
    val_accuracy: float
    host_grad_norm: float
    slots: Mapping[int, SlotMeasure] = attrs.Factory(dict)
    #: Relative change of the host's weights over the epoch (norm of the step / norm before).
    host_weight_change: float = 0.0


@attrs.frozen
class GateResult:
    gate: str
    passed: bool
    values: dict[str, float]
    thresholds: dict[str, float]


class LifecycleError(EsperError):
    """An op that the lifecycle cannot carry out (illegal for the slot's stage)."""


class Lifecycle:
    """Slots, seeds and the stage machine for one host; listeners hear every change."""

    def __init__(
        self,
        host: nn.Module,
        registry: LeverHooks,
        config: LifecycleConfig | None = None,
        log: Any = None,
    ) -> None:
        self.host = host
        self.registry = registry
        self.config = config or LifecycleConfig()
        self.log = log if log is not None else structlog.get_logger("esper.lifecycle")
        self.slots: list[SeedSlot] = list(host.slots)  # type: ignore[arg-type]
        self.topology: str = str(host.topology)
        self.seeds: list[SeedState | None] = [None] * len(self.slots)
        self.stages: list[Stage] = [Stage.DORMANT] * len(self.slots)
        self.embargo_until: list[int] = [0] * len(self.slots)
        self.history: list[SeedState] = []
        self.listeners: list[LifecycleListener] = []
        self._counter = 0
        self._transform_keys: dict[int, tuple[str, str | None, dict[str, float]]] = {}

    def subscribe(self, listener: LifecycleListener) -> None:
        """Tell ``listener`` about every change from now on."""
        self.listeners.append(listener)

    # -- Tamiyo's ops ------------------------------------------------------

    def apply(self, decision: Decision, epoch: int) -> bool:
        """Carry out a decoded decision; returns whether anything changed."""
        if decision.op is Op.WAIT:
            return False
        slot = int(decision.values["slot"])
        if decision.op is Op.GERMINATE:
            self.germinate(slot, decision, epoch)
        elif decision.op is Op.CULL:
            self.cull(slot, epoch, reason="tamiyo")
        elif decision.op is Op.FOSSILIZE:
            self.fossilize(slot, epoch)
        return True

    def germinate(self, slot: int, decision: Decision, epoch: int) -> SeedState:
        if self.stages[slot] is not Stage.DORMANT:
            raise LifecycleError(f"cannot germinate slot {slot}: it is {self.stages[slot].name}, not DORMANT")
        self._counter += 1
        lever_heads = {
            n: c for n, c in decision.choices.items() if n not in CORE_HEADS and decision.relevant.get(n, False)
        }
        seed = SeedState(
            seed_id=f"seed{self._counter}-s{slot}",
            slot=slot,
            blueprint=str(decision.values["blueprint"]),
            blend=str(decision.values["blend"]),
            topology=self.topology,
            germinated_epoch=epoch,
            max_epochs=self.config.max_epochs,
            stage=Stage.GERMINATED,
            stage_entered_epoch=epoch,
            choices=dict(lever_heads),
            values={n: decision.values[n] for n in lever_heads},
            knobs=initial_knobs(self.config.max_epochs),
        )
        self._check(Stage.DORMANT, Stage.GERMINATED)
        # Levers run before the module is built: a width knob must be set by then.
        self.registry.enter_stage(seed, Stage.DORMANT, Stage.GERMINATED)
        sl = self.slots[slot]
        sl.germinate(self._build(seed), seed.blend)
        for listener in self.listeners:
            listener.seed_added(seed)
        self.seeds[slot] = seed
        self.stages[slot] = Stage.GERMINATED
        self._apply_knobs(seed)
        self._before_epoch(seed, epoch)
        self.log.info(
            "seed.stage_changed",
            seed_id=seed.seed_id,
            slot=slot,
            old=Stage.DORMANT.name,
            new=Stage.GERMINATED.name,
            reason="germinate",
            blueprint=seed.blueprint,
            blend=seed.blend,
            choices=seed.choices,
        )
        return seed

    def cull(self, slot: int, epoch: int, reason: str) -> SeedState:
        seed = self._live(slot, "cull")
        seed.cull_reason = reason
        self._move(seed, Stage.CULLED, epoch, reason)
        for listener in self.listeners:
            listener.seed_removed(seed)
        self.slots[slot].cull()
        self._move(seed, Stage.EMBARGOED, epoch, "embargo")
        self.seeds[slot] = None
        self.history.append(seed)
        self.stages[slot] = Stage.EMBARGOED
        self.embargo_until[slot] = epoch + 1 + self.config.embargo_epochs
        return seed

    def fossilize(self, slot: int, epoch: int) -> SeedState:
        seed = self._live(slot, "fossilize")
        if seed.stage is not Stage.PROBATIONARY:
            raise LifecycleError(f"cannot fossilize {seed.seed_id}: it is {seed.stage.name}, not PROBATIONARY")
        gate = self.gate_g5(seed)
        self._emit_gate(seed, gate, epoch)
        if not gate.passed:
            raise LifecycleError(f"cannot fossilize {seed.seed_id}: gate G5 fails {gate.values}")
        self._move(seed, Stage.FOSSILIZED, epoch, "fossilize")
        self.slots[slot].fossilize()
        for listener in self.listeners:
            listener.seed_fossilized(seed)
        self.seeds[slot] = None
        self.history.append(seed)
        self._release(slot, Stage.FOSSILIZED)
        return seed

    def _release(self, slot: int, old: Stage) -> None:
        """The slot (not a seed) becomes DORMANT again: free for a new seed."""
        self._check(old, Stage.DORMANT)
        self.stages[slot] = Stage.DORMANT
        self.log.info("slot.released", slot=slot, old=old.name, new=Stage.DORMANT.name)

    # -- the automatic part --------------------------------------------------

    def end_epoch(self, measure: EpochMeasure, observe: Callable[[], None] | None = None) -> None:
        """Record what the epoch measured, advance every slot by its gates, then prepare the next epoch.

        ``observe`` runs between the two (the run computes the levers' telemetry
        there): after it, ``on_epoch`` sets the next epoch's state, which the
        epoch just trained did not have.
        """
        epoch = measure.epoch
        for slot, seed in enumerate(self.seeds):
            if seed is None:
                if self.stages[slot] is Stage.EMBARGOED and epoch + 1 >= self.embargo_until[slot]:
                    self._release(slot, Stage.EMBARGOED)
                continue
            self._record(seed, measure, slot)
            self._advance(seed, epoch)
        if observe is not None:
            observe()
        if epoch + 1 < self.config.max_epochs:
            for live in self.live_seeds():
                self._before_epoch(live, epoch + 1)

    def _before_epoch(self, seed: SeedState, epoch: int) -> None:
        """Every lever's ``on_epoch`` for ``seed``, then its knobs applied for ``epoch``."""
        self.registry.on_epoch(seed, epoch)
        self._apply_knobs(seed)

    def _record(self, seed: SeedState, measure: EpochMeasure, slot: int) -> None:
        m = measure.slots.get(slot, SlotMeasure())
        met = seed.metrics
        met.stage.append(int(seed.stage))
        met.alpha.append(float(self.slots[slot].alpha))
        met.grad_norm.append(m.grad_norm)
        met.grad_ratio.append(m.grad_ratio)
        met.host_grad_via_seed.append(m.host_grad_via_seed)
        met.contribution.append(m.contribution)
        met.val_accuracy.append(measure.val_accuracy)
        met.alpha_batch_var.append(m.alpha_batch_var)
        met.exploded.append(m.exploded or not math.isfinite(m.grad_norm) or m.grad_norm > seed.knobs.explode_norm)
        met.weight_norm.append(_norm(self.slots[slot].seed_parameters()))
        met.coadaptation_delta.append(m.coadaptation_delta)
        met.host_weight_change.append(measure.host_weight_change)

    def _advance(self, seed: SeedState, epoch: int) -> None:
        k = seed.knobs
        if seed.stage is Stage.GERMINATED:
            gate = self.gate_g1(seed)
            self._emit_gate(seed, gate, epoch)
            if gate.passed:
                self._move(seed, Stage.TRAINING, epoch + 1, "G1")
            else:
                self.cull(seed.slot, epoch, reason="g1_failed")
        elif seed.stage is Stage.TRAINING:
            if seed.epochs_in_stage(epoch + 1) < k.dwell_epochs:
                return
            gate = self.gate_g2(seed)
            self._emit_gate(seed, gate, epoch)
            if gate.passed:
                self._move(seed, Stage.BLENDING, epoch + 1, "G2")
        elif seed.stage is Stage.BLENDING:
            seed.blend_epochs += 1
            gate = self.gate_g3(seed)
            self._emit_gate(seed, gate, epoch)
            if gate.passed:
                self._move(seed, Stage.PROBATIONARY, epoch + 1, "G3")
            else:
                self._set_alpha(seed, seed.blend_epochs + 1)
        elif seed.stage is Stage.PROBATIONARY and seed.epochs_in_stage(epoch + 1) >= k.probation_epochs:
            self.cull(seed.slot, epoch, reason="probation_timeout")

    # -- gates ---------------------------------------------------------------

    def gate_g1(self, seed: SeedState) -> GateResult:
        """The seed built, and its output has the slot's shape and is finite."""
        slot = self.slots[seed.slot]
        assert slot.seed is not None
        probe = self._probe_input(seed.slot)
        with torch.no_grad():
            out = slot.seed(probe)
        ok = tuple(out.shape) == tuple(probe.shape) and bool(torch.isfinite(out).all())
        return GateResult("G1", ok, {"shape_ok": float(ok)}, {"shape_ok": 1.0})

    def gate_g2(self, seed: SeedState) -> GateResult:
        """The seed learns: its gradient norm relative to the host's is large enough."""
        ratio = seed.metrics.grad_ratio[-1] if seed.metrics.grad_ratio else 0.0
        thr = seed.knobs.g2_threshold
        return GateResult("G2", ratio >= thr, {"grad_ratio": ratio}, {"grad_ratio": thr})

    def gate_g3(self, seed: SeedState) -> GateResult:
        """Blending is done: alpha reached 1 and the minimum blending epochs passed."""
        k = seed.knobs
        alpha = alpha_at(seed.blend, seed.blend_epochs, k.blend_steps, k.steepness)
        ok = alpha >= 1.0 and seed.blend_epochs >= k.min_blend_epochs
        return GateResult(
            "G3",
            ok,
            {"alpha": alpha, "blend_epochs": float(seed.blend_epochs)},
            {"alpha": 1.0, "blend_epochs": float(k.min_blend_epochs)},
        )

    def gate_g5(self, seed: SeedState) -> GateResult:
        """Worth keeping: positive counterfactual contribution, healthy gradients."""
        contrib = next((c for c in reversed(seed.metrics.contribution) if c is not None), None)
        healthy = not any(seed.metrics.exploded)
        ok = contrib is not None and contrib > 0 and healthy
        return GateResult(
            "G5",
            ok,
            {"contribution": contrib if contrib is not None else float("nan"), "healthy": float(healthy)},
            {"contribution": 0.0, "healthy": 1.0},
        )

    def fossilize_ok(self) -> list[bool]:
        """Per slot: would FOSSILIZE be legal now (PROBATIONARY and G5 passes)."""
        return [s is not None and s.stage is Stage.PROBATIONARY and self.gate_g5(s).passed for s in self.seeds]

    # -- plumbing ------------------------------------------------------------

    def _move(self, seed: SeedState, new: Stage, epoch: int, reason: str) -> None:
        old = seed.stage
        self._check(old, new)
        seed.stage = new
        seed.stage_entered_epoch = epoch
        if new is Stage.BLENDING:
            seed.blend_epochs = 0
        self.registry.enter_stage(seed, old, new)
        if new in LIVE_STAGES:
            self.stages[seed.slot] = new
        self._apply_knobs(seed)
        self.log.info(
            "seed.stage_changed", seed_id=seed.seed_id, slot=seed.slot, old=old.name, new=new.name, reason=reason
        )

    def _check(self, old: Stage, new: Stage) -> None:
        check_transition(old, new)

    def _apply_knobs(self, seed: SeedState) -> None:
        """Push a seed's knobs into its slot buffers, and tell the listeners (its optimizer group)."""
        slot = self.slots[seed.slot]
        if seed.stage not in LIVE_STAGES:
            return
        for listener in self.listeners:
            listener.knobs_changed(seed)
        # Reinstalled only when it changes: a compiled graph guards on the function object.
        wanted = (seed.seed_id, seed.knobs.seed_input_transform, dict(seed.knobs.seed_input_kwargs))
        if self._transform_keys.get(seed.slot) != wanted:
            slot.input_transform = _input_transform(seed)
            self._transform_keys[seed.slot] = wanted
        training = seed.stage in (Stage.GERMINATED, Stage.TRAINING)
        slot.set_incubate(training)
        slot.set_isolation(True if training else seed.isolated_when_blending)
        if seed.stage is Stage.BLENDING:
            self._set_alpha(seed, seed.blend_epochs + 1)
        elif seed.stage is Stage.PROBATIONARY:
            slot.set_alpha(1.0)
        else:
            slot.set_alpha(0.0)

    def _set_alpha(self, seed: SeedState, step: int) -> None:
        k = seed.knobs
        self.slots[seed.slot].set_alpha(alpha_at(seed.blend, step, k.blend_steps, k.steepness))

    def _live(self, slot: int, op: str) -> SeedState:
        seed = self.seeds[slot]
        if seed is None:
            raise LifecycleError(f"cannot {op} slot {slot}: no live seed there ({self.stages[slot].name})")
        return seed

    def _dim(self, slot: int) -> int:
        return int(self.host.slot_dims[slot])  # type: ignore[index]

    def _probe_input(self, slot: int) -> torch.Tensor:
        dim = self._dim(slot)
        device = next(self.host.parameters()).device
        shape = {"cnn": (2, dim, 4, 4), "cnn1d": (2, dim, 8)}.get(self.topology, (2, 4, dim))
        return torch.randn(shape, device=device)

    def _emit_gate(self, seed: SeedState, gate: GateResult, epoch: int) -> None:
        self.log.info(
            "seed.gate_evaluated",
            seed_id=seed.seed_id,
            slot=seed.slot,
            stage=seed.stage.name,
            gate=gate.gate,
            passed=gate.passed,
            values=gate.values,
            thresholds=gate.thresholds,
        )

    # -- checkpointing ---------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this lifecycle and its host exactly, as plain data (no optimizer)."""
        return {
            "stages": [int(s) for s in self.stages],
            "embargo_until": list(self.embargo_until),
            "counter": self._counter,
            "seeds": [None if s is None else seed_to_dict(s) for s in self.seeds],
            "history": [seed_to_dict(s) for s in self.history],
            "host": self.host.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` into this freshly built lifecycle (listeners restore their own)."""
        history = [seed_from_dict(d) for d in state["history"]]
        seeds = [None if d is None else seed_from_dict(d) for d in state["seeds"]]
        for seed in history:  # history order is fossilization order
            if seed.stage is Stage.FOSSILIZED:
                slot = self.slots[seed.slot]
                slot.germinate(self._build(seed), seed.blend)
                slot.fossilize()
        for live in seeds:
            if live is not None:
                self.slots[live.slot].germinate(self._build(live), live.blend)
                self.slots[live.slot].input_transform = _input_transform(live)
        self.host.load_state_dict(state["host"])
        self.seeds = seeds
        self.history = history
        self.stages = [Stage(s) for s in state["stages"]]
        self.embargo_until = list(state["embargo_until"])
        self._counter = int(state["counter"])

    def _build(self, seed: SeedState) -> nn.Module:
        device = next(self.host.parameters()).device
        return build_seed(self.topology, seed.blueprint, self._dim(seed.slot), seed.knobs.width_scale).to(device)

    def fossil_modules(self) -> dict[str, nn.Module]:
        """Each fossilized seed's module in the host, by seed id."""
        out: dict[str, nn.Module] = {}
        taken = [0] * len(self.slots)
        for seed in self.history:  # a slot's fossils are in fossilization order, as the history is
            if seed.stage is Stage.FOSSILIZED:
                out[seed.seed_id] = self.slots[seed.slot].fossils[taken[seed.slot]]
                taken[seed.slot] += 1
        return out

    def live_seeds(self) -> list[SeedState]:
        return [s for s in self.seeds if s is not None]


def _input_transform(seed: SeedState) -> Callable[[torch.Tensor], torch.Tensor] | None:
    name = seed.knobs.seed_input_transform
    if name is None:
        return None
    try:
        fn = pkgutil.resolve_name(name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise EsperError(f"{seed.seed_id}: knob seed_input_transform={name!r} cannot be imported: {exc}") from exc
    return functools.partial(fn, **seed.knobs.seed_input_kwargs)


def _norm(params: list[nn.Parameter]) -> float:
    if not params:
        return 0.0
    with torch.no_grad():
        return float(torch.linalg.vector_norm(torch.stack([p.detach().norm() for p in params])))
