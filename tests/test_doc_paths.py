"""Every repository file the docs cite is in a fresh clone.

A figure is believed only if a reader can rerun it (docs/results, its config, its small policy file), so a path in
the README or docs/ that names a file no clone has is a broken promise, however good the prose around it.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = ("docs", "esper_kernel", "esper_levers_builtin", "plugins", "bench", "examples", "tests", "tox")
#: A path starts at one of the top-level folders and may hold {a,b} alternatives and * globs.
PATH = re.compile(r"(?<![\w/.-])((?:" + "|".join(TOP) + r")/(?:[\w./*-]|\{[\w.,-]*\})+)")
#: An upper-case word or an ellipsis stands for a part the reader fills in (ARM, TASK, …); README and RESULTS are
#: files of ours.
PLACEHOLDER = re.compile(r"\b(?!README\b|RESULTS\b)[A-Z]{3,}\b|…")
#: What a reader's own project holds, written as an example of a layout, not a file of ours.
EXAMPLE_LAYOUTS = {"tests/test_contract.py"}
#: Policy files of arms trained before they were committed (37b4a79): the docs cite them as the policies their
#: figures came from and say, where the arms are described, that the files were not kept.
NOT_KEPT = {
    "docs/results/tamiyo/multitask/all/policy.pt",
    "docs/results/tamiyo/multitask/all-768/policy.pt",
    "docs/results/tamiyo/multitask/no-mnist1d/policy.pt",
}


def _expand(path: str) -> list[str]:
    """`a/{b,c}.x` as `a/b.x` and `a/c.x`, one brace group at a time."""
    m = re.search(r"\{([^{}]*)\}", path)
    if m is None:
        return [path]
    return [e for alt in m.group(1).split(",") for e in _expand(path[: m.start()] + alt + path[m.end() :])]


def cited_paths() -> dict[str, set[str]]:
    """Each cited path (braces expanded) and the docs that cite it."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found: dict[str, set[str]] = {}
    for doc in docs:
        for m in PATH.finditer(doc.read_text(encoding="utf-8")):
            if PLACEHOLDER.search(m.group(1)) or m.group(1) in EXAMPLE_LAYOUTS:
                continue
            for path in _expand(m.group(1).rstrip("/.-")):
                found.setdefault(path, set()).add(str(doc.relative_to(ROOT)))
    return found


def test_the_docs_cite_some_results_and_a_policy_file() -> None:
    cited = cited_paths()
    assert any(p.endswith("policy.pt") for p in cited)
    assert any(p.startswith("docs/results/") and p.endswith(".sh") for p in cited)


def test_every_file_the_docs_cite_exists() -> None:
    missing = {p: sorted(d) for p, d in cited_paths().items() if p not in NOT_KEPT and not glob.glob(str(ROOT / p))}
    assert not missing, "\n".join(f"{p}: cited by {', '.join(d)}" for p, d in sorted(missing.items()))


def test_each_file_not_kept_is_said_to_be_missing_and_is_missing() -> None:
    tamiyo = (ROOT / "docs" / "tamiyo.md").read_text(encoding="utf-8")
    (said,) = [p for p in tamiyo.split("\n\n") if "policy files of" in p and "were not kept" in p]
    for path in NOT_KEPT:
        assert not (ROOT / path).exists(), f"{path} is back: take it off NOT_KEPT"
        assert f"`{path.removeprefix('docs/results/tamiyo/multitask/').split('/')[0]}/`" in said, path


def test_a_missing_file_is_found() -> None:
    # The check above would pass on a pattern that matched nothing; this one fails if it did.
    text = "see `docs/results/no-such-dir/policy.pt` and docs/results/{a,b}.sh"
    paths = [e for m in PATH.finditer(text) for e in _expand(m.group(1).rstrip("/.-"))]
    assert paths == ["docs/results/no-such-dir/policy.pt", "docs/results/a.sh", "docs/results/b.sh"]
