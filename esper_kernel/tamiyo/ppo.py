"""The learned Tamiyo: an actor-critic over the composed, masked action space.

Nothing about the heads is hard-coded: one linear layer produces
``n_heads * max_choices`` padded logits for whatever the registry composed,
and the masked sampler in :mod:`esper_kernel.episode.sampling` does the rest.
A saved policy records the heads, observation schema and levers it was
trained with, so loading it under a different lever set fails with a message
naming the difference instead of silently steering the wrong heads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import nn

from esper_kernel.compose.actions import ActionSpace
from esper_kernel.compose.registry import Registry
from esper_kernel.episode.sampling import Sampled, gumbel, pin_masks, sample, score
from esper_kernel.infra.checkpoint import unreadable
from esper_kernel.infra.files import write_atomic
from esper_kernel.tamiyo.fit import ABSENT, Fit, apply_kin, fit, unseen
from esper_kernel.tamiyo.stamp import PRETRAINED as PRETRAINED  # re-exported: their old home
from esper_kernel.tamiyo.stamp import HeadStamp, LeverStamp, check_stamp, head_stamps, lever_stamps
from esper_kernel.tamiyo.stamp import PolicyLoadError as PolicyLoadError
from esper_kernel.tamiyo.stamp import PolicyMismatchError as PolicyMismatchError
from esper_kernel.tamiyo.stamp import pretrained_path as pretrained_path
from esper_kernel.tamiyo.stamp import trained_on as trained_on

if TYPE_CHECKING:
    from esper_kernel.episode.env import EnvBatch

POLICY_FORMAT = "esper.policy/1"
#: Normalised observations are clipped: a rare huge loss must not saturate the trunk.
OBS_CLIP = 5.0


class RunningNorm(nn.Module):
    """Running mean and variance of observations, kept as buffers so they are saved with the weights."""

    mean: torch.Tensor
    var: torch.Tensor
    count: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        # A tiny prior count keeps the first update from dividing by zero.
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge a batch ``[N, dim]`` into the statistics (Chan et al.'s parallel update)."""
        x = x.reshape(-1, self.mean.shape[0]).to(torch.float64)
        n = x.shape[0]
        if n == 0:
            return
        b_mean = x.mean(0)
        b_var = x.var(0, unbiased=False)
        total = self.count + n
        delta = b_mean - self.mean
        self.mean += delta * n / total
        m2 = self.var * self.count + b_var * n + delta.pow(2) * self.count * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        std = (self.var + 1e-8).sqrt()
        out = (x.to(torch.float64) - self.mean) / std
        return out.clamp(-OBS_CLIP, OBS_CLIP).to(torch.float32)


def _layer(inp: int, out: int, gain: float) -> nn.Linear:
    lin = nn.Linear(inp, out)
    nn.init.orthogonal_(lin.weight, gain)
    nn.init.zeros_(lin.bias)
    return lin


class PPOPolicy(nn.Module):
    """Observation normaliser, MLP trunk, one padded-logits layer and a value head.

    ``act`` answers the :class:`~esper_kernel.tamiyo.policies.Policy` protocol
    and keeps the value estimate of its last call in :attr:`last_value`.
    Sampling uses the policy's own generator, so seeding the environments
    (which reseeds torch's global RNG) never changes which actions it draws.
    """

    def __init__(
        self,
        space: ActionSpace,
        obs_dim: int,
        hidden: int = 64,
        *,
        obs_names: Sequence[str] = (),
        levers: Sequence[LeverStamp] = (),
        hyperparameters: Mapping[str, Any] | None = None,
        seed: int = 0,
        pinned: Mapping[str, str] | None = None,
        trained_on: Mapping[str, Any] | None = None,
        heads: Sequence[HeadStamp] | None = None,
        fit: Fit | None = None,
    ) -> None:
        super().__init__()
        if obs_names and len(obs_names) != obs_dim:
            raise ValueError(f"{len(obs_names)} observation names for an observation of size {obs_dim}")
        self.space = space
        self.obs_dim = obs_dim
        self.hidden = hidden
        #: The policy's own heads: the active space's, or (with ``fit``) the ones it was trained with.
        self.heads = tuple(heads) if heads is not None else head_stamps(space)
        #: Heads new to the policy (levers it was not trained with), each held at its default choice.
        self.defaulted: dict[str, str] = dict(fit.defaulted) if fit is not None else {}
        #: New blueprints drawn as their family's missing ones (``family:``); the rest of the new choices
        #: (:attr:`unseen`) are never drawn.
        self.kin = fit.kin if fit is not None else ()
        #: Per head, the active choices new to the policy (another topology's blueprints): never drawn.
        self.unseen: dict[str, tuple[str, ...]] = (
            unseen(fit, [(h.name, h.choices) for h in self.heads], space) if fit is not None and fit.choices else {}
        )
        moved = fit is not None and not fit.identity
        # An entry with no source reads the zero column appended after the active observation.
        take = [fit.obs_dim if t == ABSENT else t for t in fit.take] if fit is not None and moved else None
        self._take = torch.tensor(take) if take is not None else None
        self._pad_obs = fit is not None and moved and ABSENT in fit.take
        self.obs_names = tuple(obs_names)
        self.levers = tuple(levers)
        self.hyperparameters: dict[str, Any] = dict(hyperparameters or {})
        #: Heads held at one choice (head -> choice): never sampled, never learned.
        self.pinned: dict[str, str] = dict(pinned or {})
        held = {**self.pinned, **self.defaulted}
        self._pins = {space.names.index(h): space.choice_index(h, c) for h, c in held.items()}
        #: What the policy was trained on (task, epochs, slots): a run on anything else is refused.
        self.trained_on: dict[str, Any] = dict(trained_on or {})
        # The network's own layout; :meth:`_spread` moves it into the active space's.
        self.n_heads = len(self.heads)
        self.max_choices = max(h.size for h in self.heads)
        self._build(obs_dim, hidden, seed)
        self._gather: torch.Tensor | None = None
        self._never: torch.Tensor | None = None
        self._fresh: torch.Tensor | None = None
        if fit is not None and moved:
            self._gather, self._never, self._fresh = self._moves(fit)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.greedy = False
        self.last_value: torch.Tensor | None = None

    def _build(self, obs_dim: int, hidden: int, seed: int) -> None:
        init = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            # Weight init draws from the global RNG; fork it so building a policy has no side effects.
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=init)))
            self.norm = RunningNorm(obs_dim)
            self.trunk = nn.Sequential(
                _layer(obs_dim, hidden, math.sqrt(2)),
                nn.Tanh(),
                _layer(hidden, hidden, math.sqrt(2)),
                nn.Tanh(),
            )
            # A small gain starts every head near uniform over its legal choices.
            self.logits_layer = _layer(hidden, self.n_heads * self.max_choices, 0.01)
            self.value_layer = _layer(hidden, 1, 1.0)

    @classmethod
    def for_registry(
        cls,
        registry: Registry,
        obs_names: Sequence[str],
        hidden: int = 64,
        hyperparameters: Mapping[str, Any] | None = None,
        seed: int = 0,
        pinned: Mapping[str, str] | None = None,
        trained_on: Mapping[str, Any] | None = None,
        reads: Sequence[str] | None = None,
    ) -> PPOPolicy:
        """A fresh policy for ``registry``'s heads and the observation ``obs_names``; with ``reads``, it reads
        only those entries of it (a policy over several tasks leaves out what is on a task's own scale)."""
        own = tuple(obs_names if reads is None else reads)
        fit = None
        if reads is not None:
            take = tuple(obs_names.index(n) for n in own)
            n = registry.space.n_heads
            fit = Fit(tuple(range(n)), take, (), n, len(obs_names))
        return cls(
            registry.space,
            len(own),
            hidden,
            obs_names=own,
            levers=lever_stamps(registry),
            hyperparameters=hyperparameters,
            seed=seed,
            pinned=pinned,
            trained_on=trained_on,
            fit=fit,
        )

    def own_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """The entries of the active observation ``[..., D]`` the policy reads, in its order (what it normalises)."""
        if self._take is None:
            return obs
        if self._pad_obs:
            obs = torch.cat([obs, obs.new_zeros(*obs.shape[:-1], 1)], -1)
        return obs.index_select(-1, self._take)

    def _moves(self, fit: Fit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Where each active (head, choice) logit comes from in the policy's own flat logits (the last
        index: a zero), the active choices it never draws (choices new to it, of heads it knows, but
        for :attr:`kin`), and every choice new to it (it has no noise of its own to draw them with)."""
        zero = self.n_heads * self.max_choices
        gather = torch.full((self.space.n_heads, self.space.max_choices), zero, dtype=torch.long)
        new = torch.zeros(self.space.n_heads, self.space.max_choices, dtype=torch.bool)
        for h, a in enumerate(fit.place):
            own = fit.choices[h] if fit.choices else tuple(range(len(self.space.heads[a].spec.choices)))
            for j, c in enumerate(own):
                if c == ABSENT:
                    new[a, j] = True
                else:
                    gather[a, j] = h * self.max_choices + c
        never = new.clone()
        never[[k.head for k in fit.kin], [k.choice for k in fit.kin]] = False
        return gather.flatten(), never, new

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The active observation ``[B, D]`` -> padded logits ``[B, H, C]`` of the active heads and values ``[B]``."""
        z = self.trunk(self.norm(self.own_obs(obs)))
        logits = self.logits_layer(z).view(-1, self.n_heads, self.max_choices)
        return apply_kin(self._spread(logits), logits, self.kin), self.value_layer(z).squeeze(-1)

    def _spread(self, own: torch.Tensor) -> torch.Tensor:
        """``[..., own heads, own choices]`` -> ``[..., active heads, active choices]``, zeros for heads new to it.

        Those are held at one choice, so their zeros are never drawn from.
        """
        if self._gather is None:
            return own
        flat = torch.cat([own.flatten(-2), own.new_zeros(*own.shape[:-2], 1)], -1)
        return flat.index_select(-1, self._gather).view(*own.shape[:-2], self.space.n_heads, self.space.max_choices)

    def _known(self, masks: torch.Tensor) -> torch.Tensor:
        """``masks`` without the choices new to the policy, except where nothing else is legal."""
        if self._never is None or not bool(self._never.any()):
            return masks
        kept = masks & ~self._never
        return torch.where(kept.any(-1, keepdim=True), kept, masks)

    @torch.no_grad()
    def act_with_value(
        self, obs: torch.Tensor, masks: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[Sampled, torch.Tensor]:
        """Draw an action per row (with ``noise`` from :meth:`draw_noise` where given) and its value."""
        logits, value = self(obs)
        if noise is None and not self.greedy and self._gather is not None:
            # The noise of the policy's own heads, as it draws without the new levers: they change no draw.
            noise = self._spread(gumbel((obs.shape[0], self.n_heads, self.max_choices), self.generator))
        masks = self._known(pin_masks(masks, self._pins))
        if noise is not None and self._fresh is not None and bool(self._fresh.any()):
            # Where only choices new to it are legal, it draws among them as among equals, not the first one;
            # a kin choice has no noise of its own either.
            noise = torch.where(self._fresh, gumbel(tuple(noise.shape), self.generator), noise)
        sampled = sample(self.space, logits, masks, self.generator, self.greedy, noise)
        return sampled, value

    def draw_noise(self, steps: int, rows: int) -> torch.Tensor | None:
        """Sampling noise for ``steps`` decisions of ``rows`` envs, ``[steps, rows, H, C]`` (None when greedy).

        Drawn step by step from the policy's generator, exactly as ``steps``
        calls of :meth:`act_with_value` without noise would draw it, so a
        rollout can hand each env its own step's noise in whatever order the
        envs come back and still make the draws a lock-step rollout makes.
        """
        if self.greedy:
            return None
        shape = (rows, self.n_heads, self.max_choices)
        return self._spread(torch.stack([gumbel(shape, self.generator) for _ in range(steps)]))

    def reseed(self, seed: int) -> None:
        """Draw from now on from a generator seeded with ``seed`` (an episode's seed, see the catalogue).

        A sampled policy then draws other noise on every episode seed, and the same noise on a rerun.
        """
        self.generator = torch.Generator().manual_seed(seed)

    def run_state(self) -> dict[str, Any]:
        # The weights are the policy file; only the sampler's place in its noise is the run's.
        return {"generator": self.generator.get_state()}

    def load_run_state(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def act(self, obs: torch.Tensor, masks: torch.Tensor, envs: EnvBatch | None = None) -> Sampled:
        sampled, value = self.act_with_value(obs, masks)
        self.last_value = value
        return sampled

    def evaluate(
        self, obs: torch.Tensor, actions: torch.Tensor, masks_sel: torch.Tensor, relevance: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-prob ``[B]``, per-head entropy ``[B, H]`` and value ``[B]`` of stored actions.

        ``masks_sel`` and ``relevance`` must be the ones recorded at rollout
        time; :func:`~esper_kernel.episode.sampling.score` raises
        :class:`~esper_kernel.infra.errors.MaskError` if an action is illegal under them.
        """
        logits, value = self(obs)
        log_prob, entropy = score(self.space, logits, masks_sel, actions, relevance)
        return log_prob, entropy, value


# -- files -------------------------------------------------------------------


def policy_record(policy: PPOPolicy) -> dict[str, Any]:
    """Everything a policy file holds, as plain data ``torch.load(weights_only=True)`` accepts."""
    return {
        "format": POLICY_FORMAT,
        "state_dict": {k: v.detach().clone() for k, v in policy.state_dict().items()},
        "obs_dim": policy.obs_dim,
        "obs_names": list(policy.obs_names),
        "hidden": policy.hidden,
        "heads": [{"name": h.name, "size": h.size, "choices": list(h.choices)} for h in policy.heads],
        "levers": [attrs.asdict(lv) for lv in policy.levers],
        "hyperparameters": dict(policy.hyperparameters),
        "pinned": dict(policy.pinned),
        "trained_on": dict(policy.trained_on),
    }


def save_policy(policy: PPOPolicy, path: Path | str) -> Path:
    """Write the policy atomically: a crash mid-write never leaves a truncated file at ``path``."""
    record = policy_record(policy)
    return write_atomic(path, lambda f: torch.save(record, f))


def _describe_levers(levers: Sequence[LeverStamp]) -> str:
    return "[" + ", ".join(str(lv) for lv in levers) + "]"


def _head_differences(saved: Sequence[HeadStamp], active: Sequence[HeadStamp]) -> list[str]:
    have = {h.name: h for h in active}
    was = {h.name: h for h in saved}
    out = []
    for h in saved:
        if h.name not in have:
            out.append(f"head {h.name!r} is not in the active action space")
        elif h.choices != have[h.name].choices:
            out.append(f"head {h.name!r} had choices {list(h.choices)}, now {list(have[h.name].choices)}")
    out += [f"head {h.name!r} is new" for h in active if h.name not in was]
    if not out and [h.name for h in saved] != [h.name for h in active]:
        out.append(f"heads are in another order: {[h.name for h in saved]} vs {[h.name for h in active]}")
    return out


@attrs.frozen
class _Record:
    """A policy file's contents, checked for shape but not yet against a registry."""

    heads: tuple[HeadStamp, ...]
    levers: tuple[LeverStamp, ...]
    obs_dim: int
    obs_names: tuple[str, ...]
    hidden: int
    state: dict[str, Any]
    hyperparameters: dict[str, Any]
    pinned: dict[str, str]
    trained_on: dict[str, Any]


def stamped_epochs(path: Path | str) -> int | None:
    """The episode length a policy file says it was trained on (None for a file without that stamp)."""
    epochs = _read_record(Path(path)).trained_on.get("epochs")
    return int(epochs) if epochs is not None else None


def stamped_hyperparameters(path: Path | str) -> dict[str, Any]:
    """The training settings a policy file was stamped with (those of a file from before a setting lack it)."""
    return _read_record(Path(path)).hyperparameters


def _read_record(path: Path) -> _Record:
    try:
        rec = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PolicyLoadError(f"policy file {str(path)!r} does not exist") from None
    except Exception as exc:
        raise PolicyLoadError(f"policy file {str(path)!r} could not be read: {unreadable(path, exc)}") from exc
    if not isinstance(rec, dict) or rec.get("format") != POLICY_FORMAT:
        raise PolicyLoadError(f"{str(path)!r} is not an Esper policy file (expected format {POLICY_FORMAT})")
    try:
        return _Record(
            heads=tuple(HeadStamp(h["name"], tuple(h["choices"])) for h in rec["heads"]),
            levers=tuple(LeverStamp(**lv) for lv in rec["levers"]),
            obs_dim=int(rec["obs_dim"]),
            obs_names=tuple(rec["obs_names"]),
            hidden=int(rec["hidden"]),
            state=rec["state_dict"],
            hyperparameters=dict(rec.get("hyperparameters") or {}),
            pinned={str(k): str(v) for k, v in dict(rec.get("pinned") or {}).items()},
            trained_on=dict(rec.get("trained_on") or {}),
        )
    except (KeyError, TypeError) as exc:
        raise PolicyLoadError(f"policy file {str(path)!r} is incomplete: {type(exc).__name__}: {exc}") from exc


def _problems(
    rec: _Record, registry: Registry, obs_dim: int, obs_names: Sequence[str] | None, extend: bool, families: bool
) -> tuple[Fit | None, list[str]]:
    """How ``rec`` fits the active heads and observation (None: as it is), or every way it does not, in words."""
    names = {h.name: h.choices for h in head_stamps(registry.space)}
    pinned = [f"pinned head {h}={c} is not a choice here" for h, c in rec.pinned.items() if c not in names.get(h, ())]
    if extend and obs_names is not None and rec.obs_names:
        heads = [(h.name, h.choices) for h in rec.heads]
        got, problems = fit(
            heads, [lv.name for lv in rec.levers], rec.obs_names, registry.space, registry.names, obs_names, families
        )
        return (None if got is not None and got.identity else got), problems + pinned
    problems = _head_differences(rec.heads, head_stamps(registry.space))
    if rec.obs_dim != obs_dim:
        problems.append(f"observation size was {rec.obs_dim}, now {obs_dim}")
    elif obs_names is not None and rec.obs_names and tuple(obs_names) != rec.obs_names:
        diff = [f"{a!r}->{b!r}" for a, b in zip(rec.obs_names, obs_names, strict=True) if a != b]
        problems.append(f"observation entries differ: {', '.join(diff[:5])}{' ...' if len(diff) > 5 else ''}")
    return None, problems + pinned


def load_policy(
    path: Path | str,
    registry: Registry,
    obs_dim: int,
    obs_names: Sequence[str] | None = None,
    trained_on: Mapping[str, Any] | None = None,
    *,
    extend: bool = True,
    transfer: bool = False,
    families: bool = False,
) -> PPOPolicy:
    """Load a policy saved by :func:`save_policy` for use under ``registry``.

    With ``obs_names`` given and ``extend``, a policy runs under its levers plus
    others (:mod:`esper_kernel.tamiyo.fit`): the heads new to it are held at
    their defaults (:attr:`PPOPolicy.defaulted`). Raises
    :class:`PolicyMismatchError` if one of its levers is missing, a head's
    choices or an observation entry it read changed (or, without ``extend``,
    any head or observation differs), naming the heads and levers that
    differ; and, when ``trained_on`` is given, if the policy's stamp says it
    was trained on another task (naming both) or slot count (naming
    ``--slots``, the count given and the count it was trained on). With
    ``transfer``, the task is not checked: the policy plays a task it was not
    trained on, its heads' choices matched by name; with ``families`` too, a new blueprint draws as its
    family's blueprints missing there (:mod:`esper_kernel.tamiyo.fit`).
    """
    path = Path(path)
    rec = _read_record(path)
    if trained_on is not None and rec.trained_on:
        check_stamp(path, rec.trained_on, trained_on, transfer)
    got, problems = _problems(rec, registry, obs_dim, obs_names, extend, families)
    if problems:
        raise PolicyMismatchError(
            f"policy {str(path)!r} does not fit the active levers: {'; '.join(problems)}; "
            f"policy was trained with levers {_describe_levers(rec.levers)}; "
            f"active levers are {_describe_levers(lever_stamps(registry))}"
        )
    policy = PPOPolicy(
        registry.space,
        rec.obs_dim if got is not None else obs_dim,
        rec.hidden,
        obs_names=rec.obs_names,
        levers=rec.levers,
        hyperparameters=rec.hyperparameters,
        pinned=rec.pinned,
        trained_on=rec.trained_on,
        heads=rec.heads if got is not None else None,
        fit=got,
    )
    try:
        policy.load_state_dict(rec.state)
    except RuntimeError as exc:
        raise PolicyLoadError(f"policy file {str(path)!r} has weights that do not fit: {exc}") from exc
    return policy
