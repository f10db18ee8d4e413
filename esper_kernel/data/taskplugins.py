"""Tasks as plugins: the ``esper.tasks`` entry-point group, found and reported like levers.

A task is what a user brings to grow a model on: its data, its starting host,
the same host at other widths (the static controls), the metric it is judged
on and, optionally, the blueprints that apply to it. A distribution ships one
by naming a :class:`Task` object in its ``pyproject.toml``::

    [project.entry-points."esper.tasks"]
    mytask = "my_package.task:TASK"

The builtin tasks (``pairs``, ``shapes``, ``sequences``, ``cifar10``, ``text``,
``mnist1d``) are registered the same way by the ``esper-kernel`` distribution
(:mod:`esper_kernel.builtin_tasks`).

Discovery is torch-free and lazy: listing tasks imports each entry point's
module (which must not build data at import), and a task's data and host are
built only when a run asks for that task. One task that fails to import is
reported with the distribution that shipped it; it never hides the others,
and ``esper tasks list`` always lists. Under ``ESPER_STRICT_PLUGINS=1`` any
broken task plugin is an error for every command that looks tasks up.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from esper_kernel.infra.dists import name_and_version
from esper_kernel.infra.errors import PluginError
from esper_kernel.infra.stops import stops, user_stopped

__all__ = [
    "METRICS",
    "TASK_GROUP",
    "TOPOLOGIES",
    "HostShape",
    "Task",
    "TaskError",
    "TaskFailure",
    "TaskInfo",
    "TaskListing",
    "find_task",
    "list_tasks",
    "task_names",
]

TASK_GROUP = "esper.tasks"
ENV_STRICT = "ESPER_STRICT_PLUGINS"
#: Host families a task's starting host may belong to (each has its own blueprint catalogue).
TOPOLOGIES = ("cnn", "cnn1d", "transformer")
#: What a task is judged on: validation accuracy, or validation loss (nats per token; lower is better).
METRICS = ("accuracy", "val_loss")
_KERNEL_DIST = "esper-kernel"
#: The esper-kernel distribution's own entry points, as pyproject.toml declares them.
BUILTIN_ENTRY_POINTS = {
    "pairs": "esper_kernel.builtin_tasks:PAIRS",
    "shapes": "esper_kernel.builtin_tasks:SHAPES",
    "sequences": "esper_kernel.builtin_tasks:SEQUENCES",
    "cifar10": "esper_kernel.builtin_tasks:CIFAR10",
    "text": "esper_kernel.builtin_tasks:TEXT",
    "mnist1d": "esper_kernel.builtin_tasks:MNIST1D",
}


class TaskError(ValueError):
    """A task cannot be built: bad arguments, missing or malformed data."""


def _check_choice(allowed: tuple[str, ...]) -> Callable[[Any, attrs.Attribute[str], str], None]:
    def check(_inst: Any, attribute: attrs.Attribute[str], value: str) -> None:
        if value not in allowed:
            raise ValueError(f"{attribute.name} must be one of {', '.join(allowed)}, got {value!r}")

    return check


@attrs.frozen
class HostShape:
    """What a starting host needs to know of its data: the classes, the input channels, the sequence length."""

    num_classes: int
    in_channels: int = 3
    seq_len: int | None = None

    @classmethod
    def of(cls, data: Any) -> HostShape:
        """The shape of a :class:`~esper_kernel.data.tasks.TaskData`'s examples."""
        channels = int(data.train_x.shape[1]) if data.train_x.dim() >= 3 else 1
        return cls(data.num_classes, channels, data.seq_len)


@attrs.frozen
class Task:
    """One task, as a plugin declares it. Nothing here builds data or imports torch.

    Attributes:
        name: The name ``--task`` takes; must equal the entry point's name.
        topology: The host family (``cnn``, ``cnn1d`` or ``transformer``).
        description: One line for ``esper tasks list``.
        build: ``build(seed, data_dir, **sizes) -> TaskData``; called only when a run uses the task.
        host: ``host(shape, slots, width) -> Host`` (shape a :class:`HostShape`): the starting
            host, ``width`` None for the task's own.
        default_width: The width ``host`` builds when given None (the growth-ready host).
        widths: The static-host family: the same host at these widths, for the frontier and controls.
        metric: ``accuracy`` or ``val_loss``: what the task is judged on.
        size_params: Size arguments ``build`` accepts (``n_train``, ``n_val``, ...). A run's
            ``--train-size``/``--val-size`` are passed as ``n_train``/``n_val`` when listed here,
            and refused otherwise: never silently ignored.
        requires_data_dir: Whether the task reads local files (``--data-dir``).
        blueprints: The blueprints that apply to the task (None: the topology's whole catalogue).
        host_rule: Why the starting host is growth-ready, in one sentence (``esper tasks list``).
        extra: The pip extra the task needs (``esper-kernel[mnist1d]``), for the error when it is missing.
    """

    name: str
    topology: str = attrs.field(validator=_check_choice(TOPOLOGIES))
    description: str
    # Typed loosely: naming TaskData and Host here would make listing tasks import torch.
    build: Callable[..., Any] = attrs.field(repr=False)
    host: Callable[[HostShape, int, int | None], Any] = attrs.field(repr=False)
    default_width: int
    widths: tuple[int, ...] = ()
    metric: str = attrs.field(default="accuracy", validator=_check_choice(METRICS))
    size_params: tuple[str, ...] = ("n_train", "n_val")
    requires_data_dir: bool = False
    blueprints: tuple[str, ...] | None = None
    host_rule: str = ""
    extra: str | None = None


@attrs.frozen
class TaskInfo:
    """A loaded task and where it came from."""

    task: Task
    distribution: str
    version: str
    entry_point: str

    @property
    def name(self) -> str:
        return self.task.name

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run the plugin's ``fn`` (its ``build`` or ``host``); whatever it raises is one line naming the task.

        A :class:`TaskError` (missing data, a bad file) is the task's own message for the user and
        passes through; a real Ctrl-C or SIGTERM still stops the command.
        """
        before = stops()
        try:
            return fn(*args, **kwargs)
        except TaskError:
            raise
        except BaseException as exc:  # a plugin's sys.exit(), KeyboardInterrupt or BaseException included
            if user_stopped(exc, before):
                raise
            msg = " ".join(str(exc).split())
            raise PluginError(
                f"task {self.task.name!r} ({self.distribution} {self.version}): {what} raised "
                f"{type(exc).__name__}{': ' + msg if msg else ''}"
            ) from exc

    def host(self, shape: HostShape, slots: int, width: int | None) -> Any:
        """The plugin's starting host, built through :meth:`call`."""
        return self.call("host()", self.task.host, shape, slots, width)

    def record(self) -> dict[str, Any]:
        t = self.task
        return {
            "name": t.name,
            "distribution": self.distribution,
            "version": self.version,
            "entry_point": self.entry_point,
            "topology": t.topology,
            "metric": t.metric,
            "description": t.description,
            "requires_data_dir": t.requires_data_dir,
            "size_params": list(t.size_params),
            "default_width": t.default_width,
            "widths": list(t.widths),
            "blueprints": None if t.blueprints is None else list(t.blueprints),
            "host_rule": t.host_rule,
            "extra": t.extra,
        }


@attrs.frozen
class TaskFailure:
    """A task plugin that is installed but could not be loaded, and why."""

    name: str
    distribution: str
    version: str
    entry_point: str
    error: str

    def describe(self) -> str:
        return (
            f"task {self.name!r} from {self.distribution} {self.version} "
            f"(entry point {self.name} = {self.entry_point}) failed to load: {self.error}"
        )

    def record(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class TaskListing:
    tasks: tuple[TaskInfo, ...]
    failures: tuple[TaskFailure, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "esper.tasks/1",
            "tasks": [t.record() for t in self.tasks],
            "failures": [f.record() for f in self.failures],
        }


def _dist(ep: md.EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    if dist is None:
        return "<unknown distribution>", "?"
    return name_and_version(dist)


def strict_mode(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``ESPER_STRICT_PLUGINS`` makes every broken plugin an error."""
    env = os.environ if environ is None else environ
    return env.get(ENV_STRICT, "").strip().lower() not in ("", "0", "false", "no")


@functools.lru_cache(maxsize=8)
def _installed(path: tuple[str, ...]) -> tuple[md.EntryPoint, ...]:
    # A scan reads every dist-info on sys.path (about 6 ms) and one run looks its task up several times;
    # keyed by the path, so a site directory added to it is scanned anew.
    del path
    return tuple(md.entry_points(group=TASK_GROUP))


def _is_builtin(ep: md.EntryPoint) -> bool:
    return _dist(ep)[0] == _KERNEL_DIST or (ep.dist is None and ep.value.startswith("esper_kernel."))


def _entry_points(entry_points: Iterable[md.EntryPoint] | None) -> dict[str, md.EntryPoint]:
    """Every usable task entry point by name (a name clash leaves only the builtin, or none)."""
    return _resolve(entry_points)[0]


def _resolve(entry_points: Iterable[md.EntryPoint] | None) -> tuple[dict[str, md.EntryPoint], list[TaskFailure]]:
    """Task entry points by name, and the plugins a name clash drops (as failures a listing shows).

    A builtin keeps its name against any plugin, as builtin levers keep their heads: a
    plugin cannot take ``--task pairs`` over. Two plugins declaring one name are both
    dropped and named: which one ``--task`` meant cannot be told.
    """
    eps = list(_installed(tuple(sys.path))) if entry_points is None else list(entry_points)
    if entry_points is None and not any(_is_builtin(ep) for ep in eps):
        # An esper-kernel installed before tasks were plugins has no esper.tasks entry points until
        # it is reinstalled; its own tasks are still its own, so they are found where they live.
        eps += _builtin_entry_points().values()
    groups: dict[str, list[md.EntryPoint]] = {}
    for ep in sorted(eps, key=lambda e: (e.name, _dist(e)[0])):
        same = groups.setdefault(ep.name, [])
        if all(_dist(o)[0] != _dist(ep)[0] for o in same):  # one distribution seen twice is one task
            same.append(ep)
    by_name: dict[str, md.EntryPoint] = {}
    dropped: list[TaskFailure] = []
    for name, group in groups.items():
        builtin = [ep for ep in group if _is_builtin(ep)]
        if len(group) == 1 or builtin:
            by_name[name] = (builtin or group)[0]
        dists = ", ".join(_dist(ep)[0] for ep in group)
        for ep in group:
            if ep is by_name.get(name):
                continue
            why = (
                f"the builtin task {name!r} (esper-kernel) keeps the name; rename the plugin's entry point"
                if builtin
                else f"task name {name!r} is declared by {len(group)} distributions ({dists}); "
                "uninstall one or rename its entry point"
            )
            dropped.append(TaskFailure(name, *_dist(ep), ep.value, why))
    return by_name, dropped


def _builtin_entry_points() -> dict[str, md.EntryPoint]:
    return {name: md.EntryPoint(name, value, TASK_GROUP) for name, value in BUILTIN_ENTRY_POINTS.items()}


def _load(name: str, ep: md.EntryPoint) -> TaskInfo | TaskFailure:
    dist, version = _dist(ep)
    if dist == "<unknown distribution>" and ep.value.startswith("esper_kernel."):
        dist, version = _KERNEL_DIST, md.version(_KERNEL_DIST)
    before = stops()
    try:
        obj = ep.load()
        if not isinstance(obj, Task):
            raise TypeError(f"{ep.value} is a {type(obj).__name__}, not an esper_kernel.data.taskplugins.Task")
        if obj.name != name:
            raise ValueError(f"its Task is named {obj.name!r}, not {name!r} as the entry point says")
    except BaseException as exc:  # a plugin's sys.exit(), KeyboardInterrupt or BaseException must not end the command
        if user_stopped(exc, before):
            raise
        return TaskFailure(name, dist, version, ep.value, f"{type(exc).__name__}: {exc}")
    return TaskInfo(obj, dist, version, ep.value)


def task_names(entry_points: Iterable[md.EntryPoint] | None = None) -> tuple[str, ...]:
    """Every installed task's name, without loading any of them."""
    return tuple(sorted(_entry_points(entry_points)))


def list_tasks(entry_points: Iterable[md.EntryPoint] | None = None) -> TaskListing:
    """Load every installed task, each on its own; a broken one is a :class:`TaskFailure`, never a crash."""
    by_name, dropped = _resolve(entry_points)
    loaded = [_load(name, ep) for name, ep in by_name.items()]
    return TaskListing(
        tuple(t for t in loaded if isinstance(t, TaskInfo)),
        tuple(sorted([*(f for f in loaded if isinstance(f, TaskFailure)), *dropped], key=lambda f: f.name)),
    )


def find_task(
    name: str,
    entry_points: Iterable[md.EntryPoint] | None = None,
    environ: Mapping[str, str] | None = None,
) -> TaskInfo:
    """Load the task named ``name``; only that one unless strict mode asks to check them all.

    Raises :class:`~esper_kernel.infra.errors.PluginError` (one line, naming the
    distribution) when the task is unknown or fails to load, or, in strict mode,
    when any installed task plugin fails to load.
    """
    eps, dropped = _resolve(entry_points)
    if strict_mode(environ):
        broken = list_tasks(entry_points).failures
        if broken:
            raise PluginError(f"{broken[0].describe()} ({ENV_STRICT}=1)")
    ep = eps.get(name)
    if ep is None:
        clash = next((f for f in dropped if f.name == name), None)
        if clash is not None:
            raise PluginError(clash.describe())
        raise PluginError(f"unknown task {name!r}; installed tasks: {', '.join(sorted(eps)) or 'none'}")
    got = _load(name, ep)
    if isinstance(got, TaskFailure):
        raise PluginError(got.describe())
    return got


def build_data(info: TaskInfo, seed: int, data_dir: Path | None, sizes: Mapping[str, Any]) -> Any:
    """Build ``info``'s data (a ``TaskData``), refusing sizes the task does not take (one line naming them)."""
    t = info.task
    unknown = sorted(set(sizes) - set(t.size_params))
    if unknown:
        raise TaskError(
            f"task {t.name!r} ({info.distribution}) does not accept {', '.join(unknown)}; "
            f"it accepts: {', '.join(t.size_params) or 'no size arguments'}"
        )
    if t.requires_data_dir and data_dir is None:
        raise TaskError(f"task {t.name!r} reads local data: --data-dir is required")
    try:
        return info.call("build()", t.build, seed, data_dir, **sizes)
    except PluginError as exc:
        if isinstance(exc.__cause__, ImportError):
            missing = exc.__cause__
            hint = f"; install it with pip install 'esper-kernel[{t.extra}]'" if t.extra else ""
            raise TaskError(f"task {t.name!r} needs {missing.name or missing}{hint}") from missing
        raise
