"""The kernel's configuration classes (attrs), and run configs structured from TOML by cattrs.

A config file mirrors the classes: top-level run keys plus an ``[env]``
table. Unknown keys and wrong types are errors naming the key path, e.g.
``env.epochs: expected int, got str 'ten'``. This module depends on no other
kernel layer above ``tasks``: everything that runs imports its config from here.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs

from esper_kernel.infra.errors import EsperError
from esper_kernel.settings.bounds import (
    CONTRIBUTION_READS,
    LEVER_ERROR_POLICIES,
    MAX_BATCH,
    MAX_CHECKPOINT_EVERY,
    MAX_EPOCHS,
    MAX_EXAMPLES,
    MAX_SEED,
    MAX_SLOTS,
    MAX_WIDTH,
    MIN_SLOTS,
)
from esper_kernel.settings.checks import check_tasks, checked_device_name, lay_tasks
from esper_kernel.settings.checks import env_problems as env_problems  # re-exported: its old home
from esper_kernel.settings.checks import finite_problems as finite_problems
from esper_kernel.settings.declare import (
    COMMANDS,
    Roots,
    SettingField,
    flag_matrix,
    markdown_table,
    range_problems,
    setting,
    settings_of,
    sync_blocks,
    with_flag,
)

C = TypeVar("C")


def config_problems(config: RunConfig) -> list[str]:
    """Every value in ``config`` that ranges alone do not catch, as ``key: what is wrong`` (empty if none)."""
    problems = env_problems(config.env)
    if config.levers is not None:
        names = [n.strip() for n in config.levers]
        if not any(names):
            problems.append(
                "levers: names no lever; leave it out for every installed lever, "
                "or set ESPER_DISABLE_PLUGIN_AUTOLOAD=1 to run with none"
            )
        elif not all(names):
            problems.append(f"levers: has an empty name in {list(config.levers)}")
    if not config.out.strip():
        problems.append("out: is empty")
    if not config.policy.strip():
        problems.append("policy: is empty; use 'heuristic', 'random' or a policy file")
    return problems


class ConfigError(EsperError):
    """A config file or value that cannot be used, with the key path that is wrong."""


@attrs.define
class LifecycleConfig:
    """The lifecycle's own numbers; an episode sets them from its :class:`EnvConfig`."""

    max_epochs: int = 20
    host_lr: float = 0.01
    momentum: float = 0.9
    embargo_epochs: int = 1


#: The default --out of every command: not a directory of its own but a link to the newest
#: output's, so commands run one after another without --out never collide
#: (esper_kernel.commands.outdir).
LATEST = "runs/latest"
OUT_HELP = f"Output directory; {LATEST} (the default): a fresh runs/<time>-<id> that {LATEST} then links to."


@attrs.frozen
class EnvConfig:
    """What one episode is: the task, the host and how long it trains. Every command that trains takes these."""

    task: str = setting(
        "pairs",
        flag="--task",
        help="Task: pairs (the growth task) or any of `esper tasks list`.",
    )
    data_dir: str | None = setting(
        None, flag="--data-dir", path="any", help="Directory (or, for text, a file) the local-data tasks read."
    )
    epochs: int = setting(
        40,
        flag="--epochs",
        lo=1,
        hi=MAX_EPOCHS,
        help="Host epochs in the episode, one decision each (a learned policy's own default: the length it was "
        "trained on).",
    )
    slots: int = setting(
        3, flag="--slots", lo=MIN_SLOTS, hi=MAX_SLOTS, help="Seed slots in the host (CNN blocks or layers)."
    )
    batch_size: int = setting(64, flag="--batch-size", lo=1, hi=MAX_BATCH, help="Host training batch size.")
    #: A size the task cannot take is refused (tasks.md), never silently replaced.
    train_size: int | None = setting(
        None,
        flag="--train-size",
        lo=1,
        hi=MAX_EXAMPLES,
        help="Training examples; unset: the task's own (pairs 1024, mnist1d 4000, text every window).",
    )
    val_size: int | None = setting(
        None,
        flag="--val-size",
        lo=1,
        hi=MAX_EXAMPLES,
        help="Validation examples; unset: the task's own (pairs 512, mnist1d 1000, text the last 10% of windows).",
    )
    width: int | None = setting(
        None,
        flag="--width",
        lo=1,
        hi=MAX_WIDTH,
        help="Width of the task's host (CNN channels, model width); unset: the task's own (esper tasks list).",
    )
    host_lr: float = setting(
        0.05, flag="--host-lr", lo=0.0, lo_open=True, hi=10.0, help="Host SGD learning rate (seeds scale it)."
    )
    #: Sized for the 562-parameter pairs host: the heuristic's seeds carry it to ~5x its size on average, which
    #: costs ~0.35 of return over an episode against the ~0.5 its 25 points of accuracy bring.
    param_rent: float = setting(
        0.002,
        flag="--param-rent",
        lo=0.0,
        hi=1e6,
        help="Reward lost per epoch for each 100% of parameters grown over the base host.",
    )
    compile: bool = setting(
        False, flag="--compile", is_flag=True, help="Run the host under torch.compile (recompiles when seeds change)."
    )
    device: str = setting(
        "cpu",
        flag="--device",
        metavar="cpu|cuda[:N]|auto",
        help="Where the host, batches and accumulators live (auto: CUDA when present).",
        validator=lambda _i, _a, v: checked_device_name(v),
    )
    amp: bool = setting(False, flag="--amp", is_flag=True, help="bf16 autocast for the host's forward pass.")

    @property
    def topology(self) -> str:
        # Imported here: looking a task up must not import torch for a config that is only read.
        from esper_kernel.data.taskplugins import find_task
        from esper_kernel.infra.errors import PluginError

        try:
            return find_task(self.task).task.topology
        except PluginError:
            return "cnn"


def _levers(**how: Any) -> Any:
    # One declaration for the key every config that loads levers has.
    return setting(
        None,
        flag="--levers",
        metavar="A,B",
        csv=str,
        help="Levers to activate (default: every installed one; overrides ESPER_LEVERS).",
        **how,
    )


def _on_lever_error(**how: Any) -> Any:
    # One declaration for the fault policy of every command that plays episodes.
    return setting(
        "stop",
        flag="--on-lever-error",
        choices=LEVER_ERROR_POLICIES,
        help="A lever failing at run time stops the command, or is quarantined for the rest of that episode: "
        "its heads frozen at their defaults, the knobs it wrote restored, its hooks skipped; the episode goes on.",
        **how,
    )


@attrs.frozen
class RunConfig:
    """Everything ``esper run`` needs; the CLI flags override a file's values."""

    env: EnvConfig = attrs.Factory(EnvConfig)
    policy: str = setting(
        "heuristic",
        flag="--policy",
        help="Any policy esper eval accepts (docs/eval.md): heuristic, random, wait, static:N, pretrained (the "
        "policy shipped for the task) or an `esper train` policy file; greedy:pretrained or greedy:FILE plays its "
        "most probable choices; +HEAD=CHOICE forces a lever head.",
    )
    levers: tuple[str, ...] | None = _levers(commands=("run", "eval"))
    seed: int = setting(0, flag="--seed", lo=0, hi=MAX_SEED, help="Seed of everything random in the run.")
    out: str = setting(LATEST, flag="--out", path="dir", help=OUT_HELP)
    allow_graph_breaks: bool = setting(
        False, flag="--allow-graph-breaks", is_flag=True, help="With --compile, run levers that declare BREAKS_GRAPH."
    )
    #: Ten: one checkpoint every epoch, pickled and fsynced, cost 3-4% of a default run; a run killed
    #: between two replays at most nine epochs on resuming, to the same result.
    checkpoint_every: int = setting(
        10,
        flag="--checkpoint-every",
        lo=1,
        hi=MAX_CHECKPOINT_EVERY,
        help="Write checkpoint.pt every this many epochs (and after the first and the last); a run killed in "
        "between resumes from the last one and replays the epochs since, to the same result.",
    )
    on_lever_error: str = _on_lever_error(commands=("run", "eval", "sweep"))


@attrs.frozen
class PPOConfig:
    """PPO's hyperparameters, the ``[ppo]`` table of ``esper train``. ``episodes`` counts episodes over all envs."""

    episodes: int = setting(
        32, flag="--episodes", lo=1, with_resume=True, help="Episodes in all; with --resume, train on to this many."
    )
    n_envs: int = setting(4, flag="--envs", lo=1, help="Envs per rollout.")
    lr: float = setting(3e-3, flag="--lr", lo=0.0, lo_open=True, help="PPO learning rate.")
    #: No discount: an episode is a fixed 40-odd epochs and its rewards telescope to the final accuracy,
    #: so any gamma < 1 pays for early gains over ending well (0.99 taught Tamiyo a fast lr that ends worse).
    gamma: float = setting(1.0, flag=None, lo=0.0, hi=1.0, help="Discount factor.")
    gae_lambda: float = setting(0.95, flag=None, lo=0.0, hi=1.0, help="GAE lambda.")
    clip: float = setting(0.2, flag=None, lo=0.0, lo_open=True, help="PPO ratio clip.")
    update_epochs: int = setting(10, flag="--update-epochs", lo=1, help="PPO passes over each rollout.")
    minibatch_size: int = setting(8, flag="--minibatch-size", lo=1, help="PPO minibatch rows.")
    entropy_coef: float = setting(0.003, flag="--entropy-coef", lo=0.0, help="Entropy bonus weight.")
    value_coef: float = setting(0.5, flag=None, lo=0.0, help="Value loss weight.")
    max_grad_norm: float = setting(0.5, flag=None, lo=0.0, lo_open=True, help="Gradient clipping norm.")
    hidden: int = setting(64, flag="--hidden", lo=1, help="Policy MLP width.")
    seed: int = setting(0, flag="--seed", lo=0, hi=MAX_SEED, help="Seed of the policy and the training episodes.")
    group_size: int = setting(
        4,
        flag="--group-size",
        lo=1,
        help="Envs per rollout sharing one episode seed, each learning relative to the others (1: off).",
    )
    target_kl: float | None = setting(
        0.05, flag=None, lo=0.0, help="Stop an update's passes once the approximate KL exceeds this; unset: never."
    )
    fix_levers: bool = setting(
        False,
        flag="--fix-levers",
        is_flag=True,
        help="Hold every lever head at its default, so only op, slot, blueprint and blend are learned "
        "(the fixed-levers control).",
    )
    contribution: str = setting("value", flag="--contribution", choices=CONTRIBUTION_READS, help=(
        "How a fresh policy reads each seed's counterfactual contribution: value (its size, a difference of "
        "accuracies on the task's own scale) or sign (whether it helps and for how many measurements in a row, "
        "the same on every task up to its validation set's resolution)."))  # fmt: skip
    init_policy: str | None = setting(
        None,
        flag="--init-policy",
        metavar="FILE",
        help="Start from this policy file's weights (same levers and heads), e.g. one trained at another --epochs.",
    )

    def __attrs_post_init__(self) -> None:
        for name in ("episodes", "n_envs", "update_epochs", "minibatch_size", "hidden", "group_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"PPOConfig.{name} must be at least 1, got {getattr(self, name)}")


@attrs.frozen
class TrainConfig:
    """Everything ``esper train`` needs, as a TOML file mirrors it: top-level keys, ``[env]`` and ``[ppo]``."""

    env: EnvConfig = attrs.Factory(EnvConfig)
    ppo: PPOConfig = attrs.Factory(PPOConfig)
    levers: tuple[str, ...] | None = _levers()
    out: str = setting(
        LATEST,
        flag="--out",
        path="dir",
        help=f"Writes policy.pt, best_policy.pt, train_state.pt, events.jsonl and train_summary.json. {OUT_HELP}",
    )
    workers: int = setting(
        0,
        flag="--workers",
        lo=0,
        with_resume=True,
        help="Env worker processes, one intra-op thread each (0: one per usable core; 1: in this process).",
    )
    eval_every: int = setting(
        5,
        flag="--eval-every",
        lo=0,
        help="Evaluate on the held-out seeds every N updates and after the last, keeping best_policy.pt (0: never).",
    )
    eval_seeds: tuple[int, ...] = setting(
        (0, 1), flag="--eval-seeds", metavar="A,B", csv=int, help="Held-out episode seeds to evaluate on."
    )
    on_lever_error: str = _on_lever_error()
    #: Train one policy over several tasks: each a ``[[tasks]]`` table of ``[env]`` keys laid over ``[env]``
    #: (empty: ``[env]``'s task alone). See :meth:`task_envs`.
    tasks: tuple[dict[str, Any], ...] = ()

    def __attrs_post_init__(self) -> None:
        for name in ("workers", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.tasks:
            self.task_envs()  # each table's keys and values, named, at load time
            check_tasks(len(self.tasks), self.ppo.n_envs, self.ppo.group_size, self.ppo.episodes, self.eval_every)

    def task_envs(self) -> tuple[EnvConfig, ...]:
        """The env of each task trained on: ``[env]``, with each ``[[tasks]]`` table's keys over it.

        ``epochs`` and ``slots`` stay ``[env]``'s: one rollout has one length, and the observation one layout.
        """
        if not self.tasks:
            return (self.env,)
        known = {a.name for a in attrs.fields(EnvConfig)}
        envs: tuple[EnvConfig, ...] = lay_tasks(self.tasks, converter.unstructure(self.env), known, _env_table)
        return envs


def _env_table(data: dict[str, Any], where: str) -> EnvConfig:
    """One ``[[tasks]]`` table over ``[env]``, built and checked, or a ValueError naming ``where``."""
    try:
        env = converter.structure(data, EnvConfig)
    except cattrs.BaseValidationError as exc:
        raise ValueError(
            "; ".join(cattrs.transform_error(exc, path=where, format_exception=_format_exception))
        ) from None
    if bad := range_problems(env, prefix=f"{where}.") + env_problems(env, prefix=f"{where}."):
        raise ValueError("; ".join(bad))
    return env


#: The config each command reads, and which commands take each declaring class's settings as flags
#: (a setting may name its own: ``RunConfig.levers`` is eval's too).
_RUN: Roots = (RunConfig, {EnvConfig: COMMANDS, RunConfig: ("run",)})
SETTINGS_OF: dict[str, Roots] = {
    "run": _RUN,
    "train": (TrainConfig, {EnvConfig: COMMANDS, TrainConfig: ("train",), PPOConfig: ("train",)}),
    "eval": _RUN,
    "sweep": _RUN,
}


def command_settings(command: str) -> list[SettingField]:
    """The settings ``command`` takes as flags, in the order its ``--help`` lists them."""
    return settings_of(command, SETTINGS_OF[command])  # type: ignore[arg-type]


converter = cattrs.Converter(forbid_extra_keys=True)


def _strict_scalar(kind: type[Any]) -> Any:
    # cattrs would coerce "5" to 5 and 5 to True; a config file with the wrong
    # type is a mistake worth naming, not a value to guess at.
    def structure(value: Any, _t: Any) -> Any:
        if type(value) is not kind and not (kind is float and type(value) is int):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return kind(value)

    return structure


for _kind in (int, float, str, bool):
    converter.register_structure_hook(_kind, _strict_scalar(_kind))


def _names(value: Any, _t: Any) -> tuple[str, ...] | None:
    # A bare string is iterable too: "tempo" must not become ('t', 'e', 'm', 'p', 'o').
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise TypeError(f"expected a list of names, got {type(value).__name__} {value!r}")
    return tuple(converter.structure(v, str) for v in value)


converter.register_structure_hook(tuple[str, ...] | None, _names)


_UNKNOWN = "unknown key(s) "
#: Keys a config class's own check may name at the start of its message (``tasks[1].epochs: ...``).
_TOP_KEYS = frozenset({"tasks", "ppo", "env", "workers", "eval_every"})


def _format_exception(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return _UNKNOWN + ",".join(sorted(exc.extra_fields))
    if isinstance(exc, TypeError) and str(exc).startswith("expected "):
        return str(exc)  # the strict scalar hook's own words say what was given
    if isinstance(exc, ValueError):
        return str(exc)  # a config class's own check names the field and the rule
    return cattrs.v.format_exception(exc, type_)


def structure_config(data: dict[str, Any], where: str = "config") -> RunConfig:
    """Build a :class:`RunConfig` from plain data, or raise :class:`ConfigError`.

    Each problem names its key path, e.g. ``env.epoch: unknown key``.
    """
    return structure_as(data, RunConfig, where)


def structure_as(data: dict[str, Any], cls: type[C], where: str = "config") -> C:
    """Build any config class (``RunConfig``, ``TrainConfig``) from plain data with the same rules and errors."""
    try:
        config = converter.structure(data, cls)
    except cattrs.BaseValidationError as exc:
        problems: list[str] = []
        for line in cattrs.transform_error(exc, path="$", format_exception=_format_exception):
            msg, _, at = line.rpartition(" @ ")
            key = at.removeprefix("$").removeprefix(".")
            if msg.startswith(_UNKNOWN):
                problems += [f"{key + '.' if key else ''}{n}: unknown key" for n in msg[len(_UNKNOWN) :].split(",")]
            elif not key and msg.partition(":")[0].partition("[")[0].partition(".")[0] in _TOP_KEYS:
                problems.append(msg)  # a config class's own check, naming its key already
            else:
                problems.append(f"{key or '(top level)'}: {msg}")
        raise ConfigError(f"invalid config ({where}): {'; '.join(problems)}") from None
    # Types are right; now the ranges, so a bad value never reaches training.
    if isinstance(config, RunConfig):
        bad = range_problems(config) + config_problems(config)
    else:
        env = getattr(config, "env", None)
        bad = range_problems(config) + (env_problems(env) if isinstance(env, EnvConfig) else [])
    if bad:
        raise ConfigError(f"invalid config ({where}): {'; '.join(with_flag(p, type(config)) for p in bad)}")
    return config


def load_config(path: Path) -> RunConfig:
    """Read a TOML run config."""
    return load_config_as(path, RunConfig)


def load_config_as(path: Path, cls: type[C]) -> C:
    """Read a TOML file into ``cls``."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}): is it the right file?") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    return structure_as(data, cls, where=str(path))


def unstructure_config(config: Any) -> dict[str, Any]:
    out: dict[str, Any] = converter.unstructure(config)
    return out


def with_overrides(config: C, **overrides: Any) -> C:
    """Apply CLI flags (``None`` means "not given"); ``table__x`` keys go to that table (``env__epochs``)."""
    data = unstructure_config(config)
    for key, value in overrides.items():
        if value is None:
            continue
        table, _, name = key.rpartition("__")
        (data[table] if table else data)[name] = value
    return structure_as(data, type(config), where="command line")


def docs_blocks() -> dict[str, str]:
    """The generated tables of ``docs/config.md``, by block name (a test keeps the file in step)."""
    return {
        "run": markdown_table(RunConfig),
        "env": markdown_table(RunConfig, "env"),
        "train": markdown_table(TrainConfig),
        "ppo": markdown_table(TrainConfig, "ppo"),
        "flags": flag_matrix(SETTINGS_OF),
    }


if __name__ == "__main__":
    # python -m esper_kernel.settings.config docs/config.md: rewrite the file's generated tables from the declarations.
    import sys

    doc = Path(sys.argv[1])
    doc.write_text(sync_blocks(doc.read_text(encoding="utf-8"), docs_blocks()), encoding="utf-8")
