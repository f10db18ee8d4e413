"""What several figures share: the default registry, a realistic mask view, seeds with history.

Everything is built from the kernel's public constructors with ``EnvConfig()``
defaults, so the benchmark measures the configuration ``esper run`` uses.
"""

from __future__ import annotations

import random

import torch

from esper_kernel.compose.discovery import Selection
from esper_kernel.compose.masks import MaskView
from esper_kernel.compose.registry import Registry
from esper_kernel.compose.seeds import SeedState
from esper_kernel.compose.stages import Stage
from esper_kernel.episode.env import EnvConfig, build_registry
from esper_kernel.infra.telemetry import null_log

#: The six built-in levers, named so a third-party lever installed alongside cannot change the figures.
BUILTIN_LEVERS = ("dwell", "isolation", "lr", "probation", "steepness", "tempo")


#: Logging is not what these figures time: every event is dropped.
NullLog = null_log


def registry(config: EnvConfig | None = None) -> Registry:
    return build_registry(config or EnvConfig(), Selection(only=BUILTIN_LEVERS))


def mask_view(reg: Registry, n_envs: int, config: EnvConfig | None = None, seed: int = 0) -> MaskView:
    """Envs at mixed epochs with slots in mixed stages, so every lever's mask has something to cut.

    Slot stages are drawn from the stages a slot really shows (dormant, live,
    embargoed); G5 passes for some probationary slots.
    """
    cfg = config or EnvConfig()
    g = torch.Generator().manual_seed(seed)
    shown = torch.tensor(
        [
            int(s)
            for s in (
                Stage.DORMANT,
                Stage.GERMINATED,
                Stage.TRAINING,
                Stage.BLENDING,
                Stage.PROBATIONARY,
                Stage.EMBARGOED,
            )
        ]
    )
    stage = shown[torch.randint(0, len(shown), (n_envs, cfg.slots), generator=g)]
    # Germinating must stay possible somewhere, or most lever heads would never be relevant.
    stage[:, 0] = int(Stage.DORMANT)
    fossil_ok = (stage == int(Stage.PROBATIONARY)) & (torch.rand(n_envs, cfg.slots, generator=g) < 0.5)
    core = reg.info("esper").plugin
    return MaskView(
        space=reg.space,
        n_envs=n_envs,
        n_slots=cfg.slots,
        topology=cfg.topology,
        max_epochs=cfg.epochs,
        epoch=torch.randint(0, cfg.epochs, (n_envs,), generator=g),
        slot_stage=stage,
        fossilize_ok=fossil_ok,
        blueprints=tuple(getattr(core, "blueprints", ())),
    )


def observation(n_envs: int, obs_dim: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n_envs, obs_dim, generator=torch.Generator().manual_seed(seed))


def seed_with_history(slot: int, stage: Stage, epochs: int, max_epochs: int, seed: int = 0) -> SeedState:
    """A seed ``epochs`` epochs into its life, its metrics filled as the lifecycle would fill them.

    Telemetry fields scan these lists, so their length (not their values)
    is what makes the per-step cost realistic.
    """
    rng = random.Random(seed * 31 + slot)
    st = SeedState(
        seed_id=f"bench{slot}",
        slot=slot,
        blueprint="conv_small",
        blend="sigmoid" if slot % 2 == 0 else "gated",
        topology="cnn",
        germinated_epoch=0,
        max_epochs=max_epochs,
        stage=stage,
        stage_entered_epoch=max(0, epochs - 2),
        choices={
            "dwell": "SHORT",
            "isolation": "DEFAULT",
            "lr": "STANDARD",
            "probation": "STANDARD",
            "steepness": "NORMAL",
            "tempo": "STANDARD",
        },
        values={"dwell": 2, "isolation": None, "lr": 1.0, "probation": 5, "steepness": 1.0, "tempo": 5},
    )
    progression = [
        Stage.GERMINATED,
        Stage.TRAINING,
        Stage.TRAINING,
        Stage.BLENDING,
        Stage.BLENDING,
        Stage.BLENDING,
        Stage.PROBATIONARY,
    ]
    m = st.metrics
    for e in range(epochs):
        s = progression[min(e, len(progression) - 1)] if e < epochs - 1 else stage
        m.stage.append(int(s))
        m.alpha.append(min(1.0, max(0.0, (e - 2) / 5)))
        m.grad_norm.append(rng.uniform(0.1, 2.0))
        m.grad_ratio.append(rng.uniform(0.0, 0.5))
        m.host_grad_via_seed.append(rng.uniform(0.0, 1.0))
        m.host_weight_change.append(rng.uniform(0.0, 0.05))
        m.weight_norm.append(rng.uniform(1.0, 5.0))
        m.contribution.append(rng.uniform(-0.05, 0.05) if s in (Stage.BLENDING, Stage.PROBATIONARY) else None)
        m.val_accuracy.append(rng.uniform(0.2, 0.8))
        m.alpha_batch_var.append(rng.uniform(0.0, 0.01))
        m.exploded.append(False)
        m.coadaptation_delta.append(rng.uniform(-0.01, 0.01) if e == 3 else None)
    return st
