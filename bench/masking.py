"""Figure: a masked policy step against the same step with masking skipped.

Candidate: :meth:`PPOPolicy.act_with_value` under the masks the registry
composed (op drawn first, masks selected by it, illegal choices filled,
legality of the taken action checked). Baseline: the same forward and the
same Gumbel-max draw, log-prob and entropy, with no legality mask (so all
heads are drawn at once: without masks nothing depends on the op). Padding
must still never be drawn, so it gets a constant additive bias computed once
(the least any padded layout needs); no per-step mask is built, selected,
filled or checked. Mask
composition itself is timed by the lever-work figure. A second row runs
the very same sampler under all-legal masks, to show masking costs the same
whatever the masks say.
"""

from __future__ import annotations

import torch

from bench import policy_rate
from bench.timing import Row, Settings, fmt_time, interleaved, median, ratio_of
from esper_kernel.compose.actions import N_OPS
from esper_kernel.episode.sampling import NEG, gumbel
from esper_kernel.tamiyo.ppo import PPOPolicy

KEY = "masking"
TARGET = 1.2


@torch.no_grad()
def unmasked_step(
    policy: PPOPolicy, obs: torch.Tensor, pad_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward, one log-softmax, one Gumbel-max draw over every head: sampling with no legality mask."""
    space = policy.space
    logits, value = policy(obs)
    logp = torch.log_softmax(logits + pad_bias, dim=-1)
    actions = (logp + gumbel(logp.shape, policy.generator)).argmax(-1)
    relevance = space.relevance(actions)
    actions = torch.where(relevance, actions, space.defaults)
    log_prob = (logp.gather(-1, actions[..., None]).squeeze(-1) * relevance).sum(-1)
    # Padding has probability exactly 0 after the bias; nan_to_num-free because NEG is finite.
    entropy = -(logp.exp() * logp).sum(-1) * relevance
    return actions, log_prob, entropy, value


def run(settings: Settings) -> list[Row]:
    rows = []
    policy, obs, masks = policy_rate.setup(1)
    space = policy.space
    all_legal = space.valid_choices.expand(obs.shape[0], N_OPS, -1, -1).clone()
    pad_bias = torch.zeros(space.n_heads, space.max_choices).masked_fill(~space.valid_choices, NEG)
    t = interleaved(
        {
            "masked": lambda: policy.act_with_value(obs, masks),
            "unmasked": lambda: unmasked_step(policy, obs, pad_bias),
            "all_legal": lambda: policy.act_with_value(obs, all_legal),
        },
        settings,
    )
    r = ratio_of(t, "masked", "unmasked")
    rows.append(
        Row(
            key=KEY,
            figure="masked vs unmasked policy step, batch 1",
            measured=fmt_time(median(t["masked"])),
            baseline=fmt_time(median(t["unmasked"])) + " (no masking)",
            ratio=r,
            target=f"<= {TARGET:g}x",
            passed=r <= TARGET,
        )
    )
    r2 = ratio_of(t, "masked", "all_legal")
    rows.append(
        Row(
            key=KEY,
            figure="masked step, composed vs all-legal masks, batch 1",
            measured=fmt_time(median(t["masked"])),
            baseline=fmt_time(median(t["all_legal"])) + " (all-legal)",
            ratio=r2,
            target=f"<= {TARGET:g}x",
            passed=r2 <= TARGET,
        )
    )
    return rows
