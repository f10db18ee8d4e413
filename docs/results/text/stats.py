"""The text figures of docs/growth.md from an ``esper eval`` document: paired differences on val loss.

python docs/results/text/stats.py docs/results/text/eval/eval.json
"""

from __future__ import annotations

import json
import statistics
import sys

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def paired(a: list[float], b: list[float]) -> str:
    d = [x - y for x, y in zip(a, b, strict=True)]
    m, se = statistics.mean(d), statistics.stdev(d) / len(d) ** 0.5
    t = T975[len(d) - 1]
    return f"{m:+.3f} [{m - t * se:+.3f}, {m + t * se:+.3f}]"


def last_third(curve: list[float]) -> float:
    n = len(curve)
    start = n - n // 3
    return sum(curve[-3:]) / 3 - sum(curve[start - 3 : start]) / 3


def main(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    pol = {p["name"]: p for p in doc["policies"]}
    loss = {n: [r["final_val_loss"] for r in p["per_seed"]] for n, p in pol.items()}
    for n, p in pol.items():
        rs = p["per_seed"]

        def mean(key: str, rs: list[dict] = rs) -> float:
            return statistics.mean(r[key] for r in rs)

        se = statistics.stdev(loss[n]) / len(rs) ** 0.5
        lt = [last_third(r["val_loss_curve"]) for r in rs]
        lt_se = statistics.stdev(lt) / len(lt) ** 0.5
        print(
            f"{n}: loss {statistics.mean(loss[n]):.3f} ± {se:.3f}, acc {mean('final_val_accuracy'):.3f}, "
            f"params {mean('params'):,.0f}, mean params {mean('mean_params'):,.0f}, GFLOPs {mean('flops') / 1e9:.1f}, "
            f"episode {mean('wall_seconds'):.1f} s (sum {sum(r['wall_seconds'] for r in rs):.0f}), "
            f"last-third loss change {statistics.mean(lt):+.3f} ± {lt_se:.3f}, "
            f"fossilized {sum(r['fossilized'] for r in rs)}, culled {sum(r['culled'] for r in rs)}"
        )
    for n in pol:
        if n != "wait":
            print(f"{n} - wait: {paired(loss[n], loss['wait'])}")
    for n in pol:
        if n not in ("wait", "heuristic"):
            print(f"heuristic - {n}: {paired(loss['heuristic'], loss[n])}")


if __name__ == "__main__":
    main(sys.argv[1])
