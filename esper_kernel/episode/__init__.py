"""One episode as an RL environment: the env, its observation, decision sampling, and the one act-step loop every
command plays.

Layers: docs/architecture.md.
"""
