"""Draw the kernel's layers from the code: ``python docs/architecture.py docs/img/architecture.png``.

The layers are the import-linter contract in ``pyproject.toml``; the modules of
each layer and the imports between layers are read from the source by grimp
(the graph import-linter itself checks), so the picture cannot fall behind.
"""

from __future__ import annotations

import sys
import tomllib
from collections import Counter
from pathlib import Path

import grimp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

ROOT = Path(__file__).resolve().parents[1]


def layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")
    return list(contract["layers"])


def layer_of(module: str, names: list[str]) -> str | None:
    return next((n for n in names if module == n or module.startswith(n + ".")), None)


def draw(out: Path) -> None:
    names = layers()
    graph = grimp.build_graph("esper_kernel", include_external_packages=False)
    members = {
        n: sorted(m.rpartition(".")[2] for m in graph.modules if layer_of(m, names) == n and m != n) for n in names
    }
    members["esper_kernel.cli"] = ["cli"]
    edges: Counter[tuple[str, str]] = Counter()
    for m in graph.modules:
        src = layer_of(m, names)
        for imported in graph.find_modules_directly_imported_by(m):
            dst = layer_of(imported, names)
            if src and dst and src != dst:
                edges[src, dst] += 1
    fig, ax = plt.subplots(figsize=(11, 0.9 * len(names) + 1))
    ax.set_xlim(0, 11)
    ax.set_ylim(-0.5, len(names))
    ax.axis("off")
    y_of = {n: len(names) - 1 - i for i, n in enumerate(names)}
    for n, y in y_of.items():
        ax.add_patch(FancyBboxPatch((0.2, y - 0.35), 8.4, 0.7, boxstyle="round,pad=0.02", fc="#eef3fb", ec="#4a6fa5"))
        label = n.removeprefix("esper_kernel.") + ("" if n.endswith(".cli") else "/")
        ax.text(0.35, y + 0.12, label, fontsize=11, weight="bold", va="center")
        ax.text(0.35, y - 0.17, ", ".join(members[n]), fontsize=7.5, va="center", color="#333")
    # Imports go downwards only (the contract): one arrow per pair of layers, labelled with the module imports.
    for k, ((src, dst), count) in enumerate(sorted(edges.items(), key=lambda e: (y_of[e[0][0]], y_of[e[0][1]]))):
        x = 8.8 + (k % 9) * 0.24
        ax.annotate(
            "",
            xy=(x, y_of[dst] + 0.3),
            xytext=(x, y_of[src] - 0.3),
            arrowprops={"arrowstyle": "->", "color": "#888", "lw": 0.6 + 0.15 * min(count, 10)},
        )
    ax.set_title("esper_kernel: each layer imports only those below it (arrows: imports between layers)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    draw(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img/architecture.png"))
