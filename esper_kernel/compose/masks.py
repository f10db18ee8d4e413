"""The masks of the action space: what each env may choose, composed from every lever that constrains a head.

A :class:`MaskView` is what a lever's ``mask`` hook sees (the batch's stages,
epochs and timing, as tensors); the :class:`MaskComposer` ANDs every lever's
masks into the space's ``[n_envs, n_ops, n_heads, max_choices]`` tensor, times
each lever, and names the lever and head when a row is left with no legal choice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import attrs

from esper_kernel.compose.actions import N_OPS, OP_HEAD, ActionSpace, ComposedHead
from esper_kernel.compose.seeds import Knobs, Point, Timeline, initial_knobs
from esper_kernel.compose.stages import Op
from esper_kernel.infra.errors import MaskError, PluginError
from esper_kernel.infra.stops import stops, user_stopped

if TYPE_CHECKING:
    import torch


@attrs.frozen
class MaskView:
    """What a ``mask`` hook sees: the state of every env, as tensors.

    ``slot_stage[e, s]`` is the :class:`~esper_kernel.compose.stages.Stage` of slot
    ``s`` in env ``e``; ``fossilize_ok`` says where gate G5 passes.

    It also answers the lifecycle's timing for a seed germinated now
    (:meth:`timeline`, :meth:`earliest`, :meth:`left_after`,
    :meth:`left_after_each`), so a lever masks a choice by whether its effect
    can still happen, never by re-deriving the lifecycle's rules.
    """

    space: ActionSpace
    n_envs: int
    n_slots: int
    topology: str
    max_epochs: int
    epoch: torch.Tensor
    slot_stage: torch.Tensor
    fossilize_ok: torch.Tensor
    blueprints: tuple[str, ...]

    @property
    def epochs_left(self) -> torch.Tensor:
        return self.max_epochs - self.epoch

    def ones(self, head: str) -> torch.Tensor:
        """An all-legal ``[n_envs, n_choices]`` mask for ``head``."""
        import torch

        return torch.ones(self.n_envs, self.space.head(head).spec.size, dtype=torch.bool)

    def knobs(self, **overrides: Any) -> Knobs:
        """The knobs of the quickest seed germinated now, with ``overrides``.

        The kernel's defaults for this episode, each timing knob that a head
        declares (``HeadSpec.knob``) at that head's smallest choice, then
        ``overrides`` (knob name -> value).
        """
        return attrs.evolve(initial_knobs(self.max_epochs), **{**self.space.quickest, **overrides})

    def timeline(self, **overrides: Any) -> Timeline:
        """When a seed germinated now reaches each point, in epochs from now (see :class:`Timeline`)."""
        return self.space.timeline(self.max_epochs, overrides)

    def earliest(self, point: Point, **overrides: Any) -> torch.Tensor:
        """``[n_envs]``: the earliest epoch a seed germinated now reaches ``point``."""
        return self.epoch + self.timeline(**overrides).at(point)

    def left_after(self, point: Point, **overrides: Any) -> torch.Tensor:
        """``[n_envs]``: episode epochs left after the one in which ``point`` is reached.

        ``>= 0`` where the point is reached within the episode; negative where
        the episode ends first.
        """
        return self.max_epochs - 1 - self.earliest(point, **overrides)

    def left_after_each(self, head: str, point: Point, **overrides: Any) -> torch.Tensor:
        """``[n_envs, n_choices]``: :meth:`left_after` with ``head``'s knob set to each of its choices.

        For a head that declares no knob (or a knob that is not about timing)
        every column is the same.
        """
        offsets = self.space.choice_offsets(head, point, self.max_epochs, overrides)
        return (self.max_epochs - 1 - self.epoch)[:, None] - offsets[None, :]

    def reaching_each(self, head: str, point: Point, **overrides: Any) -> torch.Tensor:
        """``[n_envs, n_choices]`` bool: the choices of ``head`` with which ``point`` falls inside the episode.

        Where none does, the choice that gets there soonest stays legal (the
        default, among equals), so the row is never empty.
        """
        legal = self.left_after_each(head, point, **overrides) >= 0
        legal[:, self.space.soonest_choice(head, point, self.max_epochs, overrides)] = True
        return legal


MaskFn = Callable[[MaskView], "Mapping[str, torch.Tensor] | None"]


@attrs.frozen
class MaskSource:
    lever: str
    distribution: str
    fn: MaskFn


class MaskComposer:
    """ANDs every lever's mask into one ``[B, n_ops, n_heads, max_choices]`` tensor.

    A lever whose mask fails (raises, returns a bad mask, or empties a row)
    stops the run with an error naming it, unless ``on_fault`` takes the lever
    out (quarantine): the lever is then added to :attr:`frozen`, its mask is no
    longer called and its heads are held at their defaults.
    """

    def __init__(self, space: ActionSpace, sources: Sequence[MaskSource]) -> None:
        self.space = space
        self.sources = tuple(sources)
        #: Levers taken out of the run; their heads may only take their default.
        self.frozen: set[str] = set()
        #: ``(lever, hook, error) -> True`` if the lever was taken out and composition may go on.
        self.on_fault: Callable[[str, str, BaseException], bool] | None = None
        #: Seconds spent in each lever's hooks, ``{lever: {hook: s}}`` (shared with the registry).
        self.timings: dict[str, dict[str, float]] = {}

    @cached_property
    def _need(self) -> torch.Tensor:
        need = self.space.relevance_by_op.clone()
        need[:, self.space.op_index] = True
        return need

    @cached_property
    def _only_default(self) -> torch.Tensor:
        import torch

        space = self.space
        only_default = torch.zeros(space.n_heads, space.max_choices, dtype=torch.bool)
        only_default[torch.arange(space.n_heads), space.defaults] = True
        return only_default

    def __call__(self, view: MaskView) -> torch.Tensor:
        while True:
            try:
                return self._compose(view)
            except _LeverFault as fault:
                taken = (
                    self.on_fault is not None
                    and bool(fault.levers)
                    and all(self.on_fault(lv, "mask", fault.error) for lv in fault.levers)
                )
                if not taken:
                    raise fault.error from fault.error.__cause__
                # The lever is out; compose again without it.

    def _compose(self, view: MaskView) -> torch.Tensor:
        space = self.space
        b = view.n_envs
        out = space.valid_choices.expand(b, N_OPS, -1, -1).clone()
        for h in space.heads:
            if h.lever in self.frozen:
                out[:, :, h.index] &= self._only_default[h.index]
        results: list[tuple[MaskSource, str, torch.Tensor]] = []
        for src in self.sources:
            if src.lever in self.frozen:
                continue
            started, before = time.perf_counter(), stops()
            try:
                got = src.fn(view)
            except BaseException as exc:  # a mask's sys.exit() or KeyboardInterrupt is the plugin's fault
                if user_stopped(exc, before):
                    raise
                err = PluginError(
                    f"lever {src.lever!r} ({src.distribution}): mask() raised {type(exc).__name__}: {exc}"
                )
                err.__cause__ = exc
                raise _LeverFault((src.lever,), err) from exc
            finally:
                per = self.timings.setdefault(src.lever, {})
                per["mask"] = per.get("mask", 0.0) + time.perf_counter() - started
            if got is None:
                continue
            try:
                if not isinstance(got, Mapping):
                    # A bare tensor would fail on truth-testing with an error naming no lever.
                    raise MaskError(
                        f"lever {src.lever!r} ({src.distribution}): mask() must return "
                        f"{{head name: bool tensor}}, got {type(got).__name__}"
                    )
                checked = [(self._check(src, name, m, b), name, m) for name, m in got.items()]
            except MaskError as err:
                raise _LeverFault((src.lever,), err) from None
            for h, name, m in checked:
                results.append((src, name, m))
                if m.dim() == 2:
                    out[:, :, h.index, : h.spec.size] &= m[:, None, :]
                else:
                    out[:, :, h.index, : h.spec.size] &= m
        self._check_rows(out, results)
        return out

    def _check(self, src: MaskSource, name: object, m: object, b: int) -> ComposedHead:
        where = f"lever {src.lever!r} ({src.distribution}): mask for head {name!r}"
        if not isinstance(name, str) or name not in self.space:
            raise MaskError(f"{where}: no such head; heads are {list(self.space.names)}")
        import torch

        h = self.space.head(name)
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise MaskError(f"{where}: must be a bool tensor, got {getattr(m, 'dtype', type(m))}")
        ok2 = (b, h.spec.size)
        ok3 = (b, N_OPS, h.spec.size)
        if tuple(m.shape) not in (ok2, ok3) or (m.dim() == 3 and name == OP_HEAD):
            raise MaskError(f"{where}: shape {tuple(m.shape)} does not match {ok2} or {ok3}")
        return h

    def _check_rows(self, out: torch.Tensor, results: Sequence[tuple[MaskSource, str, torch.Tensor]]) -> None:
        space = self.space
        # The op head is decided first and the same for every op, so its row is
        # checked on its own: with no legal op nothing below it can be judged.
        op_legal = out[:, int(Op.WAIT), space.op_index, :N_OPS]
        no_op = op_legal.any(dim=-1).logical_not_()
        if bool(no_op.any()):
            env = int(no_op.nonzero()[0, 0])
            self._empty_row(results, OP_HEAD, env, None)
        # One reduction on the happy path: a decision row must be non-empty
        # wherever its op is legal and the head matters for that op.
        bad = out.any(dim=-1).logical_not_().logical_and_(self._need).logical_and_(op_legal[:, :, None])
        if not bool(bad.any()):
            return
        env, op, head_i = (int(v) for v in bad.nonzero()[0])
        self._empty_row(results, space.names[head_i], env, op)

    def _empty_row(
        self, results: Sequence[tuple[MaskSource, str, torch.Tensor]], name: str, env: int, op: int | None
    ) -> None:
        rows: list[tuple[MaskSource, torch.Tensor]] = []
        for src, hname, m in results:
            if hname != name:
                continue
            row = m[env] if m.dim() == 2 or op is None else m[env, op]
            rows.append((src, row[0] if row.dim() == 2 else row))
        # Blame the sources without which the row would not be empty; if no single
        # one is decisive (several levers together), every source that masked anything.
        culprits: list[MaskSource] = []
        for i, (src, _row) in enumerate(rows):
            others = _row.new_ones(_row.shape)
            for j, (_src, other) in enumerate(rows):
                if j != i:
                    others &= other
            if bool(others.any()) and src not in culprits:
                culprits.append(src)
        if not culprits:
            culprits = list(dict.fromkeys(src for src, row in rows if not bool(row.all())))
        by = ", ".join(f"{c.lever!r} ({c.distribution})" for c in culprits) or "no lever (the kernel's own rules)"
        for_op = "" if op is None else f" for op {Op(op).name}"
        err = MaskError(f"head {name!r} has no legal choice in env {env}{for_op}; masked out by {by}")
        raise _LeverFault(tuple(c.lever for c in culprits), err)


class _LeverFault(Exception):
    """A mask failure and the levers it is blamed on (internal to :class:`MaskComposer`)."""

    def __init__(self, levers: tuple[str, ...], error: PluginError) -> None:
        super().__init__(str(error))
        self.levers = levers
        self.error = error
