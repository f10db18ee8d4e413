"""The morphogenetic environment: one episode trains one host, one step is one epoch.

Tamiyo observes training signals, per-slot seed state and every telemetry
field a lever marks observed; it answers with one index per head of the
composed action space. The observation layout and the reward are defined
here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from esper_kernel.compose.actions import Decision
from esper_kernel.compose.masks import MaskView
from esper_kernel.compose.registry import Registry
from esper_kernel.compose.stages import Stage
from esper_kernel.compose.watch import LeverWatch
from esper_kernel.data.taskplugins import HostShape, build_data, find_task
from esper_kernel.data.tasks import TaskData, TaskError, check_built
from esper_kernel.episode import divergence, observation
from esper_kernel.episode.heads import blueprints_of
from esper_kernel.episode.heads import build_registry as build_registry  # re-exported: callers find it here
from esper_kernel.episode.heads import union_catalogue as union_catalogue
from esper_kernel.grow.blueprints import build_seed
from esper_kernel.grow.hosts import CNN1DHost, CNNHost, CNNHostConfig, Host, TransformerHost
from esper_kernel.grow.lifecycle import EpochMeasure, Lifecycle
from esper_kernel.grow.sizing import HostSize, measure_host
from esper_kernel.grow.training import EpochResult, EpochRunner, compute_fields
from esper_kernel.infra.devices import resolve_device
from esper_kernel.infra.errors import EsperError, PluginError
from esper_kernel.settings.bounds import MAX_HOST_PARAMS, MAX_TRAIN_MEMORY
from esper_kernel.settings.config import EnvConfig as EnvConfig  # re-exported: callers have always found it here
from esper_kernel.settings.config import LifecycleConfig

#: What a checkpoint keeps of the last epoch: what the observation reads.
_LAST_KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "host_grad_norm")


def cnn_host_config(config: EnvConfig, num_classes: int) -> CNNHostConfig:
    """The config of ``config``'s (image) task's starting host, with the user's width if given."""
    host = find_task(config.task).host(HostShape(num_classes), config.slots, config.width)
    if not isinstance(host.config, CNNHostConfig):
        raise EsperError(f"task {config.task!r} has a {host.topology} host, not an image CNN")
    return host.config


def load_task(config: EnvConfig, seed: int) -> TaskData:
    """``config``'s task data; ``--train-size``/``--val-size`` given to a task that cannot take them are refused."""
    sizes: dict[str, Any] = {}
    if config.train_size is not None:
        sizes["n_train"] = config.train_size
    if config.val_size is not None:
        sizes["n_val"] = config.val_size
    data_dir = Path(config.data_dir) if config.data_dir else None
    info = find_task(config.task)
    try:
        data = build_data(info, seed, data_dir, sizes)
    except TaskError as exc:
        # A missing --data-dir or a bad data file is the user's to fix: one line, not a traceback.
        raise EsperError(str(exc)) from exc
    return check_built(data, f"task {info.name!r} ({info.distribution})")


def task_on(task: TaskData, device: torch.device) -> TaskData:
    """``task`` with its tensors on ``device``."""
    return attrs.evolve(
        task,
        train_x=task.train_x.to(device),
        train_y=task.train_y.to(device),
        val_x=task.val_x.to(device),
        val_y=task.val_y.to(device),
    )


def make_host(config: EnvConfig, task: TaskData) -> Host:
    """The episode's host for ``config`` and ``task``: the task plugin's, at ``config.width`` if given."""
    info = find_task(config.task)
    host = info.host(HostShape.of(task), config.slots, config.width)
    if not isinstance(host, CNNHost | CNN1DHost | TransformerHost):
        raise PluginError(
            f"task {info.name!r} ({info.distribution}) built a {type(host).__name__} host, "
            "not one of esper_kernel.grow.hosts' (CNNHost, CNN1DHost, TransformerHost)"
        )
    return host


def size_host(config: EnvConfig, task: TaskData) -> HostSize:
    """The starting host's size, measured before it is built; a host over the limits is refused."""
    size = measure_host(
        lambda: make_host(config, task),
        task.train_x[:1],
        config.batch_size,
        max_params=MAX_HOST_PARAMS,
        max_memory=MAX_TRAIN_MEMORY,
        data_bytes=sum(t.numel() * t.element_size() for t in (task.train_x, task.train_y, task.val_x, task.val_y)),
        val_size=len(task.val_y),
    )
    if (problem := size.problem(config.slots, config.width)) is not None:
        raise EsperError(problem)
    return size


def add_fossils(host: Host, fossils: Sequence[tuple[int, str, float]]) -> None:
    """Build fresh ``(slot, blueprint, width_scale)`` modules into ``host`` as fossils (full weight, no gate)."""
    slots = host.seed_slots()
    for slot, blueprint, width_scale in fossils:
        if not 0 <= slot < len(slots):
            raise EsperError(f"fossil in slot {slot}: the host has {len(slots)} slots")
        slots[slot].fossils.append(build_seed(host.topology, blueprint, slots[slot].dim, width_scale))


def env_registries(registry: Registry, n_envs: int) -> list[Registry]:
    """``registry`` for the first of ``n_envs`` envs, a clone for each other: every env its own quarantines,
    knob records and hook times, so no env's lever failure or hook time is another's."""
    return [registry, *(registry.clone() for _ in range(n_envs - 1))]


def observation_names(registry: Registry, n_slots: int) -> tuple[str, ...]:
    """The meaning of every observation entry, in order: the schema :mod:`esper_kernel.episode.observation` declares."""
    return observation.names(blueprints_of(registry), n_slots, [f.key for f in registry.observed_fields()])


@attrs.frozen
class DecisionView:
    """What a policy may read of one env besides its observation and masks: plain values, no live objects."""

    epoch: int
    epochs: int
    #: Epochs since validation accuracy last improved.
    plateau: int
    stages: tuple[Stage, ...]
    #: Per slot, the measured counterfactual contributions of its live seed, oldest first (empty: none).
    contributions: tuple[tuple[float, ...], ...]
    blueprints: tuple[str, ...]
    #: Per slot, the blueprint of its live seed (None: no live seed).
    live_blueprints: tuple[str | None, ...] = ()
    #: Every seed that has left its slot, oldest first: (slot, blueprint, fossilized, measured contributions).
    past: tuple[tuple[int, str, bool, tuple[float, ...]], ...] = ()


@attrs.define
class StepResult:
    obs: torch.Tensor
    reward: float
    done: bool
    epoch: EpochResult


class MorphoEnv:
    """One host, its slots and lifecycle, stepped one epoch per decision."""

    def __init__(self, config: EnvConfig, registry: Registry, task: TaskData, log: Any, index: int = 0) -> None:
        self.config = config
        self.registry = registry
        self.device = resolve_device(config.device)
        # The whole (small) dataset moves once, so no batch is copied during training.
        self.task = task if task.train_x.device == self.device else task_on(task, self.device)
        #: Chance accuracy is 1 / n_classes (the divergence guard).
        self.n_classes = HostShape.of(task).num_classes
        self.index = index
        self.base_log = log.bind(env=index)
        self.log = self.base_log
        self.n_slots = config.slots
        # Read once: the topology is looked up through the task plugins' entry points (~25 ms a call).
        self.topology = config.topology
        # The blueprint head's choices (one topology's catalogue, or several tasks' union): the observation's one-hot.
        self.blueprints = blueprints_of(registry)
        self.observed = registry.observed_fields()
        self.obs_dim = len(observation_names(registry, self.n_slots))
        self.episode = -1
        self.epoch = 0
        self.lifecycle: Lifecycle
        self.runner: EpochRunner
        self.host: Host
        #: Modules built into the host at every reset, as fossils present from epoch 0:
        #: ``(slot, blueprint, width_scale)``. The from-scratch control trains a grown architecture this way.
        self.scratch_fossils: tuple[tuple[int, str, float], ...] = ()
        #: Where the lines a person should see go (``esper run`` prints them); an env in a worker has none,
        #: and what it would say is in its events and :meth:`lever_report`.
        self.warn: Callable[[str], None] = _nobody
        #: Quarantines, compile contradictions, hook time: the same in esper run, train and eval.
        self.levers = LeverWatch(
            registry, config.compile, lambda: (self.log, self.index, self.episode, self.epoch), lambda m: self.warn(m)
        )

    # -- episode -------------------------------------------------------------

    def reset(self, seed: int, episode: int = 0) -> torch.Tensor:
        """Start an episode with a fresh host; everything random derives from ``seed``."""
        torch.manual_seed(seed)
        self.episode = episode
        self.epoch = 0
        self.log = self.base_log.bind(episode=episode, epoch=0)
        cfg = self.config
        self.host = make_host(cfg, self.task)
        add_fossils(self.host, self.scratch_fossils)
        self.host.to(self.device)
        self.base_params = sum(p.numel() for p in self.host.parameters())
        self.lifecycle = Lifecycle(
            self.host, self.registry, LifecycleConfig(max_epochs=cfg.epochs, host_lr=cfg.host_lr), log=self.log
        )
        compiled = torch.compile(self.host) if cfg.compile else None
        self.runner = EpochRunner(
            self.lifecycle,
            self.task,
            batch_size=cfg.batch_size,
            generator=torch.Generator().manual_seed(seed),
            compiled=compiled,
            amp=cfg.amp,
        )
        self.acc_history: list[float] = []
        self.loss_history: list[float] = []
        self.last: EpochResult | None = None
        self.best = 0.0
        self.plateau = 0
        self.fields: dict[str, list[float | None]] = {}
        #: The last decision that chose more than its op: its choices and what was legal (``esper eval`` keeps it).
        self.last_choice: dict[str, dict[str, Any]] | None = None
        #: The divergence guard said this episode's host sat at chance with no seed to cull.
        self._pinned_reported = False
        self.levers.episode_started()
        return self.observe()

    def lever_report(self) -> dict[str, Any]:
        """What the levers did this episode (:meth:`~esper_kernel.compose.watch.LeverWatch.report`)."""
        return self.levers.report()

    @property
    def done(self) -> bool:
        return self.epoch >= self.config.epochs

    def step(self, actions: torch.Tensor) -> StepResult:
        """Apply one decision (``[n_heads]`` indices), train one epoch, observe, reward."""
        if self.done:
            raise RuntimeError(f"env {self.index}: episode {self.episode} is over; call reset()")
        space = self.registry.space
        self.log = self.base_log.bind(episode=self.episode, epoch=self.epoch)
        self.lifecycle.log = self.log
        self.levers.step_started()
        decision = space.decode(actions[None, :])[0]
        legal = self.legal_choices(decision) if sum(decision.relevant.values()) > 1 else None
        self.last_choice = (
            None if legal is None else {"choices": {h: decision.choices[h] for h in legal}, "legal": legal}
        )
        self.log.info(
            "decision",
            op=decision.op.name,
            choices=decision.choices,
            relevant=decision.relevant,
            **({} if legal is None else {"legal": legal}),
        )
        self.lifecycle.apply(decision, self.epoch)
        prev_acc = self.last.val_accuracy if self.last else None
        result = self.runner.run_epoch(self.epoch, observe=self._observe_fields)
        self.last = result
        self.acc_history.append(result.val_accuracy)
        self.loss_history.append(result.val_loss)
        if result.val_accuracy > self.best + 1e-4:
            self.best = result.val_accuracy
            self.plateau = 0
        else:
            self.plateau += 1
        self.log.info(
            "epoch.completed",
            train_loss=result.train_loss,
            train_accuracy=result.train_accuracy,
            val_loss=result.val_loss,
            val_accuracy=result.val_accuracy,
            params=self.param_count(),
            stages=[s.name for s in self.lifecycle.stages],
            **self.fields,
        )
        self._guard_divergence()
        self.epoch += 1
        self.levers.step_ended(self.done)
        reward = self.reward(prev_acc, result.val_accuracy)
        return StepResult(self.observe(), reward, self.done, result)

    def _guard_divergence(self) -> None:
        """Cull the seed to blame when the host has sat at chance (esper_kernel.episode.divergence)."""
        lc = self.lifecycle
        since = divergence.last_divergence(lc.history)
        found = divergence.find_divergence(
            self.acc_history, self.n_classes, lc.live_seeds(), since, n_val=len(self.task.val_y)
        )
        if found is None:
            self._report_pinned_host(since)
            return
        self.log.warning("seed.diverged", **attrs.asdict(found))
        self.registry.warn_once(f"seed.diverged:{found.seed_id}", found.describe())
        lc.cull(found.slot, self.epoch, reason=divergence.REASON)

    def _report_pinned_host(self, since: int) -> None:
        """A host at chance with nobody to cull: said once an episode, as an event and a console line."""
        if self._pinned_reported:
            return
        lc = self.lifecycle
        pinned = divergence.find_pinned_host(
            self.acc_history, self.n_classes, lc.live_seeds(), lc.history, since, n_val=len(self.task.val_y)
        )
        if pinned is not None:
            self._pinned_reported = True
            self.log.warning("host.diverged", **attrs.asdict(pinned))
            self.registry.warn_once(f"host.diverged:{self.episode}", pinned.describe())

    def _observe_fields(self, result: EpochResult) -> None:
        # Read for the epoch just trained, before on_epoch sets the next epoch's state.
        self.fields = compute_fields(self.registry, self.lifecycle, result, log=self.log)

    def legal_choices(self, decision: Decision) -> dict[str, list[str]]:
        """What each relevant head but the op could have chosen, under the decision's op, in this state.

        Logged with every decision that chose more than its op, so a report can
        test a policy's choices against uniform-over-legal, not uniform-over-all.
        """
        space = self.registry.space
        mask = EnvBatch([self]).masks()[0, space.choice_index("op", decision.choices["op"])]
        return {
            h.name: [c for c, ok in zip(h.spec.choices, mask[i].tolist(), strict=False) if ok]
            for i, h in enumerate(space.heads)
            if h.name != "op" and decision.relevant.get(h.name, False)
        }

    def reward(self, prev_acc: float | None, acc: float) -> float:
        """The reward, defined here only.

        ``r_t = (acc_t - acc_{t-1}) - param_rent * growth_t`` where accuracies
        are validation accuracies in [0, 1] (``acc_{-1}`` is chance level, so the
        first epoch is rewarded for learning at all) and ``growth_t`` is the
        number of parameters grown over the base host divided by the base host's.
        The last step adds the final validation accuracy as a terminal term, so
        an episode's return favours ending well over merely improving.
        """
        base = 1.0 / self.task.num_classes if prev_acc is None else prev_acc
        growth = (self.param_count() - self.base_params) / self.base_params
        r = (acc - base) - self.config.param_rent * growth
        if self.done:
            r += acc
        return r

    def param_count(self) -> int:
        return sum(p.numel() for p in self.host.parameters())

    # -- observation -----------------------------------------------------------

    def observe(self) -> torch.Tensor:
        out = observation.episode_values(self)
        for slot in range(self.n_slots):
            out += observation.slot_values(self, slot, self.lifecycle.seeds[slot])
            for f in self.observed:
                v = self.fields.get(f.key, [None] * self.n_slots)[slot]
                out.append(0.0 if v is None else float(v))
        return torch.tensor(out, dtype=torch.float32)

    # -- checkpointing -----------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        last = self.last
        return {
            "episode": self.episode,
            "epoch": self.epoch,
            "acc_history": list(self.acc_history),
            "loss_history": list(self.loss_history),
            "best": self.best,
            "plateau": self.plateau,
            "base_params": self.base_params,
            "fields": dict(self.fields),
            "last": None if last is None else {k: getattr(last, k) for k in _LAST_KEYS},
            "generator": self.runner.generator.get_state(),
            # One table, as before the runner owned the optimizer: checkpoints keep their format.
            "lifecycle": {**self.lifecycle.state_dict(), **self.runner.optimizer.state_dict()},
            # A quarantine lasts its episode, so a resumed episode keeps its levers out.
            "quarantined": self.levers.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore into an env just ``reset`` with the same seed and config."""
        self.episode = int(state["episode"])
        self.epoch = int(state["epoch"])
        self.acc_history = list(state["acc_history"])
        self.loss_history = list(state["loss_history"])
        self.best = float(state["best"])
        self.plateau = int(state["plateau"])
        self.base_params = int(state["base_params"])
        self.fields = dict(state["fields"])
        if state["last"] is not None:
            saved = state["last"]
            # By name; a checkpoint from before kept the same values as a list in _LAST_KEYS' order.
            last = dict(saved) if isinstance(saved, dict) else dict(zip(_LAST_KEYS, saved, strict=True))
            measure = EpochMeasure(int(last["epoch"]), last["val_accuracy"], last["host_grad_norm"])
            self.last = EpochResult(**last, measure=measure)
        self.runner.generator.set_state(state["generator"])
        self.lifecycle.load_state_dict(state["lifecycle"])
        self.runner.optimizer.load_state_dict(state["lifecycle"])
        self.levers.load_state_dict(state.get("quarantined", []))
        self.log = self.base_log.bind(episode=self.episode, epoch=self.epoch)
        self.lifecycle.log = self.log

    def decision_view(self) -> DecisionView:
        seeds = self.lifecycle.seeds
        return DecisionView(
            epoch=self.epoch,
            epochs=self.config.epochs,
            plateau=self.plateau,
            stages=tuple(self.lifecycle.stages),
            contributions=tuple(
                () if s is None else tuple(c for c in s.metrics.contribution if c is not None) for s in seeds
            ),
            blueprints=self.blueprints,
            live_blueprints=tuple(None if s is None else s.blueprint for s in seeds),
            past=tuple(
                (s.slot, s.blueprint, s.stage is Stage.FOSSILIZED, _measured(s.metrics.contribution))
                for s in self.lifecycle.history
            ),
        )

    def mask_state(self) -> tuple[int, list[int], list[bool]]:
        return self.epoch, [int(s) for s in self.lifecycle.stages], self.lifecycle.fossilize_ok()


def _nobody(_msg: str) -> None:
    pass


def _measured(contributions: Sequence[float | None]) -> tuple[float, ...]:
    return tuple(c for c in contributions if c is not None)


class EnvBatch:
    """Several envs stepped together, sharing one registry (and so one mask call per step)."""

    def __init__(self, envs: Sequence[MorphoEnv]) -> None:
        self.envs = list(envs)
        self.registry = self.envs[0].registry
        self.config = self.envs[0].config
        self.topology = self.envs[0].topology

    def reset(self, seeds: Sequence[int], episode: int = 0) -> torch.Tensor:
        return torch.stack([env.reset(s, episode) for env, s in zip(self.envs, seeds, strict=True)])

    def observe(self) -> torch.Tensor:
        return torch.stack([env.observe() for env in self.envs])

    def mask_view(self) -> MaskView:
        states = [env.mask_state() for env in self.envs]
        return MaskView(
            space=self.registry.space,
            n_envs=len(self.envs),
            n_slots=self.config.slots,
            topology=self.topology,
            max_epochs=self.config.epochs,
            epoch=torch.tensor([s[0] for s in states], dtype=torch.long),
            slot_stage=torch.tensor([s[1] for s in states], dtype=torch.long),
            fossilize_ok=torch.tensor([s[2] for s in states], dtype=torch.bool),
            blueprints=self.envs[0].blueprints,
        )

    def masks(self) -> torch.Tensor:
        """``[n_envs, n_ops, n_heads, max_choices]``: every lever's mask, ANDed.

        Envs with registries of their own (each its own quarantines) are composed one by one:
        a mask is a per-env function of each env's state, so the rows are the same.
        """
        if all(env.registry is self.registry for env in self.envs):
            return self.registry.masks(self.mask_view())
        return torch.cat([EnvBatch([env]).masks() for env in self.envs])

    def step(self, actions: torch.Tensor) -> list[StepResult]:
        return [env.step(actions[i]) for i, env in enumerate(self.envs)]
