"""The range of every value a user can type, and the size of the host it asks for.

Every run config (from TOML, flags or a checkpoint) is checked here before a
run touches its output directory, so a bad value is one line naming the key,
never a traceback from deep inside training or a run that silently trains on
NaN. The limits are documented in ``docs/config.md`` and ``docs/reliability.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from esper_kernel.config import RunConfig
    from esper_kernel.env import EnvConfig

#: Most seed slots a host may have. Each slot adds a block (CNN) or a layer
#: (transformer) and a live seed per slot; past this a CPU run stops being an
#: experiment and becomes a memory test.
MAX_SLOTS = 8
#: Most host epochs in one episode.
MAX_EPOCHS = 100_000
#: Largest CNN host width (channels of the stem).
MAX_WIDTH = 1024
#: Most examples in a generated task split (a shapes image is 12 KiB as float32).
MAX_EXAMPLES = 200_000
#: Largest batch size.
MAX_BATCH = 65_536
#: Largest ``checkpoint_every``.
MAX_CHECKPOINT_EVERY = MAX_EPOCHS
#: Most parameters a host may start with (400 MiB of float32 weights).
MAX_HOST_PARAMS = 100_000_000
#: Most memory training the starting host may take, by :func:`measure_host`'s estimate (1 GiB).
#: Past it a CPU epoch takes minutes and the process climbs past the estimate: refused, not started.
MAX_TRAIN_MEMORY = 2**30
#: Fewest seed slots: the slot head needs two choices to be a decision.
MIN_SLOTS = 2
#: Seeds must fit torch's 64-bit generator seed.
MAX_SEED = 2**63 - 1

#: What ``on_lever_error`` may say: stop the run, or quarantine the lever and continue.
LEVER_ERROR_POLICIES = ("stop", "quarantine")


def env_problems(env: EnvConfig, prefix: str = "env.") -> list[str]:
    """What an episode's config names that does not exist, as ``env.key: what is wrong``.

    Ranges are the settings' own (:func:`esper_kernel.settings.range_problems`).
    """
    from esper_kernel.taskplugins import task_names

    problems: list[str] = []
    if env.task not in (names := task_names()):
        problems.append(f"{prefix}task: unknown task {env.task!r}; installed tasks: {', '.join(names)}")
    if env.data_dir is not None and not env.data_dir.strip():
        problems.append(f"{prefix}data_dir: is empty; leave it out for the generated tasks")
    return problems


def finite_problems(**values: float | None) -> list[str]:
    """``name: must be a finite number`` for every NaN or infinite value given (None is skipped)."""
    return [
        f"{k}: must be a finite number, got {v}" for k, v in values.items() if v is not None and not math.isfinite(v)
    ]


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


@attrs.frozen
class HostSize:
    """What a host costs before it grows: parameters and a training-memory estimate."""

    params: int
    activations: int
    #: Bytes: float32 weights, gradients and two optimizer moments, plus one batch's
    #: activations kept for backward and their gradients.
    memory_bytes: int

    def describe(self) -> str:
        return f"host: {self.params:,} parameters, about {_human_bytes(self.memory_bytes)} to train"

    def problem(self, slots: int, width: int | None) -> str | None:
        """Why a host of this size is refused (one line naming the keys and flags), or None."""
        keys = f"env.slots={slots} (--slots), env.width={width if width is not None else 'default'} (--width)"
        if self.params > MAX_HOST_PARAMS:
            return (
                f"{keys}: the host would have {self.params:,} parameters, over the maximum of "
                f"{MAX_HOST_PARAMS:,}; use fewer slots or a smaller width"
            )
        if self.memory_bytes > MAX_TRAIN_MEMORY:
            return (
                f"{keys}: the host would take about {_human_bytes(self.memory_bytes)} to train, over the limit of "
                f"{_human_bytes(MAX_TRAIN_MEMORY)} (see docs/config.md, Limits); use fewer slots or a smaller width"
            )
        return None


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def measure_host(
    host_factory: Callable[[], Any],
    example: Any,
    batch_size: int,
    max_params: int | None = None,
    max_memory: int | None = None,
) -> HostSize:
    """Size a host: parameters counted on torch's meta device (nothing allocated), then, if
    within ``max_params`` and its weights alone within ``max_memory``, activations from one
    forward pass of a batch of one.

    Otherwise the activations are not measured (0), so a host too big to build is never
    built. The global RNG is left as it was: sizing must not change the run.
    """
    import torch

    with torch.device("meta"), _skip_in_place():
        params = sum(p.numel() for p in host_factory().parameters())
    weights = 4 * 4 * params
    if (max_params is not None and params > max_params) or (max_memory is not None and weights > max_memory):
        return HostSize(params, 0, weights)
    acts = 0

    def count(_m: Any, _inp: Any, out: Any) -> None:
        nonlocal acts
        if isinstance(out, torch.Tensor):
            acts += out.numel()

    # A forward on meta tensors would need no memory but imports torch's decompositions
    # (seconds on every start); a batch of one on the real, bounded host costs milliseconds.
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        host = host_factory()
        host.eval()  # batch norm refuses a batch of one in training mode
        leaves = [m for m in host.modules() if not list(m.children())]
        handles = [m.register_forward_hook(count) for m in leaves]
        try:
            host(example)
        finally:
            for h in handles:
                h.remove()
    # ``example`` is a batch of one, so ``acts`` is per example.
    memory = 4 * (4 * params + 2 * acts * batch_size)
    return HostSize(params, acts, memory)


def _skip_in_place() -> Any:
    """A torch function mode in which in-place ops on meta tensors do nothing."""
    from torch.overrides import TorchFunctionMode

    class SkipInPlace(TorchFunctionMode):
        """Makes in-place ops (weight init) no-ops: on meta tensors they change no shape, and
        ``normal_`` on meta imports torch's decompositions, seconds on every start."""

        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            if name.endswith("_") and not name.startswith("_"):
                # nn.init passes the tensor by keyword, Tensor methods positionally.
                target = args[0] if args else kwargs.get("tensor")
                if getattr(target, "is_meta", False):
                    return target
            return func(*args, **kwargs)

    return SkipInPlace()
