"""Infrastructure every layer may use: errors, atomic files, checkpoints, telemetry, worker processes, devices,
statistics.

Layers: docs/architecture.md.
"""
