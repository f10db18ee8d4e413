"""Whether a controller that knew the data size could beat the best single plan (evals-21.sh).

python docs/results/tamiyo/multitask/conditions.py JOURNAL [JOURNAL ...]: each journal (episodes.jsonl) holds the
same plans played on seeds 9301-9320 of one task at one training-set size (a condition). Over the plans that played
every seed of every journal, prints each condition's best plan, then three means over all (condition, seed) units:
the best single plan, the per-condition best (a controller that knows the size and plays that size's best plan) and
the per-unit best (an oracle with hindsight), with the last two minus the best single plan, paired by unit, 95%
t-interval. A closed loop that reads the size from the state it sees can at most reach the per-condition best.
"""

import sys
from pathlib import Path
from statistics import mean

from journal import label, returns

from esper_kernel.infra.stats import paired_difference

SEEDS = range(9301, 9321)


conds = [returns(p, SEEDS)[1] for p in sys.argv[1:]]
plans = [p for p in conds[0] if all(p in c for c in conds)]
bests = [max(plans, key=lambda p, c=c: mean(c[p])) for c in conds]
for path, c, best in zip(sys.argv[1:], conds, bests, strict=True):
    print(f"{Path(path).parent.name}: best {label(best)} ({mean(c[best]):.3f}) of {len(plans)} plans")
single = max(plans, key=lambda p: sum(mean(c[p]) for c in conds))
base = [x for c in conds for x in c[single]]
known = [x for c, best in zip(conds, bests, strict=True) for x in c[best]]
oracle = [max(c[p][i] for p in plans) for c in conds for i in range(len(SEEDS))]
print(f"best single plan over all conditions: {label(single)} ({mean(base):.3f})")
for name, v in (("per-condition best", known), ("per-unit best, with hindsight", oracle)):
    d = paired_difference(v, base)
    print(f"{name}: {mean(v):.3f}, minus the best single plan {d.mean:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}]")
