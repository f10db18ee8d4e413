"""Paired differences (95% t-intervals, esper's own) between any two policies, by seed.

python docs/results/tamiyo/multitask/pairs.py FILE A B [A B ...]: A minus B in final accuracy and return,
as markdown rows. FILE is an eval.json or an eval journal (episodes.jsonl: every episode it holds, also of
policies that eval did not ask for). A policy named POLICY@OTHER is read from the file OTHER instead, to pair
episodes of two evals on the same seeds. esper eval pairs every policy with one reference; this pairs any two.
With --tests K before FILE, each return row also gets the Bonferroni interval for K tests (95% family-wise;
needs scipy, which the ray extra installs).
"""

import json
import sys
from functools import cache

from esper_kernel.infra.stats import paired_difference


@cache
def load(path: str) -> dict[str, dict[int, dict[str, float]]]:
    """Each policy's final accuracy and return by seed."""
    by: dict[str, dict[int, dict[str, float]]] = {}
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            for line in f.readlines()[1:]:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line torn by a kill
                r = rec["result"]
                by.setdefault(rec["policy"], {})[rec["seed"]] = {
                    "final_val_accuracy": r["final_val_accuracy"],
                    "return": r["ret"],
                }
        else:
            for p in json.load(f)["policies"]:
                by[p["name"]] = {r["seed"]: r for r in p["per_seed"]}
    return by


def episodes(first: str, name: str) -> dict[int, dict[str, float]]:
    policy, _, other = name.partition("@")
    return load(other or first)[policy]


argv = sys.argv[1:]
tests = int(argv[1]) if argv[0] == "--tests" else 1
argv = argv[2:] if argv[0] == "--tests" else argv
args = argv[1:]
for a, b in zip(args[::2], args[1::2], strict=True):
    ea, eb = episodes(argv[0], a), episodes(argv[0], b)
    seeds = sorted(set(ea) & set(eb))
    cells = []
    for key in ("final_val_accuracy", "return"):
        d = paired_difference([ea[s][key] for s in seeds], [eb[s][key] for s in seeds])
        cells.append(f"{d.mean:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}]")
    if tests > 1:
        from scipy.stats import t

        half = float(t.ppf(1 - 0.025 / tests, d.n - 1)) * d.se
        cells.append(f"[{d.mean - half:+.3f}, {d.mean + half:+.3f}] (Bonferroni, {tests} tests)")
    print(f"| {a} | {b} | {len(seeds)} | {' | '.join(cells)} |")
