"""``esper run``'s session: its flags, its config, a progress bar and the explained summary."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
from rich.console import Console

if TYPE_CHECKING:
    from esper_kernel.commands.run import EpochReport
    from esper_kernel.compose.discovery import LoadFailure

from esper_kernel.commands.session import (
    Flags,
    check_device,
    load_config,
    refuse_with_resume,
    setup_threads,
    stderr,
    tensorboard_sinks,
)

# -- esper run -----------------------------------------------------------------------------


@attrs.frozen
class RunFlags(Flags):
    """``esper run``'s own flags; its settings are in ``given``."""

    COMMAND: ClassVar[str] = "run"

    config_file: str | None = None
    resume: str | None = None
    overwrite: bool = False
    quiet: bool = False
    threads: int | None = None
    tensorboard_dir: Path | None = None


def run_config(f: RunFlags) -> Any:
    """The :class:`~esper_kernel.settings.config.RunConfig` the flags ask for (a resumed run takes its checkpoint's)."""
    from esper_kernel.settings.config import RunConfig

    if f.resume is not None:
        extra = {"--config": f.config_file, "--overwrite": f.overwrite or None}
        refuse_with_resume("--resume continues the run as its checkpoint configured it", f.changes, extra)
    config = load_config(RunConfig, f.config_file, **f.given)
    check_device(config.env.device)
    return config


def _policy_epochs(f: RunFlags, config: Any) -> int | None:
    """The episode length a learned policy was trained on, where neither --epochs nor the config file chose one.

    The policy reads the epoch as a fraction of its episode, so it plays the
    length it learned on best; the default task's own length is a heuristic's.
    """
    import tomllib

    from esper_kernel.tamiyo.catalogue import learned_policy_file
    from esper_kernel.tamiyo.ppo import PolicyLoadError, stamped_epochs

    path = learned_policy_file(str(config.policy), config.env.task)
    if "env__epochs" in f.given or path is None:
        return None
    if f.config_file is not None:
        table = tomllib.loads(Path(f.config_file).read_text(encoding="utf-8")).get("env", {})
        if "epochs" in table:
            return None
    try:
        return stamped_epochs(path) if path.is_file() else None
    except PolicyLoadError as exc:
        raise PolicyLoadError(f"--policy {config.policy}: {exc}") from exc


class RunProgress:
    """``esper run``'s progress bar on stderr, and the callbacks :func:`~esper_kernel.commands.run.run` reports to."""

    def __init__(self, console: Console, epochs: int, quiet: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = (
            TextColumn("[bold]esper run"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
        )
        self.console = console
        self.progress = Progress(*columns, console=console, disable=quiet, transient=False)
        self.bar = self.progress.add_task("epochs", total=epochs, status="", start=False)

    def on_start(self, epochs: int, first: int) -> None:
        self.progress.update(self.bar, total=epochs, completed=first)
        self.progress.start_task(self.bar)
        self.progress.start()

    def on_epoch(self, r: EpochReport) -> None:
        status = f"val acc {r.val_accuracy:.3f}  slots {' '.join(s.lower() for s in r.stages)}"
        self.progress.update(self.bar, completed=r.epoch, total=r.epochs, status=status)

    def on_warning(self, line: str) -> None:
        self.progress.console.print(f"[yellow]esper:[/] {line}", highlight=False, markup=True)

    def on_failures(self, failures: Sequence[LoadFailure]) -> None:
        from esper_kernel.report.levers import failure_record, failures_panel

        self.console.print(failures_panel([failure_record(f) for f in failures]))
        self.console.print("[yellow]the run goes on without them[/] (ESPER_STRICT_PLUGINS=1 makes this an error)")


def esper_run(f: RunFlags) -> None:
    """``esper run``: one episode, a progress bar, the explained summary."""
    setup_threads(f.threads)
    from esper_kernel.commands.run import run
    from esper_kernel.report.console import run_summary

    config = run_config(f)
    console = stderr()
    epochs = None if f.resume is not None else _policy_epochs(f, config)
    if epochs is not None:
        config = attrs.evolve(config, env=attrs.evolve(config.env, epochs=epochs))
        if not f.quiet:
            console.print(
                f"esper: {epochs} epochs, the episode length policy {config.policy!r} was trained on "
                "(--epochs to change)"
            )
    shown = RunProgress(console, config.env.epochs, f.quiet)
    sinks = tensorboard_sinks(f.tensorboard_dir)
    try:
        summary = run(
            config,
            resume=Path(f.resume) if f.resume else None,
            overwrite=f.overwrite,
            on_epoch=shown.on_epoch,
            on_start=shown.on_start,
            on_warning=shown.on_warning,
            on_failures=shown.on_failures,
            sinks=sinks,
        )
    finally:
        shown.progress.stop()
        for sink in sinks:
            sink.close()
    console.print(run_summary(summary))
    if f.tensorboard_dir is not None:
        console.print(f"TensorBoard: tensorboard --logdir {f.tensorboard_dir}")
