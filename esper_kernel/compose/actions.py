"""Tamiyo's composed, factored action space and its masks.

The space is a tuple of categorical heads: the kernel's own (``op``,
``slot``, ``blueprint``, ``blend``) followed by every lever's head. Actions
are integer tensors ``[n_envs, n_heads]``; masks are bool tensors
``[n_envs, n_ops, n_heads, max_choices]`` because which slot may be chosen
depends on the op (a slot to germinate must be dormant, one to cull live).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import attrs

from esper_kernel.compose.seeds import TIMING_KNOBS, Knobs, Point, Timeline, initial_knobs
from esper_kernel.compose.specs import HeadSpec
from esper_kernel.compose.stages import Op
from esper_kernel.infra.errors import MaskError, PluginError

if TYPE_CHECKING:
    import torch

# torch is imported inside the methods that build tensors, not at the top: composing a
# space (``esper levers list``) checks heads and conditions in plain Python, and
# importing torch would cost a listing command about 1.2 s of its 1.6 s.

N_OPS = len(Op)
OP_HEAD = "op"


@attrs.frozen
class ComposedHead:
    """A head as composed: its spec, position and the lever that declared it."""

    spec: HeadSpec
    index: int
    lever: str
    distribution: str

    @property
    def name(self) -> str:
        return self.spec.name


@attrs.frozen
class Decision:
    """One env's decoded action: the op, and every head's choice name."""

    op: Op
    choices: dict[str, str]
    values: dict[str, Any]
    relevant: dict[str, bool]


class ActionSpace:
    """Every head, its size, and which heads matter for which op."""

    def __init__(self, heads: Sequence[ComposedHead]) -> None:
        self.heads: tuple[ComposedHead, ...] = tuple(heads)
        self.names: tuple[str, ...] = tuple(h.name for h in self.heads)
        self._by_name = {h.name: h for h in self.heads}
        if OP_HEAD not in self._by_name:
            raise PluginError("the action space has no 'op' head; the kernel's core plugin is missing")
        self.sizes: tuple[int, ...] = tuple(h.spec.size for h in self.heads)
        self.n_heads = len(self.heads)
        self.max_choices = max(self.sizes)
        self.op_index = self.names.index(OP_HEAD)
        self._timelines: dict[tuple[Any, ...], Timeline] = {}
        self._offsets: dict[tuple[Any, ...], torch.Tensor] = {}
        #: For each timing knob some head sets, its smallest choice: what the quickest seed gets.
        self.quickest: dict[str, Any] = {}
        for h in self.heads:
            if h.spec.knob in TIMING_KNOBS:
                least = min(h.spec.values)
                self.quickest[h.spec.knob] = min(self.quickest.get(h.spec.knob, least), least)
        conditions = self._condition_choices()  # first: it names a missing or bad condition head
        order = self._dependency_order()
        rank = {head: pos for pos, head in enumerate(order)}
        self._condition_order = sorted(conditions, key=lambda c: rank[c[0]])
        #: Per head, in dependency order: (index, name, ops, condition as (cond index, allowed choice indices)).
        self._plain: list[tuple[int, str, frozenset[Op], tuple[int, frozenset[int]] | None]] = []
        for i in order:
            h = self.heads[i]
            cond = h.spec.condition
            plain_cond = None
            if cond is not None:
                target = self._by_name[cond.head]
                plain_cond = (target.index, frozenset(target.spec.choices.index(c) for c in cond.choices))
            self._plain.append((i, h.name, h.spec.ops, plain_cond))

    def _condition_choices(self) -> list[tuple[int, int, tuple[int, ...]]]:
        """Per conditioned head: (its index, the conditioning head's index, its allowed choice indices)."""
        out: list[tuple[int, int, tuple[int, ...]]] = []
        for h in self.heads:
            cond = h.spec.condition
            if cond is None:
                continue
            where = f"lever {h.lever!r} ({h.distribution}): head {h.name!r} is conditioned on"
            target = self._by_name.get(cond.head)
            if target is None:
                raise PluginError(f"{where} head {cond.head!r}, which no installed lever declares")
            for c in cond.choices:
                if c not in target.spec.choices:
                    choices = list(target.spec.choices)
                    raise PluginError(f"{where} {cond.head}={c!r}, but {cond.head!r} has choices {choices}")
            out.append((h.index, target.index, tuple(target.spec.choices.index(c) for c in cond.choices)))
        return out

    @cached_property
    def relevance_by_op(self) -> torch.Tensor:
        """``[n_ops, n_heads]`` bool: which heads matter for which op, before head conditions."""
        import torch

        rel = torch.zeros(N_OPS, self.n_heads, dtype=torch.bool)
        for h in self.heads:
            for op in h.spec.ops:
                rel[int(op), h.index] = True
        return rel

    @cached_property
    def valid_choices(self) -> torch.Tensor:
        """``[n_heads, max_choices]``: True where a choice exists (padding is False)."""
        import torch

        valid = torch.zeros(self.n_heads, self.max_choices, dtype=torch.bool)
        for h in self.heads:
            valid[h.index, : h.spec.size] = True
        return valid

    @cached_property
    def defaults(self) -> torch.Tensor:
        """``[n_heads]``: every head's default choice index."""
        import torch

        return torch.tensor([h.spec.default_index for h in self.heads], dtype=torch.long)

    @cached_property
    def _conditions(self) -> list[tuple[int, int, torch.Tensor]]:
        """:meth:`_condition_choices` in dependency order, each allowed set as a ``[max_choices]`` mask."""
        import torch

        out = []
        for head_i, cond_i, allowed in self._condition_order:
            mask = torch.zeros(self.max_choices, dtype=torch.bool)
            mask[list(allowed)] = True
            out.append((head_i, cond_i, mask))
        return out

    def _dependency_order(self) -> list[int]:
        """Head indices such that a head comes after the head it is conditioned on, whatever the lever order."""
        order: list[int] = []
        pending = list(range(self.n_heads))
        while pending:
            ready = [
                i
                for i in pending
                if self.heads[i].spec.condition is None
                or self._by_name[self.heads[i].spec.condition.head].index in order  # type: ignore[union-attr]
            ]
            if not ready:
                h = self.heads[pending[0]]
                raise PluginError(
                    f"lever {h.lever!r} ({h.distribution}): head conditions form a cycle among "
                    f"{[self.heads[i].name for i in pending]}"
                )
            order += ready
            pending = [i for i in pending if i not in ready]
        return order

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def timeline(self, max_epochs: int, overrides: Mapping[str, Any]) -> Timeline:
        """The quickest seed's :class:`Timeline` in an episode of ``max_epochs``, with knob ``overrides``.

        Masks ask this every step with the same few arguments, so answers are kept.
        """
        key = (max_epochs, tuple(sorted(overrides.items())))
        got = self._timelines.get(key)
        if got is None:
            knobs = attrs.evolve(initial_knobs(max_epochs), **{**self.quickest, **overrides})
            got = self._timelines[key] = Timeline.of(knobs)
        return got

    def soonest_choice(self, head: str, point: Point, max_epochs: int, overrides: Mapping[str, Any]) -> int:
        """The choice of ``head`` with which ``point`` comes soonest (the default, among equals)."""
        offsets = self.choice_offsets(head, point, max_epochs, overrides).tolist()
        default = self.head(head).spec.default_index
        return default if offsets[default] == min(offsets) else offsets.index(min(offsets))

    def choice_offsets(self, head: str, point: Point, max_epochs: int, overrides: Mapping[str, Any]) -> torch.Tensor:
        """``[n_choices]``: epochs from germination to ``point`` with ``head``'s knob at each choice."""
        key = (head, point, max_epochs, tuple(sorted(overrides.items())))
        got = self._offsets.get(key)
        if got is None:
            spec = self.head(head).spec
            knob = spec.knob
            per = [self.timeline(max_epochs, {**overrides, knob: v} if knob else overrides) for v in spec.values]
            import torch

            got = self._offsets[key] = torch.tensor([t.at(point) for t in per])
        return got

    def head(self, name: str) -> ComposedHead:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no head {name!r}; heads are {list(self.names)}") from None

    def choice_index(self, head: str, choice: str) -> int:
        spec = self.head(head).spec
        try:
            return spec.choices.index(choice)
        except ValueError:
            raise KeyError(f"head {head!r} has no choice {choice!r}; choices are {list(spec.choices)}") from None

    def relevance(self, actions: torch.Tensor) -> torch.Tensor:
        """``[B, n_heads]`` bool: which heads matter for these actions.

        A head matters when the chosen op is among its ops and, if it has a
        condition, the conditioning head matters and chose an allowed value.
        """
        rel = self.relevance_by_op[actions[:, self.op_index]]
        for head_i, cond_i, allowed in self._conditions:
            ok = allowed[actions[:, cond_i]] & rel[:, cond_i]
            rel[:, head_i] &= ok
        return rel

    def decode(self, actions: torch.Tensor) -> list[Decision]:
        """Turn ``[B, n_heads]`` indices into per-env decisions.

        Irrelevant heads report their default, so a recorded seed never holds a
        choice nobody made. Plain Python over the rows: per env step, B is small
        and tensor ops would cost more than the work.
        """
        out: list[Decision] = []
        heads = self.heads
        for row in actions.tolist():
            op = Op(row[self.op_index])
            rel = [False] * self.n_heads
            for i, _name, ops, cond in self._plain:
                rel[i] = op in ops and (cond is None or (rel[cond[0]] and row[cond[0]] in cond[1]))
            picks = [idx if r else h.spec.default_index for h, idx, r in zip(heads, row, rel, strict=True)]
            choices = {h.name: h.spec.choices[p] for h, p in zip(heads, picks, strict=True)}
            values = {h.name: h.spec.values[p] for h, p in zip(heads, picks, strict=True)}
            out.append(Decision(op, choices, values, dict(zip(self.names, rel, strict=True))))
        return out

    def encode(self, choices: Sequence[Mapping[str, str]]) -> torch.Tensor:
        """Inverse of :meth:`decode`: choice names per env -> ``[B, n_heads]``.

        Heads a mapping leaves out take their default.
        """
        out = self.defaults.repeat(len(choices), 1)
        for b, row in enumerate(choices):
            for name, choice in row.items():
                out[b, self.head(name).index] = self.choice_index(name, choice)
        return out


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
            started = time.perf_counter()
            try:
                got = src.fn(view)
            except Exception as exc:
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
