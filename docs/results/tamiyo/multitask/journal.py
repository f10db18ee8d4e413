"""Reading an eval journal (episodes.jsonl) for the post hoc scripts beside it (headroom.py, conditions.py)."""

import json
from collections.abc import Sequence
from pathlib import Path


def returns(path: str, seeds: Sequence[int]) -> tuple[str, dict[str, list[float]]]:
    """The journal's task, and each policy's return on every one of `seeds`, for the policies that played them all."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    by: dict[str, dict[int, float]] = {}
    for line in lines[1:]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break  # a line torn by a kill
        if "policy" in rec:
            by.setdefault(rec["policy"], {})[rec["seed"]] = rec["result"]["ret"]
    full = {p: [v[s] for s in seeds] for p, v in by.items() if all(s in v for s in seeds)}
    return json.loads(lines[0])["env"]["task"], full


def label(policy: str) -> str:
    """The policy's kind and its file's name (a schedule) or folder (a policy file), without the path between."""
    kind, _, path = policy.rpartition(":")
    name = Path(path).name if path.endswith(".toml") else Path(path).parent.name if "/" in path else path
    return f"{kind}:{name}" if kind else name
