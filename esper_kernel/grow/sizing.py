"""The size of the host a config asks for: parameters and a training-memory estimate, before it is built.

A host too big to train on this machine is refused with one line naming the
keys before anything is allocated (``docs/config.md``, Limits).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from esper_kernel.grow.training import CACHE_BYTES
from esper_kernel.settings.bounds import MAX_HOST_PARAMS, MAX_TRAIN_MEMORY

#: What an Esper training process holds before its host does (Python, torch, autograd's and
#: the run's own state). It differs between machines with the same install: the peak RSS of
#: ``esper run --epochs 1 --width 128 --train-size 256 --val-size 64`` was 422 MiB on the
#: development machine and 504 MiB on CI's, so the baseline is the development machine's
#: (340 MiB, from ``--width 16``) plus 100 MiB for that spread (docs/reliability.md, Bounded hosts).
PROCESS_BASELINE = 440 * 2**20


def train_memory(params: int, acts: int, batch_size: int, data_bytes: int, val_size: int) -> int:
    """Bytes a run of this host is estimated to peak at (the formula docs/reliability.md gives).

    The process baseline, the task's tensors, float32 weights, gradients and two
    optimizer moments, one batch's activations kept for backward and their
    gradients, and the validation inputs kept for the counterfactual passes
    (at most :data:`CACHE_BYTES`).
    """
    cache = min(CACHE_BYTES, 4 * acts * val_size)
    return PROCESS_BASELINE + data_bytes + 4 * (4 * params + 2 * acts * batch_size) + cache


@attrs.frozen
class HostSize:
    """What a host costs before it grows: parameters and a training-memory estimate."""

    params: int
    activations: int
    #: Bytes: :func:`train_memory`'s estimate of the run's peak resident memory.
    memory_bytes: int

    def describe(self) -> str:
        return f"host: {self.params:,} parameters, a run of about {_human_bytes(self.memory_bytes)} to train"

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
                f"{keys}: a run would take about {_human_bytes(self.memory_bytes)} to train, over the limit of "
                f"{_human_bytes(MAX_TRAIN_MEMORY)} (estimate and limit: docs/reliability.md, Bounded hosts); "
                "use fewer slots or a smaller width"
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
    *,
    data_bytes: int = 0,
    val_size: int = 0,
) -> HostSize:
    """Size a host: parameters counted on torch's meta device (nothing allocated), then, if
    within ``max_params`` and its weights alone within ``max_memory``, activations from one
    forward pass of a batch of one. ``data_bytes`` (the task's tensors) and ``val_size``
    (validation examples, for the counterfactual cache) enter :func:`train_memory`.

    Otherwise the activations are not measured (0), so a host too big to build is never
    built. The global RNG is left as it was: sizing must not change the run.
    """
    import torch

    params = count_params(host_factory)
    weights = train_memory(params, 0, batch_size, data_bytes, 0)
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
    return HostSize(params, acts, train_memory(params, acts, batch_size, data_bytes, val_size))


def count_params(host_factory: Callable[[], Any]) -> int:
    """The parameters of the host ``host_factory`` builds, counted on torch's meta device (nothing allocated)."""
    import torch

    with torch.device("meta"), _skip_in_place():
        return sum(p.numel() for p in host_factory().parameters())


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
