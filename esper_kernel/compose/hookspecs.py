"""The hooks a lever plugin implements. Each docstring is the reference.

The product card's five, plus ``on_epoch`` for levers whose effect changes
over a seed's life (a warm-up, a schedule).

A lever is a module (or object) with functions decorated by
``esper_kernel.hookimpl``, found through the ``esper.levers`` entry-point
group. A hook implementation may accept any subset of the arguments its spec
names, as with any pluggy hook. The kernel calls each lever's implementation
on its own, so every failure is reported against that lever's distribution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import torch

    from esper_kernel.compose.masks import MaskView
    from esper_kernel.compose.seeds import SeedState
    from esper_kernel.compose.specs import CompileSafety, HeadSpec, TelemetryField
    from esper_kernel.compose.stages import Stage

PROJECT = "esper"
hookspec = pluggy.HookspecMarker(PROJECT)

HOOK_NAMES: tuple[str, ...] = (
    "action_head",
    "mask",
    "on_enter_stage",
    "on_epoch",
    "telemetry_fields",
    "compile_safety",
)


@hookspec
def action_head() -> HeadSpec | Sequence[HeadSpec] | None:
    """Declare the decision head this lever adds to Tamiyo's action space.

    Called once, when the registry composes the action space. Return a
    :class:`~esper_kernel.compose.specs.HeadSpec` (or several, or None for a lever
    that adds no head). Heads are appended after the kernel's own heads
    (``op``, ``slot``, ``blueprint``, ``blend``) in lever-name order. A head
    name already taken is an error naming both distributions.

    The choice Tamiyo makes is recorded on the seed at GERMINATE
    (``seed.choices[name]`` and ``seed.values[name]``); read it back in
    :func:`on_enter_stage`.
    """


@hookspec
def mask(view: MaskView) -> Mapping[str, torch.Tensor] | None:
    """Say which choices are legal right now, for every env at once.

    Called every decision step. Return ``{head_name: bool tensor}`` of shape
    ``[view.n_envs, n_choices]``, or ``[view.n_envs, n_ops, n_choices]`` for a
    mask that depends on the op being taken (``True`` = legal). A lever may
    constrain any head, its own or another's; the kernel ANDs every lever's
    mask for a head. ``view.ones(head)`` gives an all-legal mask to start from.

    Leaving a decision with no legal choice is an error that names this lever,
    the head and the env, never a NaN.
    """


@hookspec
def on_enter_stage(seed: SeedState, old: Stage, new: Stage) -> None:
    """React to a seed changing stage: set its knobs from its recorded choices.

    Called for every transition of every seed (including GERMINATE, with
    ``old`` DORMANT, before the seed's module is built), in lever order. Write
    ``seed.knobs`` (blend steps, steepness, dwell, isolation, lr scale,
    probation, gate thresholds, width): the kernel applies knobs after every
    lever has run. Keep per-seed private state in
    ``seed.lever_state[<lever>]``: it is checkpointed under the lever's name.

    A lever whose whole effect is "set knob K from my choice on entering S"
    needs no implementation: it declares ``HeadSpec(knob=K, on_enter=S)``.
    A lever writes only knobs it owns: declared by ``HeadSpec.knob`` or
    listed in its module's ``writes`` attribute; any other write is an error
    naming the lever and the knob.
    """


@hookspec
def on_epoch(seed: SeedState, epoch: int) -> None:
    """Adjust a live seed's knobs for the coming epoch: schedules, warm-ups.

    Called once before every epoch a seed lives through (``epoch`` is that
    epoch), after the stage changes that open it and after ``on_enter_stage``,
    for every live seed, in lever order. The kernel applies the knobs right
    after, through the same path as ``on_enter_stage``: the seed's optimizer
    param-group lr, its alpha schedule, isolation and gates all follow from
    ``epoch`` on. ``width_scale`` cannot change once the module is built;
    writing it here (or a knob the lever does not own) is an error naming the
    lever. ``seed.stage``, ``seed.epochs_in_stage(epoch)`` and
    ``seed.earliest(point)`` say where the seed is in its life.

    Compile safety: the hook runs in Python between epochs, so it may only
    change values (knobs the kernel turns into buffers, the lr and gate
    thresholds), never module structure; a lever declaring ``NONE`` must not
    cause a recompile however its knobs move.
    """


@hookspec
def telemetry_fields() -> Sequence[TelemetryField]:
    """Declare the numbers this lever publishes every epoch, per slot.

    Called once, at composition. Each field's ``compute(ctx)`` is called
    every epoch for every slot with a
    :class:`~esper_kernel.compose.specs.FieldContext` and returns a float or None.
    Fields appear in ``epoch.completed`` events as ``<lever>.<name>``; fields
    with ``observed=True`` also extend Tamiyo's observation vector.
    """
    raise NotImplementedError


@hookspec
def compile_safety() -> CompileSafety:
    """Declare how this lever affects a host under ``torch.compile``.

    Called once, at composition. ``NONE``: choices only change tensor values,
    never a recompile. ``SPECIALIZES``: choices change module structure, so
    one graph per distinct choice. ``BREAKS_GRAPH``: the lever's effect cannot
    be captured in one graph; with ``--compile`` such a lever is refused
    unless the user passes ``--allow-graph-breaks``. A lever that does not
    implement this hook is treated as ``BREAKS_GRAPH``.
    """
    raise NotImplementedError
