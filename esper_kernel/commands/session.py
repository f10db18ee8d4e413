"""The session layer ``esper run``, ``train``, ``eval`` and ``sweep`` share.

A command here is its flags (one attrs class each, named as the click
options are), a config read the one way (a TOML file, then the flags given
on top of it), the work itself (:func:`esper_kernel.commands.run.run`,
:func:`~esper_kernel.tamiyo.train.train_ppo`, :func:`~esper_kernel.commands.evaluate.evaluate`,
:func:`~esper_kernel.commands.sweep.sweep`), its ``run.*`` events and its summary,
written through :mod:`esper_kernel.infra.files`. ``cli.py`` only declares flags
and hands them here.

Each command's own session is ``session_run``, ``session_train`` and
``session_eval``; this module is what they share. Only the CLI imports them.
Heavy imports stay inside functions so ``esper --help`` does not pay for torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import attrs
import click
from rich.console import Console

if TYPE_CHECKING:
    pass

C = TypeVar("C")
F = TypeVar("F", bound=Callable[..., Any])
FlagsT = TypeVar("FlagsT", bound="Flags")


@attrs.frozen
class Flags:
    """A command's own flags (the subclass's fields) and the settings given on its command line.

    The settings are declared once on the config classes (:mod:`esper_kernel.settings.declare`); here they are
    only what the user typed, as ``with_overrides`` keys, and the flags a resumed run must refuse.
    """

    #: Settings given, as ``with_overrides`` keys: ``{"env__epochs": 4}``.
    given: dict[str, Any] = attrs.field(factory=dict, kw_only=True)
    #: The flags given that would change what a resumed run computes.
    changes: tuple[str, ...] = attrs.field(default=(), kw_only=True)

    #: Which command's settings these flags carry.
    COMMAND: ClassVar[str] = ""

    @classmethod
    def split(cls: type[FlagsT], flags: Mapping[str, Any]) -> FlagsT:
        """click's keyword arguments, split into this command's own flags and its settings."""
        from esper_kernel.settings.config import command_settings
        from esper_kernel.settings.declare import given_flags, overrides

        declared = command_settings(cls.COMMAND)
        own = {a.name: flags[a.name] for a in attrs.fields(cls) if a.name in flags}
        return cls(**own, given=overrides(flags, declared), changes=tuple(given_flags(flags, declared)))


# -- what every command shares ------------------------------------------------------------


def setup_threads(threads: int | None) -> int:
    """Torch intra-op threads for this process, as ``--threads`` means everywhere."""
    from esper_kernel.infra.workers import configure_threads

    return configure_threads(threads)


def load_config(cls: type[C], path: str | None, **overrides: Any) -> C:
    """A config of ``cls``: the TOML file at ``path`` (else the defaults), then the flags given (not None)."""
    from esper_kernel.settings.config import load_config_as, with_overrides

    base = load_config_as(Path(path), cls) if path else cls()
    return with_overrides(base, **overrides)


def check_device(device: str) -> None:
    """No CUDA where CUDA is asked for: one line before anything is written."""
    from esper_kernel.infra.devices import resolve_device

    resolve_device(device)


def check_env(env: Any) -> None:
    """Before anything is written: the device exists and the starting host is within the size limits
    (``esper run`` sizes its own host; train, eval, sweep and frontier ask here, on the task's seed-0 data)."""
    from esper_kernel.episode.env import load_task, size_host

    check_device(env.device)
    size_host(env, load_task(env, 0))


def refuse_with_resume(reason: str, changes: Sequence[str], more: Mapping[str, object] | None = None) -> None:
    """A resumed run is the run it saved: a flag that would change it is refused, not ignored."""
    extra = [*changes, *(flag for flag, value in (more or {}).items() if value is not None)]
    if extra:
        raise click.UsageError(f"{reason}; drop {', '.join(extra)}")


def tensorboard_sinks(logdir: Path | None) -> list[Any]:
    if logdir is None:
        return []
    from esper_kernel.infra.tensorboard import TensorBoardSink

    return [TensorBoardSink(logdir)]


def write_json(path: Path, record: Mapping[str, Any]) -> Path:
    """A summary or record, indented, through the one atomic write."""
    from esper_kernel.infra.files import write_text_atomic

    return write_text_atomic(path, json.dumps(record, indent=2) + "\n")


def runtime_options(*, tensorboard: bool = True) -> Callable[[F], F]:
    """``--threads`` (and ``--tensorboard``): how, not what, a command computes; no config key holds them."""
    options = [
        click.option(
            "--threads",
            type=click.IntRange(min=0),
            default=None,
            help="Torch intra-op threads per process (default: OMP_NUM_THREADS if set, else 1; 0: torch's own choice).",
        ),
    ]
    if tensorboard:
        options.append(
            click.option(
                "--tensorboard",
                "tensorboard_dir",
                default=None,
                type=click.Path(file_okay=False, path_type=Path),
                help="Also stream scalars to a TensorBoard log in this directory (needs the tensorboard extra).",
            )
        )

    def apply(command: F) -> F:
        for option in reversed(options):  # click lists options in decorator order, the first on top
            command = option(command)
        return command

    return apply


def stderr() -> Console:
    # No emoji codes: a policy spec such as greedy:family:FILE is not ":family:".
    return Console(stderr=True, emoji=False)
