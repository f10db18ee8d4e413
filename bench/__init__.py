"""Esper's performance figures, each measured side by side against its baseline in one run.

Run the whole suite (about 5 minutes on a 2-core CPU)::

    python -m bench

Options: ``--quick`` (a smoke pass: fewer, shorter repeats and smaller
episodes; its numbers mean little), ``--only KEY[,KEY...]`` (a subset; keys:
policy, masking, lever_epoch, registry, dormant, seed, compile, env, threads, seed_epoch, floor,
counterfactual, startup, scale),
``--threads N`` (torch intra-op threads; default 1, 0 keeps torch's own),
``--repeats N``. Every figure prints the median of several interleaved
repeats, the ratio to its baseline, its target and PASS/MISS; a figure
without a target prints REPORT. The latest results are in
``bench/RESULTS.md``.
"""
