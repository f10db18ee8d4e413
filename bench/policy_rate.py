"""Figure: policy decisions per second, the fused masked sampler against one Categorical per head.

Candidate: :meth:`PPOPolicy.act_with_value` (trunk forward, then
:func:`esper_kernel.episode.sampling.sample`: padded logits, one masked
log-softmax, Gumbel-max draws). Baseline: the same forward, then what one
usually writes: per head, slice its logits, mask them, build a
``torch.distributions.Categorical``, sample, and sum log-probs and
entropies of the relevant heads. Both draw the op first and pick the other
heads' masks by it, as the factored space requires.
"""

from __future__ import annotations

import torch
from torch.distributions import Categorical

from bench import fixtures
from bench.timing import Row, Settings, fmt_time, interleaved, median, ratio_of
from esper_kernel.compose.actions import ActionSpace
from esper_kernel.episode.env import EnvConfig, observation_names
from esper_kernel.episode.sampling import NEG, score
from esper_kernel.tamiyo.ppo import PPOPolicy

KEY = "policy"
TARGET = 5.0


@torch.no_grad()
def categorical_step(
    policy: PPOPolicy, space: ActionSpace, obs: torch.Tensor, masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Actions, summed log-prob, summed entropy and value: per-head Categoricals, the usual way."""
    logits, value = policy(obs)
    b = obs.shape[0]
    op_i = space.op_index
    n_op = space.sizes[op_i]
    op_dist = Categorical(logits=logits[:, op_i, :n_op].masked_fill(~masks[:, 0, op_i, :n_op], NEG))
    op = op_dist.sample()
    sel = masks[torch.arange(b), op]
    dists: list[Categorical] = []
    drawn: list[torch.Tensor] = []
    for h, size in enumerate(space.sizes):
        if h == op_i:
            dists.append(op_dist)
            drawn.append(op)
            continue
        d = Categorical(logits=logits[:, h, :size].masked_fill(~sel[:, h, :size], NEG))
        dists.append(d)
        drawn.append(d.sample())
    actions = torch.stack(drawn, dim=1)
    relevance = space.relevance(actions)
    actions = torch.where(relevance, actions, space.defaults)
    log_prob = torch.stack([d.log_prob(actions[:, h]) for h, d in enumerate(dists)], dim=1)
    entropy = torch.stack([d.entropy() for d in dists], dim=1)
    return actions, (log_prob * relevance).sum(-1), (entropy * relevance).sum(-1), value


def setup(batch: int) -> tuple[PPOPolicy, torch.Tensor, torch.Tensor]:
    cfg = EnvConfig()
    reg = fixtures.registry(cfg)
    names = observation_names(reg, cfg.slots)
    policy = PPOPolicy.for_registry(reg, names)
    policy.eval()
    masks = reg.masks(fixtures.mask_view(reg, batch, cfg))
    return policy, fixtures.observation(batch, len(names)), masks


def _check_same_distribution(policy: PPOPolicy, obs: torch.Tensor, masks: torch.Tensor) -> None:
    # Both sides must compute the same thing, or the ratio compares different work.
    sampled, _ = policy.act_with_value(obs, masks)
    lp_fused, _ = score(policy.space, policy(obs)[0].detach(), sampled.masks, sampled.actions, sampled.relevance)
    logits = policy(obs)[0].detach()
    sel = sampled.masks
    lp_cat = torch.zeros(obs.shape[0])
    for h, size in enumerate(policy.space.sizes):
        d = Categorical(logits=logits[:, h, :size].masked_fill(~sel[:, h, :size], NEG))
        lp_cat += d.log_prob(sampled.actions[:, h]) * sampled.relevance[:, h]
    if not torch.allclose(lp_fused, lp_cat, atol=1e-4):
        raise AssertionError("fused and per-head Categorical log-probs disagree; the comparison would be unfair")


def run(settings: Settings) -> list[Row]:
    rows = []
    for batch in (1, 64):
        policy, obs, masks = setup(batch)
        _check_same_distribution(policy, obs, masks)
        t = interleaved(
            {
                "fused": lambda p=policy, o=obs, m=masks: p.act_with_value(o, m),
                "categorical": lambda p=policy, o=obs, m=masks: categorical_step(p, p.space, o, m),
            },
            settings,
        )
        speedup = 1.0 / ratio_of(t, "fused", "categorical")
        fused, cat = median(t["fused"]), median(t["categorical"])
        target = batch == 1
        rows.append(
            Row(
                key=KEY,
                figure=f"policy decisions/s, batch {batch} ({policy.space.n_heads} heads, masked)",
                measured=f"{batch / fused:,.0f}/s ({fmt_time(fused)})",
                baseline=f"{batch / cat:,.0f}/s ({fmt_time(cat)})",
                ratio=speedup,
                target=f">= {TARGET:g}x faster" if target else "reported",
                passed=(speedup >= TARGET) if target else None,
                notes=("ratio = Categorical time / fused time",),
            )
        )
    return rows
