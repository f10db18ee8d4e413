"""Tasks: the data a host trains on, and the ``esper.tasks`` plugins that declare them.

Layers: docs/architecture.md.
"""
