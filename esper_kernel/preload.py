"""What every worker process would import, imported once in the fork server (``workers._PRELOAD``).

Each worker is forked from the server and starts with all of this in memory,
instead of importing it itself: torch; ``torch._dynamo``, which
``torch.optim`` imports at the first ``add_param_group`` (1.3 s CPU and tens
of MiB per worker otherwise); the kernel's env and PPO; and the module of
every installed lever and task plugin (their entry points). Importing runs no
torch op and starts no thread, so forking from here stays safe. A plugin that
fails to import is skipped here: the worker's own registry reports it.
"""

from __future__ import annotations

import contextlib

import torch
import torch._dynamo

import esper_kernel.episode.env
import esper_kernel.tamiyo.ppo
from esper_kernel.compose.discovery import ENTRY_POINT_GROUP, installed_entry_points
from esper_kernel.data.taskplugins import TASK_GROUP

del torch, esper_kernel.episode.env

for _group in (ENTRY_POINT_GROUP, TASK_GROUP):
    for _ep in installed_entry_points(_group):
        with contextlib.suppress(Exception):
            _ep.load()
