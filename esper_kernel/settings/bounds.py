"""The range limits of the values a user can type, named once.

The settings that use them declare them (:mod:`esper_kernel.settings.config`), so a
limit is quoted the same in every flag, TOML key and error; the size of the
host a config asks for is :mod:`esper_kernel.grow.sizing`'s to measure. The limits
are documented in ``docs/config.md`` and ``docs/reliability.md``.
"""

from __future__ import annotations

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

#: How a fresh policy may read a seed's contribution (``ppo.contribution``): its size, or its signs alone.
CONTRIBUTION_READS = ("value", "sign")
