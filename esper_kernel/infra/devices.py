"""Which device the host trains on, and the random state that goes with it.

``--device cpu|cuda|auto`` means the same for every command: the host, its
batches and the epoch accumulators live on that device; the policy (a small
MLP deciding once per epoch) stays on the CPU. ``auto`` picks CUDA when
torch can see a GPU.
"""

from __future__ import annotations

from typing import Any

import torch

from esper_kernel.infra.errors import EsperError

DEVICES = ("cpu", "cuda", "auto")


class DeviceError(EsperError, ValueError):
    """A device that is unknown or not available here (a ValueError too, so config checks name the key)."""


def check_device_name(name: str) -> str:
    """``name`` if it is cpu, auto, cuda or cuda:N; else a :class:`DeviceError` listing the choices."""
    base, _, index = name.partition(":")
    if name in DEVICES or (base == "cuda" and index.isdigit()):
        return name
    raise DeviceError(f"unknown device {name!r}; choose cpu, cuda (or cuda:N) or auto")


def resolve_device(name: str) -> torch.device:
    """The torch device for ``name``; a one-line error when CUDA is asked for and absent."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} asked for, but torch {torch.__version__} sees no CUDA GPU here")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
        return dev
    return torch.device("cpu")


def rng_states() -> dict[str, Any]:
    """Torch's global random states: the CPU's and, where CUDA is in use, every GPU's."""
    out: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
