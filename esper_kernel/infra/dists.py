"""A distribution's name and version, read once per distribution object.

Reading either parses the distribution's ``METADATA`` file (about 2 ms), and
one run looks its levers' and its task's distributions up dozens of times.
A fresh entry-point scan makes fresh distribution objects, so a package
reinstalled since is read anew.
"""

from __future__ import annotations

import functools
import importlib.metadata as md

__all__ = ["name_and_version"]


@functools.lru_cache(maxsize=256)
def name_and_version(dist: md.Distribution) -> tuple[str, str]:
    """``(Name, version)`` of ``dist``, from its metadata."""
    return str(dist.metadata["Name"]), str(dist.version)
