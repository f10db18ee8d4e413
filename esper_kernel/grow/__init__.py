"""Growing a host: slots, blueprints and hosts, the seed lifecycle, host sizing and FLOPs, and the epoch runner that
trains it.

Layers: docs/architecture.md.
"""
