"""Tamiyo's composed, factored action space and its masks.

The space is a tuple of categorical heads: the kernel's own (``op``,
``slot``, ``blueprint``, ``blend``) followed by every lever's head. Actions
are integer tensors ``[n_envs, n_heads]``; masks are bool tensors
``[n_envs, n_ops, n_heads, max_choices]`` because which slot may be chosen
depends on the op (a slot to germinate must be dormant, one to cull live).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import attrs

from esper_kernel.compose.seeds import TIMING_KNOBS, Point, Timeline, initial_knobs
from esper_kernel.compose.specs import HeadSpec
from esper_kernel.compose.stages import Op
from esper_kernel.infra.errors import PluginError

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
