"""Settings declared once (declare), the config classes built from them (config) and their limits (bounds).

Layers: docs/architecture.md.
"""
