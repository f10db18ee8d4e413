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

from esper_kernel.bounds import FLAGS, config_problems
from esper_kernel.errors import EsperError

C = TypeVar("C")


def _check_device_name(name: str) -> str:
    # Imported here: devices imports torch, and reading a config must not.
    from esper_kernel.devices import check_device_name

    return check_device_name(name)


class ConfigError(EsperError):
    """A config file or value that cannot be used, with the key path that is wrong."""


@attrs.define
class LifecycleConfig:
    max_epochs: int = 20
    host_lr: float = 0.01
    momentum: float = 0.9
    embargo_epochs: int = 1


@attrs.frozen
class EnvConfig:
    """What one episode is: the task, the host and how long it trains."""

    task: str = "pairs"
    data_dir: str | None = None
    epochs: int = 40
    slots: int = 3
    batch_size: int = 64
    #: Examples in the training / validation split; None takes the task's own (pairs 1024/512,
    #: mnist1d 4000/1000, text every window). A size the task cannot take is refused.
    train_size: int | None = None
    val_size: int | None = None
    #: Channels of the CNN host's first block; None takes the task's own (pairs 8, others 16).
    width: int | None = None
    host_lr: float = 0.05
    #: Reward lost per epoch for each 100% of parameters grown over the base host. Sized for the
    #: 562-parameter pairs host: the heuristic's seeds carry it to ~5x its size on average, which
    #: costs ~0.35 of return over an episode against the ~0.5 its 25 points of accuracy bring.
    param_rent: float = 0.002
    #: Run the host under torch.compile (recompiles only when live seed modules change).
    compile: bool = False
    #: Where the host, its batches and accumulators live: cpu, cuda, cuda:N or auto (CUDA when present).
    device: str = attrs.field(default="cpu", validator=lambda _i, _a, v: _check_device_name(v))
    #: bf16 autocast for the host's forward pass.
    amp: bool = False

    @property
    def topology(self) -> str:
        # Imported here: looking a task up must not import torch for a config that is only read.
        from esper_kernel.errors import PluginError
        from esper_kernel.taskplugins import find_task

        try:
            return find_task(self.task).task.topology
        except PluginError:
            return "cnn"


@attrs.frozen
class RunConfig:
    """Everything ``esper run`` needs; the CLI flags override a file's values."""

    env: EnvConfig = attrs.Factory(EnvConfig)
    policy: str = "heuristic"
    levers: tuple[str, ...] | None = None
    seed: int = 0
    out: str = "runs/latest"
    allow_graph_breaks: bool = False
    checkpoint_every: int = 1
    #: What a lever that fails at run time does to the run: "stop" it, or "quarantine" the lever and go on.
    on_lever_error: str = "stop"


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
            else:
                problems.append(f"{key or '(top level)'}: {msg}")
        raise ConfigError(f"invalid config ({where}): {'; '.join(problems)}") from None
    # Types are right; now the ranges, so a bad value never reaches training.
    # (esper train checks its own ranges, naming its own flags.)
    bad = config_problems(config) if isinstance(config, RunConfig) else []
    if bad:
        raise ConfigError(f"invalid config ({where}): {'; '.join(_with_flag(p) for p in bad)}")
    return config


def _with_flag(problem: str) -> str:
    key, _, msg = problem.partition(": ")
    flag = FLAGS.get(key)
    return f"{key} ({flag}): {msg}" if flag else problem


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
