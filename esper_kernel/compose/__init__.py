"""The lever registry: hookspecs, lever discovery, composition into the action space and masks, the kernel's own heads,
and the run-time hook dispatch with its fault policy. What a lever author meets is re-exported from
``esper_kernel``.

Layers: docs/architecture.md.
"""
