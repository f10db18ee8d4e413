"""One host epoch: train, measure, evaluate, advance the lifecycle, compute telemetry.

This is the loop every caller shares (the environment, tests driving a
scripted lifecycle, benchmarks), so that a lever's effect is always measured
through the same code a real run uses. The runner owns the host's optimizer
(:class:`HostOptimizer`): the lifecycle only says what changed.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from esper_kernel.compose.discovery import ENV_STRICT
from esper_kernel.compose.registry import ComposedField, Registry
from esper_kernel.compose.specs import FieldContext
from esper_kernel.compose.stages import Stage
from esper_kernel.data.tasks import TaskData
from esper_kernel.grow.lifecycle import EpochMeasure, Lifecycle, SlotMeasure
from esper_kernel.grow.optim import HostOptimizer, StepNorms
from esper_kernel.infra.errors import PluginError
from esper_kernel.infra.stops import stops, user_stopped


@attrs.frozen
class EpochResult:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    host_grad_norm: float
    measure: EpochMeasure


#: Gradient norm of one optimizer step (host and seeds together) above which it is scaled
#: down: about ten times the norm of a healthy step of the default host.
MAX_STEP_NORM = 2.0


def task_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for image labels ``[B]`` and token targets ``[B, T]`` alike."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def evaluate(model: Callable[[torch.Tensor], torch.Tensor], task: TaskData, batch_size: int) -> tuple[float, float]:
    """Validation (loss, accuracy) of ``model``, summed on the data's device and read once."""
    return _score(task, ((model(x), y) for x, y in task.val_batches(batch_size)))


def _score(task: TaskData, outputs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """(loss, accuracy) over validation ``(logits, targets)`` batches."""
    total_loss = torch.zeros((), dtype=torch.float64, device=task.val_x.device)
    correct = torch.zeros((), dtype=torch.long, device=task.val_x.device)
    count = 0
    for raw, y in outputs:
        logits = raw.float()
        total_loss += task_loss(logits, y).double() * y.numel()
        correct += (logits.argmax(-1) == y).sum()
        count += y.numel()
    return float(total_loss) / max(count, 1), int(correct) / max(count, 1)


#: Most bytes of slot inputs kept from the validation pass for the counterfactual passes; a
#: task whose activations are larger measures its counterfactuals with whole forward passes.
CACHE_BYTES = 64 * 2**20


class _SlotInputs:
    """What the validation pass fed each slot whose seed is measured, so counterfactuals start there.

    With its alpha forced to 0, a seed changes nothing before its slot: the
    counterfactual pass runs from the slot on (``Host.forward_from``) over the
    very activations the validation pass computed, which gives bit-for-bit the
    accuracy a whole forward pass gives, for the slot and what follows it only.
    """

    def __init__(self, host: Any, slots: list[int]) -> None:
        self.inputs: dict[int, list[torch.Tensor]] = {i: [] for i in slots}
        self.bytes = 0
        self.full = False
        self._handles = [host.slots[i].register_forward_pre_hook(self._keeper(i)) for i in slots]

    def _keeper(self, slot: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def keep(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            self.bytes += args[0].numel() * args[0].element_size()
            self.full = self.full or self.bytes > CACHE_BYTES
            if not self.full:
                self.inputs[slot].append(args[0])

        return keep

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        if self.full:
            self.inputs.clear()


class EpochRunner:
    """Trains the lifecycle's host one epoch at a time and measures what the gates need."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        task: TaskData,
        *,
        batch_size: int = 64,
        generator: torch.Generator | None = None,
        compiled: Callable[[torch.Tensor], torch.Tensor] | None = None,
        max_batches: int | None = None,
        amp: bool = False,
        optimizer: HostOptimizer | None = None,
    ) -> None:
        self.lifecycle = lifecycle
        self.optimizer = optimizer if optimizer is not None else HostOptimizer(lifecycle)
        self.task = task
        self.batch_size = batch_size
        self.generator = generator or torch.Generator().manual_seed(0)
        # Not `compiled or host`: truth-testing an OptimizedModule calls len() on the host, which raises.
        self.model: Callable[[torch.Tensor], torch.Tensor] = compiled if compiled is not None else lifecycle.host
        self.max_batches = max_batches
        #: bf16 autocast around the host's forward pass and loss (on the host's device).
        self.amp = amp
        self._host_snapshot: torch.Tensor | None = None
        #: Per measured slot, its validation-pass inputs this epoch (None: counterfactuals run whole passes).
        self._slot_inputs: dict[int, list[torch.Tensor]] | None = None

    def run_epoch(self, epoch: int, observe: Callable[[EpochResult], None] | None = None) -> EpochResult:
        """Train and measure one epoch; ``observe`` sees its result before the next epoch's ``on_epoch`` runs."""
        lc = self.lifecycle
        host = lc.host
        slots = lc.slots
        host.train()
        live = [i for i, s in enumerate(lc.seeds) if s is not None]
        seed_params = {i: slots[i].seed_parameters() for i in live}
        trained = self.optimizer.parameters()
        host_params = host.host_parameters()  # type: ignore[operator]
        before = _flat(host_params)
        device = before.device
        # Accumulated on the host's device: a float() per batch would wait for the GPU every batch.
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        count = 0
        norms = StepNorms(trained, host_params, seed_params, device)
        batches = list(self.task.batches(self.batch_size, self.generator))[: self.max_batches]
        n = len(batches)
        for b, (x, y) in enumerate(batches):
            probe = b == n - 1 and bool(live)
            for i in live:
                slots[i].probe = probe
            # The probe batch runs eager: the probe hook is Python the compiled graph must not see.
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = host(x) if probe else self.model(x)
                loss = task_loss(logits.float(), y)
            self.optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            self._guarded_step(trained, norms.measure())
            loss_sum += loss.detach() * y.numel()  # mean over predictions, like val
            correct += (logits.detach().argmax(-1) == y).sum()
            count += y.numel()
        for i in live:
            slots[i].probe = False
        host.eval()
        val_loss, val_acc = self._validate(live)
        host_norm = float(norms.sums[None]) / max(n, 1)
        host_rms = host_norm / math.sqrt(max(sum(p.numel() for p in host_params), 1))
        seed_norms = {i: float(norms.sums[i]) / max(n, 1) for i in live}
        measures = self._slot_measures(seed_norms, seed_params, host_rms, val_acc, batches[-1] if batches else None)
        after = _flat(host_params)
        change = float(torch.linalg.vector_norm(after - before) / (torch.linalg.vector_norm(before) + 1e-12))
        measure = EpochMeasure(
            epoch=epoch, val_accuracy=val_acc, host_grad_norm=host_norm, slots=measures, host_weight_change=change
        )
        result = EpochResult(
            epoch=epoch,
            train_loss=float(loss_sum) / max(count, 1),
            train_accuracy=int(correct) / max(count, 1),
            val_loss=val_loss,
            val_accuracy=val_acc,
            host_grad_norm=host_norm,
            measure=measure,
        )
        lc.end_epoch(measure, None if observe is None else functools.partial(observe, result))
        return result

    def _guarded_step(self, trained: list[torch.Tensor], total: torch.Tensor) -> None:
        # One non-finite step turns every weight into NaN for good, and one huge step
        # (a seed diverging at a high learning rate) wrecks the host it feeds: clip the
        # whole step far above a healthy one, and skip it when it is not finite. The
        # norms recorded before it still show the explosion to the gates and telemetry.
        # ``total`` is the norm clip_grad_norm_ would take, from the batch's one norm pass.
        if total.device.type == "cpu":
            # On the CPU reading the norm costs nothing: skip the step, or the scaling by 1, in Python.
            if not math.isfinite(float(total)):
                return
            coef = torch.clamp(MAX_STEP_NORM / (total + 1e-6), max=1.0)
            if float(coef) < 1.0:
                torch.nn.utils.clip_grads_with_norm_(trained, MAX_STEP_NORM, total)
            self.optimizer.step()
            return
        torch.nn.utils.clip_grads_with_norm_(trained, MAX_STEP_NORM, total)
        if bool(torch.isfinite(total)):
            self.optimizer.step()

    def _slot_measures(
        self,
        seed_norms: dict[int, float],
        seed_params: dict[int, list[nn.Parameter]],
        host_rms: float,
        val_acc: float,
        last_batch: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> dict[int, SlotMeasure]:
        """What the gates need of each live slot, from the epoch's mean seed gradient norms."""
        lc = self.lifecycle
        out: dict[int, SlotMeasure] = {}
        for i, gn in seed_norms.items():
            seed, slot = lc.seeds[i], lc.slots[i]
            assert seed is not None
            seed_rms = gn / math.sqrt(max(sum(p.numel() for p in seed_params[i]), 1))
            first_blend = seed.stage is Stage.BLENDING and seed.blend_epochs == 0 and last_batch is not None
            out[i] = SlotMeasure(
                grad_norm=gn,
                grad_ratio=seed_rms / host_rms if host_rms > 0 else 0.0,
                host_grad_via_seed=slot.probe_grad_norm,
                contribution=self._contribution(i, seed.stage, val_acc),
                alpha_batch_var=slot.probe_alpha_var,
                coadaptation_delta=self._coadaptation(i, seed, last_batch) if first_blend and last_batch else None,
            )
        return out

    def _coadaptation(self, slot_index: int, seed: Any, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        """Counterfactual for isolation, measured once, in a seed's first blending epoch.

        From the same weights, one plain SGD step on the same batch with the
        host isolated from the seed and one with them co-adapting; the result is
        validation loss after the isolated step minus after the co-adapting one
        (positive: co-adaptation helps). Weights, buffers and the isolation
        setting are restored, so training is not disturbed.
        """
        host = self.lifecycle.host
        slot = self.lifecycle.slots[slot_index]
        saved = {k: v.clone() for k, v in host.state_dict().items()}
        lr = self.lifecycle.config.host_lr
        x, y = batch
        vx, vy = next(self.task.val_batches(self.batch_size))
        losses = {}
        try:
            for isolated in (True, False):
                host.load_state_dict(saved)
                slot.set_isolation(isolated)
                host.train()
                host.zero_grad(set_to_none=True)
                task_loss(host(x), y).backward()  # type: ignore[no-untyped-call]
                with torch.no_grad():
                    for p in host.parameters():
                        if p.grad is not None:
                            p.sub_(lr * p.grad)
                    host.eval()
                    losses[isolated] = float(task_loss(host(vx), vy))
        finally:
            host.zero_grad(set_to_none=True)
            host.load_state_dict(saved)
        return losses[True] - losses[False]

    def _validate(self, live: list[int]) -> tuple[float, float]:
        """The epoch's validation pass, keeping what the measured seeds' slots were fed (eager hosts only)."""
        self._slot_inputs = None
        measured = [i for i in live if _measured(self.lifecycle.stages[i])]
        host = self.lifecycle.host
        if not measured or self.model is not host or not hasattr(host, "forward_from"):
            return evaluate(self.model, self.task, self.batch_size)
        kept = _SlotInputs(host, measured)
        try:
            return evaluate(self.model, self.task, self.batch_size)
        finally:
            kept.close()
            self._slot_inputs = kept.inputs or None

    def _contribution(self, slot_index: int, stage: Stage, val_acc: float) -> float | None:
        """Counterfactual: accuracy with the seed against accuracy with its alpha forced to 0."""
        if not _measured(stage):
            return None  # before blending the seed cannot change the output
        slot = self.lifecycle.slots[slot_index]
        inputs = (self._slot_inputs or {}).get(slot_index)
        with slot.alpha_forced(0.0):
            if inputs is None:
                _, acc0 = evaluate(self.model, self.task, self.batch_size)
                return val_acc - acc0
            with slot.seed_skipped():
                forward_from = cast("Callable[[int, torch.Tensor], torch.Tensor]", self.lifecycle.host.forward_from)
                batches = zip(inputs, self.task.val_batches(self.batch_size), strict=True)
                with torch.no_grad():
                    _, acc0 = _score(self.task, ((forward_from(slot_index, h), y) for h, (_, y) in batches))
        return val_acc - acc0


def _measured(stage: Stage) -> bool:
    """Whether a seed in ``stage`` gets a counterfactual contribution each epoch."""
    return stage in (Stage.BLENDING, Stage.PROBATIONARY)


def _flat(params: list[nn.Parameter]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([p.detach().reshape(-1) for p in params]).clone() if params else torch.zeros(1)


def compute_fields(
    registry: Registry,
    lifecycle: Lifecycle,
    result: EpochResult,
    fields: tuple[ComposedField, ...] | None = None,
    log: Any = None,
) -> dict[str, list[float | None]]:
    """Every lever field for every slot: ``{"<lever>.<field>": [slot0, slot1, ...]}``.

    Fields see the seed that lived in the slot during the epoch, including one
    culled or fossilized at its end, so the last epoch of a seed is reported too.
    A non-finite value is reported as None, and as a ``telemetry.invalid``
    warning on ``log`` naming the lever (and once on the console), so it never
    reaches Tamiyo as a NaN and is never silently dropped; under strict
    plugins it is an error instead.
    """
    chosen = fields if fields is not None else registry.fields
    out: dict[str, list[float | None]] = {f.key: [] for f in chosen}
    max_epochs = lifecycle.config.max_epochs
    for slot, seed in enumerate(_epoch_seeds(lifecycle, result.epoch)):
        ctx = FieldContext(seed, slot, result.epoch, max_epochs, result.val_accuracy, result.train_loss)
        for f in chosen:
            value = _field_value(registry, f, ctx)
            if value is not None and not math.isfinite(value):
                _not_finite(registry, f, slot, value, log)
                value = None
            out[f.key].append(value)
    return out


def _not_finite(registry: Registry, f: ComposedField, slot: int, value: float, log: Any) -> None:
    """A NaN or infinite field: an error under strict plugins, else a logged warning shown once on the console."""
    info = registry.info(f.lever)
    what = f"{info.label}: telemetry field {f.key!r} returned {value!r} for slot {slot}"
    if registry.strict:
        err = PluginError(f"{what}; it must return a finite number or None ({ENV_STRICT}=1)")
        if not registry.quarantine(f.lever, "telemetry_fields", err):
            raise err
        return
    if log is not None:
        log.warning(
            "telemetry.invalid",
            field=f.key,
            slot=slot,
            value=repr(value),
            lever=info.name,
            distribution=info.distribution,
        )
    registry.warn_once(f"telemetry.invalid:{f.key}", f"{what}; recorded as null (shown once per field)")


def _field_value(registry: Registry, f: ComposedField, ctx: FieldContext) -> float | None:
    if f.lever in registry.quarantined:
        return None
    started, before = time.perf_counter(), stops()
    try:
        v: Any = f.spec.compute(ctx)
        if isinstance(v, str | bytes):
            # float("1.5") would pass a string off as a number; a field returns numbers.
            raise TypeError(f"got {type(v).__name__} {v!r}")
        return None if v is None else float(v)
    except BaseException as exc:  # a field's sys.exit() or KeyboardInterrupt is the plugin's fault, not a stop
        if user_stopped(exc, before):
            raise
        info = registry.info(f.lever)
        err = PluginError(
            f"{info.label}: telemetry field {f.key!r} failed ({type(exc).__name__}: {exc}); "
            "it must return a number or None"
        )
        if registry.quarantine(f.lever, "telemetry_fields", err):
            return None
        raise err from exc
    finally:
        registry.add_time(f.lever, "telemetry_fields", time.perf_counter() - started)


def _epoch_seeds(lifecycle: Lifecycle, epoch: int) -> list[Any]:
    seeds: list[Any] = list(lifecycle.seeds)
    for s in lifecycle.history:
        if s.metrics.stage and s.germinated_epoch + len(s.metrics.stage) - 1 == epoch and seeds[s.slot] is None:
            seeds[s.slot] = s
    return seeds
