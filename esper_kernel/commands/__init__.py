"""One module per command (run, eval, sweep, frontier, scaffold) and the session layer they share; only the CLI imports
them.

Layers: docs/architecture.md.
"""
