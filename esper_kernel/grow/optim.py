"""The host's optimizer and the gradient norms of a step, owned by the epoch runner.

:class:`HostOptimizer` keeps one SGD param group for the host and one per
seed (a seed's ``lr_scale`` knob scales its group); the lifecycle only tells it
what changed. :class:`StepNorms` takes one pass over a batch's gradients and
gives the host's, each seed's and the clipping norm from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from esper_kernel.compose.seeds import SeedState
from esper_kernel.grow.lifecycle import Lifecycle, LifecycleError


def _grad_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms: torch.Tensor = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    return norms


class StepNorms:
    """One gradient-norm pass per batch: the step's total norm and the host's and each seed's share.

    Each gradient's norm is taken once; the host's, each seed's and the whole
    step's norms (what clipping and the finiteness check use) are norms of
    subsets of those, combined exactly as ``clip_grad_norm_`` combines them,
    so every figure is bit-for-bit what separate passes gave.
    """

    def __init__(
        self,
        trained: list[torch.Tensor],
        host: list[nn.Parameter],
        seeds: dict[int, list[nn.Parameter]],
        device: torch.device,
    ) -> None:
        self.trained = trained
        at = {id(p): k for k, p in enumerate(trained)}
        self.parts: dict[int | None, list[int]] = {None: [at[id(p)] for p in host if id(p) in at]}
        self.parts.update({i: [at[id(p)] for p in ps if id(p) in at] for i, ps in seeds.items()})
        # A parameter measured but not trained (none today) would be missed by the shared pass.
        self.extra: dict[int | None, list[nn.Parameter]] = {None: [p for p in host if id(p) not in at]}
        self.extra.update({i: [p for p in ps if id(p) not in at] for i, ps in seeds.items()})
        #: ``{None: host, slot: seed}``: the norms summed over the epoch's batches, on the host's device
        #: (a float() per batch would wait for the GPU every batch).
        self.sums = {key: torch.zeros((), device=device) for key in self.parts}

    def measure(self) -> torch.Tensor:
        """The step's total norm of the gradients now held; the host's and seeds' norms go to :attr:`sums`."""
        held = [k for k, p in enumerate(self.trained) if p.grad is not None]
        grads = [g for k in held if (g := self.trained[k].grad) is not None]
        norms = dict(zip(held, torch._foreach_norm(grads), strict=True))
        total = torch.linalg.vector_norm(torch.stack(list(norms.values()))) if norms else torch.tensor(0.0)
        for key, idx in self.parts.items():
            if self.extra[key]:
                self.sums[key] += _grad_norm([*(self.trained[k] for k in idx), *self.extra[key]])
                continue
            mine = [norms[k] for k in idx if k in norms]
            self.sums[key] += torch.linalg.vector_norm(torch.stack(mine)) if mine else torch.zeros(())
        return total


class HostOptimizer:
    """The host's SGD and its param groups, kept in step with a lifecycle it listens to.

    Group 0 is the host's own parameters at the host rate. Each live seed has
    a group (``seed_id`` set) at the host rate times its ``lr_scale`` knob,
    added at germination, updated whenever its knobs are applied, dropped with
    its momentum when it is culled. A fossil's group stays, at the host rate,
    marked ``fossil_of``. Attached to a lifecycle that already has seeds or
    fossils, it starts with their groups (and no momentum).
    """

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle
        self.host_lr = lifecycle.config.host_lr
        fossils = lifecycle.fossil_modules()
        live = [s for s in lifecycle.seeds if s is not None]
        grown = {id(p) for m in fossils.values() for p in m.parameters()}
        grown |= {id(p) for s in live for p in lifecycle.slots[s.slot].seed_parameters()}
        base = [p for p in lifecycle.host.parameters() if id(p) not in grown]
        groups: list[dict[str, Any]] = [{"params": base, "lr": self.host_lr, "seed_id": None}]
        groups += [self._fossil_group(sid, m) for sid, m in fossils.items()]
        groups += [self._seed_group(s) for s in live]
        self.sgd = torch.optim.SGD(groups, lr=self.host_lr, momentum=lifecycle.config.momentum)
        lifecycle.subscribe(self)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.sgd.param_groups

    @property
    def state(self) -> Any:
        return self.sgd.state

    def _seed_group(self, seed: SeedState) -> dict[str, Any]:
        params = self.lifecycle.slots[seed.slot].seed_parameters()
        return {"params": params, "lr": self.host_lr * seed.knobs.lr_scale, "seed_id": seed.seed_id}

    def _fossil_group(self, seed_id: str, module: nn.Module) -> dict[str, Any]:
        return {"params": list(module.parameters()), "lr": self.host_lr, "seed_id": None, "fossil_of": seed_id}

    def _groups_of(self, seed: SeedState) -> list[dict[str, Any]]:
        return [g for g in self.sgd.param_groups if g.get("seed_id") == seed.seed_id]

    # -- what the lifecycle tells it --------------------------------------------------

    def seed_added(self, seed: SeedState) -> None:
        self.sgd.add_param_group(self._seed_group(seed))

    def seed_removed(self, seed: SeedState) -> None:
        for group in self._groups_of(seed):
            for p in group["params"]:
                self.sgd.state.pop(p, None)
        self.sgd.param_groups[:] = [g for g in self.sgd.param_groups if g.get("seed_id") != seed.seed_id]

    def seed_fossilized(self, seed: SeedState) -> None:
        # The fossil is host now: it trains at the host's rate from here on, momentum kept.
        for group in self._groups_of(seed):
            group.update(lr=self.host_lr, seed_id=None, fossil_of=seed.seed_id)

    def knobs_changed(self, seed: SeedState) -> None:
        for group in self._groups_of(seed):
            group["lr"] = self.host_lr * seed.knobs.lr_scale

    # -- reading and checkpointing -----------------------------------------------------

    def seed_group_lr(self, slot: int) -> float:
        """The learning rate of the live seed's param group in ``slot``."""
        seed = self.lifecycle.seeds[slot]
        if seed is None:
            raise LifecycleError(f"cannot inspect slot {slot}: no live seed there ({self.lifecycle.stages[slot].name})")
        for group in self._groups_of(seed):
            return float(group["lr"])
        raise LifecycleError(f"{seed.seed_id} has no optimizer param group")

    def step(self) -> None:
        self.sgd.step()

    def zero_grad(self) -> None:
        self.sgd.zero_grad(set_to_none=True)

    def parameters(self) -> list[torch.Tensor]:
        return [p for group in self.sgd.param_groups for p in group["params"]]

    def state_dict(self) -> dict[str, Any]:
        """The groups (by what they hold: host, a slot's seed, a fossil) and torch's own state."""
        slot_of = {s.seed_id: s.slot for s in self.lifecycle.seeds if s is not None}
        groups: list[dict[str, Any]] = []
        for i, group in enumerate(self.sgd.param_groups):
            if i == 0:
                groups.append({"kind": "host"})
            elif group.get("seed_id") is not None:
                groups.append({"kind": "seed", "slot": slot_of[group["seed_id"]]})
            else:
                groups.append({"kind": "fossil", "seed_id": group["fossil_of"]})
        return {"groups": groups, "optimizer": self.sgd.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` after the lifecycle itself was restored."""
        fossils = self.lifecycle.fossil_modules()
        base = self.sgd.param_groups[0]["params"]
        groups: list[dict[str, Any]] = []
        for g in state["groups"]:
            if g["kind"] == "host":
                params = list(base)
            elif g["kind"] == "seed":
                params = self.lifecycle.slots[g["slot"]].seed_parameters()
            else:
                params = list(fossils[g["seed_id"]].parameters())
            groups.append({"params": params})
        self.sgd = torch.optim.SGD(groups, lr=self.host_lr, momentum=self.lifecycle.config.momentum)
        self.sgd.load_state_dict(state["optimizer"])
