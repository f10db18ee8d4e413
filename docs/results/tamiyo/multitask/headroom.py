"""How much a per-seed choice among the plans already played could add over the best single plan (post hoc).

python docs/results/tamiyo/multitask/headroom.py JOURNAL [JOURNAL ...]: for each journal (episodes.jsonl), over the
policies that played every one of seeds 9301-9320, the best policy's mean return, the mean of the per-seed best
(an oracle that picks, with hindsight, the best of those plans on each seed) and the oracle minus the best single
policy, paired by seed, 95% t-interval. A closed loop beats its own recipe only by playing differently on different
seeds, so this bounds from above what choosing among these plans by seed could have bought.
"""

import sys

from journal import label, returns

from esper_kernel.infra.stats import paired_difference

SEEDS = range(9301, 9321)


for path in sys.argv[1:]:
    task, full = returns(path, SEEDS)
    best = max(full, key=lambda p: sum(full[p]))
    oracle = [max(full[p][i] for p in full) for i in range(len(SEEDS))]
    d = paired_difference(oracle, full[best])
    n_best = sum(full[best][i] == oracle[i] for i in range(len(SEEDS)))
    print(
        f"| {task} | {len(full)} | {label(best)} ({sum(full[best]) / len(SEEDS):.3f}) "
        f"| {sum(oracle) / len(SEEDS):.3f} | {d.mean:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}] | {n_best} / {len(SEEDS)} |"
    )
