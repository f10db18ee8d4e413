"""Sampling and scoring factored actions with padded logits and one masked softmax.

Logits for every head live in one ``[B, n_heads, max_choices]`` tensor; the
composed mask removes padding and illegal choices. The op is drawn first,
because which slots are legal depends on it; then every head is scored by a
single masked log-softmax. Heads that are not relevant for the chosen op
(or whose condition fails) add nothing to the log-prob or the entropy.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import torch

from esper_kernel.compose.actions import ActionSpace
from esper_kernel.infra.errors import MaskError

NEG = -1e9  # finite, so a fully masked (irrelevant, padded) row never makes NaN


@attrs.frozen
class Sampled:
    actions: torch.Tensor  # [B, H] long
    masks: torch.Tensor  # [B, H, C] bool: the masks used, given the chosen op
    relevance: torch.Tensor  # [B, H] bool
    log_prob: torch.Tensor  # [B]
    entropy: torch.Tensor  # [B, H], zero where irrelevant

    def rows(self, rows: slice) -> Sampled:
        """The draws of ``rows`` only."""
        return Sampled(*(getattr(self, f.name)[rows] for f in attrs.fields(Sampled)))


def select_masks(space: ActionSpace, masks: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
    """``[B, n_ops, H, C]`` masks -> ``[B, H, C]`` for the chosen ops."""
    return masks[torch.arange(masks.shape[0]), op]


def pin_masks(masks: torch.Tensor, pins: Mapping[int, int]) -> torch.Tensor:
    """``masks`` ``[B, n_ops, H, C]`` with each pinned head ``h`` left one legal choice: ``pins[h]``,
    or where that is illegal the nearest legal one (the lower on a tie), as ``esper eval --force`` does.

    A pinned head then adds nothing to the log-prob or the entropy: the policy cannot learn it,
    which is what a fixed-levers control needs. Rows where nothing is legal stay as they were.
    """
    if not pins:
        return masks
    out = masks.clone()
    choice = torch.arange(masks.shape[-1])
    for head, want in pins.items():
        legal = masks[..., head, :]
        # Twice the distance, plus one above the wanted choice: ties go to the lower choice.
        cost = (choice - want).abs() * 2 + (choice > want).long()
        pick = torch.where(legal, cost, torch.iinfo(torch.long).max).argmin(-1, keepdim=True)
        one = choice == pick
        out[..., head, :] = torch.where(legal.any(-1, keepdim=True), one, legal)
    return out


def _log_probs(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.masked_fill(~masks, NEG), dim=-1)


def score(
    space: ActionSpace, logits: torch.Tensor, masks: torch.Tensor, actions: torch.Tensor, relevance: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob ``[B]`` and per-head entropy ``[B, H]`` of ``actions`` under ``masks``.

    Raises :class:`MaskError` if a relevant action is illegal under the masks
    given: replaying a rollout with masks that changed since it was collected
    must fail loudly, not train on an impossible action.
    """
    taken_ok = masks.gather(-1, actions[..., None]).squeeze(-1)
    if not bool((taken_ok | ~relevance).all()):
        b, h = (int(v) for v in (~taken_ok & relevance).nonzero()[0])
        raise MaskError(
            f"action {space.names[h]}={int(actions[b, h])} in row {b} is illegal under the masks given; "
            "the masks changed between rollout and update"
        )
    return _score(_log_probs(logits, masks), actions, relevance)


def _score(logp: torch.Tensor, actions: torch.Tensor, relevance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    taken = logp.gather(-1, actions[..., None]).squeeze(-1)
    log_prob = (taken * relevance).sum(-1)
    # Masked logits are a finite -1e9, so their p * log p is exactly 0: no fill needed.
    ent = -(logp.exp() * logp).sum(-1)
    return log_prob, ent * relevance


def sample(
    space: ActionSpace,
    logits: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator | None = None,
    greedy: bool = False,
    noise: torch.Tensor | None = None,
) -> Sampled:
    """Draw one factored action per row from ``logits`` ``[B, H, C]`` under ``masks`` ``[B, n_ops, H, C]``.

    ``noise`` (``[B, H, C]``, from :func:`gumbel`) is the Gumbel noise to
    draw with; without it, fresh noise comes from ``generator``. Each row's
    draw depends on its own logits, masks and noise only.
    """
    op_i = space.op_index
    # Draw every head under every op's masks at once (there are only four
    # ops, so this beats a second pass), then keep the row of the op drawn.
    # The op row of the mask does not depend on the op (the composer refuses
    # op-conditioned op masks), so every row draws the same op.
    masked = torch.where(masks, logits[:, None], NEG)
    if not greedy and noise is None:
        noise = gumbel(logits.shape, generator)
    scores = masked if noise is None or greedy else masked + noise[:, None]
    drawn = scores.argmax(-1)
    rows = torch.arange(logits.shape[0])
    op = drawn[:, 0, op_i]
    actions = drawn[rows, op]
    sel = masks[rows, op]
    logp = torch.log_softmax(masked[rows, op], dim=-1)
    relevance = space.relevance(actions)
    # Irrelevant heads record their default, so a stored action never names a choice nobody made.
    actions = torch.where(relevance, actions, space.defaults)
    # Freshly drawn actions are legal by construction: no need for score()'s check.
    log_prob, entropy = _score(logp, actions, relevance)
    return Sampled(actions, sel, relevance, log_prob, entropy)


def gumbel(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """Gumbel(0, 1) noise for Gumbel-max sampling: ``-log(E)`` with ``E ~ Exp(1)``."""
    return torch.empty(shape).exponential_(generator=generator).log_().neg_()
