"""Paired differences (95% t-intervals, esper's own) between any two policies of one eval.json, by seed.

python docs/results/tamiyo/multitask/pairs.py EVAL_JSON A B [A B ...]: A minus B in final accuracy and return,
as markdown rows. esper eval pairs every policy with one reference; this pairs any two of the same run.
"""

import json
import sys

from esper_kernel.infra.stats import paired_difference

with open(sys.argv[1], encoding="utf-8") as f:
    doc = json.load(f)
by = {p["name"]: {r["seed"]: r for r in p["per_seed"]} for p in doc["policies"]}
args = sys.argv[2:]
for a, b in zip(args[::2], args[1::2], strict=True):
    seeds = sorted(set(by[a]) & set(by[b]))
    cells = []
    for key in ("final_val_accuracy", "return"):
        d = paired_difference([by[a][s][key] for s in seeds], [by[b][s][key] for s in seeds])
        cells.append(f"{d.mean:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}]")
    print(f"| {a} | {b} | {len(seeds)} | {' | '.join(cells)} |")
