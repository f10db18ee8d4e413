"""The kernel's own heads, built on the same hooks as any lever.

As pytest builds its core on its own hooks, the ``op``, ``slot``,
``blueprint`` and ``blend`` heads and their legality rules are a plugin:
the registry composes them exactly like a third-party lever.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from esper_kernel import hookimpl
from esper_kernel.compose.actions import N_OPS
from esper_kernel.compose.names import BLENDS
from esper_kernel.compose.specs import CompileSafety, HeadSpec, Safety
from esper_kernel.compose.stages import LIVE_STAGES, Op, Stage

if TYPE_CHECKING:
    import torch

    from esper_kernel.compose.masks import MaskView

_LIVE = sorted(int(s) for s in LIVE_STAGES)


class CoreHeads:
    """Heads for ``n_slots`` slots and the host topology's blueprints.

    ``allowed`` (a task's own blueprints, ``Task.blueprints``) masks GERMINATE to
    those; the ``blueprint`` head keeps the whole catalogue as its choices, so
    observations and policies are the same shape on every task of a topology.
    """

    def __init__(
        self,
        n_slots: int,
        blueprints: tuple[str, ...],
        topology: str = "cnn",
        allowed: tuple[str, ...] | None = None,
    ) -> None:
        if n_slots < 2:
            # A head needs at least two choices; one slot would make ``slot`` degenerate.
            raise ValueError(f"n_slots must be at least 2, got {n_slots}")
        unknown = [b for b in allowed or () if b not in blueprints]
        if unknown or allowed == ():
            raise ValueError(
                f"allowed blueprints {list(allowed or ())} must be a non-empty subset of the "
                f"{topology} catalogue: {', '.join(blueprints)}"
            )
        self.n_slots = n_slots
        self.blueprints = blueprints
        self.topology = topology
        self.allowed = allowed

    @hookimpl
    def action_head(self) -> list[HeadSpec]:
        slots = tuple(f"s{i}" for i in range(self.n_slots))
        return [
            HeadSpec(
                name="op",
                choices=tuple(o.name.lower() for o in Op),
                values=tuple(Op),
                default="wait",
                description="what to do this epoch",
            ),
            HeadSpec(
                name="slot",
                choices=slots,
                values=tuple(range(self.n_slots)),
                default=slots[0],
                ops={Op.GERMINATE, Op.CULL, Op.FOSSILIZE},
                description="which slot the op acts on",
            ),
            HeadSpec(
                name="blueprint",
                choices=self.blueprints,
                values=self.blueprints,
                default=self.blueprints[0],
                ops={Op.GERMINATE},
                description="the seed architecture to germinate",
            ),
            HeadSpec(
                name="blend",
                choices=BLENDS,
                values=BLENDS,
                default="linear",
                ops={Op.GERMINATE},
                description="how the seed's alpha ramps in",
            ),
        ]

    @hookimpl
    def mask(self, view: MaskView) -> dict[str, torch.Tensor]:
        import torch  # here, not at the top: composing the heads for a listing needs no torch

        stage = view.slot_stage
        dormant = stage == int(Stage.DORMANT)
        live = torch.isin(stage, torch.tensor(_LIVE))
        fossil = view.fossilize_ok & (stage == int(Stage.PROBATIONARY))
        op = torch.ones(view.n_envs, N_OPS, dtype=torch.bool)
        op[:, Op.GERMINATE] = dormant.any(1)
        op[:, Op.CULL] = live.any(1)
        op[:, Op.FOSSILIZE] = fossil.any(1)
        slot = torch.ones(view.n_envs, N_OPS, self.n_slots, dtype=torch.bool)
        slot[:, Op.GERMINATE] = dormant
        slot[:, Op.CULL] = live
        slot[:, Op.FOSSILIZE] = fossil
        out = {"op": op, "slot": slot}
        if self.allowed is not None:
            bp = torch.ones(view.n_envs, N_OPS, len(self.blueprints), dtype=torch.bool)
            bp[:, Op.GERMINATE] = torch.tensor([b in self.allowed for b in self.blueprints])
            out["blueprint"] = bp
        return out

    @hookimpl
    def compile_safety(self) -> CompileSafety:
        return CompileSafety(
            Safety.SPECIALIZES, "germinating, fossilizing or culling changes which seed modules are live"
        )
