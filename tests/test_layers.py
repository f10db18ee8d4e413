"""The kernel's import layers: config and data at the bottom, the session layer and the CLI on top.

``python tests/test_layers.py`` prints the graph: each kernel module, the
kernel modules it imports at top level, and those it imports only inside a
function (``TYPE_CHECKING`` imports are not edges: they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

KERNEL = Path(__file__).resolve().parents[1] / "esper_kernel"


def _name(path: Path) -> str:
    parts = path.relative_to(KERNEL).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def _targets(node: ast.Import | ast.ImportFrom, here: str, modules: set[str]) -> set[str]:
    if isinstance(node, ast.Import):
        full = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the package of ``here``
            pkg = ["esper_kernel", *here.split(".")][: -node.level]
            base = ".".join([*pkg, *([node.module] if node.module else [])])
        # "from pkg import sub" names a submodule; "from pkg import obj" runs pkg itself.
        full = [
            f"{base}.{a.name}" if f"{base}.{a.name}".removeprefix("esper_kernel.") in modules else base
            for a in node.names
        ]
    out = set()
    for target in full:
        name = target.removeprefix("esper_kernel").removeprefix(".") if target.startswith("esper_kernel") else None
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name is not None:
            out.add(name or "__init__")
    return out - {here}


def import_graph(type_only: bool = False) -> dict[str, tuple[set[str], set[str]]]:
    """``{module: (imported at top level, imported only inside functions)}`` over esper_kernel.

    With ``type_only``, imports under ``TYPE_CHECKING`` count too (as top-level ones).
    """
    files = {_name(p): p for p in KERNEL.rglob("*.py")}
    modules = set(files)
    graph: dict[str, tuple[set[str], set[str]]] = {}
    for here, path in files.items():
        top: set[str] = set()
        inner: set[str] = set()

        def walk(
            node: ast.AST, in_function: bool, here: str = here, top: set[str] = top, inner: set[str] = inner
        ) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test) and not type_only:
                    continue
                nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                if isinstance(child, ast.Import | ast.ImportFrom):
                    (inner if nested else top).update(_targets(child, here, modules))
                walk(child, nested)

        walk(ast.parse(path.read_text(encoding="utf-8")), False)
        graph[here] = (top, inner - top)
    return graph


def _reaches(graph: dict[str, tuple[set[str], set[str]]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in set.union(*graph[todo.pop()]):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_named_upward_edges_are_gone() -> None:
    graph = import_graph()
    for low, high in (
        ("settings.config", "episode.env"),
        ("testing", "commands.run"),
        ("grow.lifecycle", "compose.registry"),
        ("grow.lifecycle", "grow.training"),
    ):
        assert high not in set.union(*graph[low]), f"{low} imports {high}"
        assert high not in _reaches(graph, low), f"{low} reaches {high} through other modules"


def test_the_kernel_imports_in_layers_without_a_cycle() -> None:
    graph = import_graph()
    cycles = sorted(m for m in graph if m in _reaches(graph, m))
    assert cycles == [], f"modules importing themselves through others: {cycles}"
    # Config and data at the bottom: they import nothing that runs episodes.
    for low in ("settings.config", "data.tasks", "infra.files", "compose.stages", "infra.errors"):
        above = {
            "episode.env",
            "grow.lifecycle",
            "grow.training",
            "compose.registry",
            "commands.run",
            "commands.session",
        }
        assert not _reaches(graph, low) & above, low
    # The session layer is on top: only the CLI imports the commands' sessions, which share commands.session.
    users = [m for m, (top, inner) in graph.items() if "commands.session" in top | inner]
    assert all(m == "cli" or m.startswith("commands.session_") for m in users), users
    for command in ("session_run", "session_train", "session_eval"):
        assert [m for m, (top, inner) in graph.items() if f"commands.{command}" in top | inner] == ["cli"], command


def test_no_import_cycle_even_counting_type_only_imports() -> None:
    graph = import_graph(type_only=True)
    cycles = sorted(m for m in graph if m in _reaches(graph, m))
    assert cycles == [], f"modules importing themselves through others, type-only imports counted: {cycles}"


def test_no_kernel_module_is_over_500_lines() -> None:
    long = [
        f"{p.relative_to(KERNEL.parent)} ({n} lines)"
        for p in sorted(KERNEL.rglob("*.py"))
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500
    ]
    assert not long, long


def test_the_lifecycle_owns_no_optimizer() -> None:
    source = (KERNEL / "grow" / "lifecycle.py").read_text(encoding="utf-8")
    assert "torch.optim" not in source and "param_group" not in source


def test_no_kernel_function_is_over_sixty_lines() -> None:
    # A newcomer reads the kernel function by function: one that grows past a screen gets split.
    long = []
    for path in sorted(KERNEL.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 60:
                    long.append(f"{path.relative_to(KERNEL.parent)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def test_every_layer_package_is_explained_in_the_architecture_doc(tmp_path: Path) -> None:
    import runpy
    import tomllib

    root = KERNEL.parent
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    packages = {p.name for p in KERNEL.iterdir() if (p / "__init__.py").exists()}
    layered = {layer.removeprefix("esper_kernel.") for layer in contract["layers"]}
    assert packages <= layered, f"packages outside the layers contract: {packages - layered}"
    doc = (root / "docs" / "architecture.md").read_text(encoding="utf-8")
    for name in layered:
        assert f"**`{name}" in doc, f"docs/architecture.md has no paragraph on {name}"
    # The picture is drawn from the code by the command the doc names.
    out = tmp_path / "layers.png"
    runpy.run_path(str(root / "docs" / "architecture.py"))["draw"](out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


if __name__ == "__main__":
    for module, (top, inner) in sorted(import_graph().items()):
        print(f"{module:18} {', '.join(sorted(top)) or '-'}")
        if inner:
            print(f"{'':18}   in functions: {', '.join(sorted(inner))}")
