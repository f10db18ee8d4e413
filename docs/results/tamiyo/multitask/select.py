"""Pick one of several PPO runs with their training tasks only (evals-17.sh, evals-18.sh).

python docs/results/tamiyo/multitask/select.py EVAL.json [EVAL.json ...]: each eval.json holds the runs' greedy
episodes on one training task. Prints each run's mean return per task and the mean over tasks, and the pick (the
highest mean over tasks) among all runs and within each reading (sizes or signs, from the run's directory name).
"""

import json
import sys
from pathlib import Path
from statistics import mean

evals = [json.loads(Path(p).read_text(encoding="utf-8")) for p in sys.argv[1:]]
names = [Path(p).parent.name for p in sys.argv[1:]]
tasks = list(dict.fromkeys(names))  # evals of several selections may hold different runs on the same task
table: dict[str, dict[str, float]] = {}
for task, ev in zip(names, evals, strict=True):
    for p in ev["policies"]:
        if p["name"].startswith("greedy:"):
            table.setdefault(p["name"], {})[task] = mean(r["return"] for r in p["per_seed"])
runs = [run for run, v in table.items() if len(v) == len(tasks)]
total = {run: mean(table[run].values()) for run in runs}
print("| run | " + " | ".join(tasks) + " | mean |")
print("|---|" + "---|" * (len(tasks) + 1))
for run in runs:
    cells = " | ".join(f"{table[run][t]:.3f}" for t in tasks)
    print(f"| {Path(run.removeprefix('greedy:')).parent.name} | {cells} | {total[run]:.3f} |")


def pick(group: list[str]) -> str:
    return Path(max(group, key=total.__getitem__).removeprefix("greedy:")).parent.name


print(f"pick among all: {pick(runs)}")
signs = [r for r in runs if "-sign" in r]
for reading, group in (("signs", signs), ("sizes", [r for r in runs if r not in signs])):
    if group:
        print(f"pick among {reading}: {pick(group)}")
