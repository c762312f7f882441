"""The house's import rule: every project module belongs to one layer, and imports point down.

Read from the source (nothing is imported): each ``import`` of a project module, at the top of a
file or inside a function, must name a module of the same or a lower layer, and modules of one
layer import each other without cycles. The layers are those of docs/architecture.md; a new
module must be given a layer here (the test names it otherwise).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sama", "tasks", "datamodules", "callbacks")

#: (layer name, module-name prefixes); a module takes the layer of its longest matching prefix
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "sama",
            "sama.files",
            "sama.checkpoint_files",
            "sama.seeds",
            "sama.io",
            "sama.images",
            "sama.assets",
        ),
    ),
    (
        "model",
        ("sama.model", "sama.encoders", "sama.latent_cache", "sama.flow", "sama.checkpoints"),
    ),
    ("export", ("sama.export", "sama.lora")),
    ("pipeline", ("sama.pipeline",)),
    (
        "training",
        (
            "tasks",
            "sama.module",
            "sama.checkpoint_io",
            "sama.run_dir",
            "sama.fsdp",
            "datamodules",
            "callbacks",
        ),
    ),
    ("evaluation", ("sama.evaluation", "datamodules.eval_sets", "callbacks.edit_monitor")),
    ("face", ("sama.cli", "sama.__main__", "sama.demo", "sama.train_tiny", "sama.plan")),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _layer(module: str) -> int | None:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules ``module`` imports (top level and function-local; not TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names = [f"{stem}.{alias.name}" for alias in node.names] + [stem]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
                break
    return found


def test_every_module_has_a_layer() -> None:
    missing = [m for m in _modules() if _layer(m) is None]
    assert not missing, f"give these modules a layer in tests/test_layers.py: {missing}"


def test_imports_point_down_the_layers() -> None:
    modules = _modules()
    upward = []
    for module, path in modules.items():
        own = _layer(module)
        for target in sorted(_imports(module, path, modules)):
            theirs = _layer(target)
            if own is not None and theirs is not None and theirs > own:
                upward.append(f"{module} ({LAYERS[own][0]}) -> {target} ({LAYERS[theirs][0]})")
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", ["sama.export", "sama.pipeline"])
def test_inference_reads_no_training_code(module: str) -> None:
    modules = _modules()
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(_imports(current, modules[current], modules))
    training = sorted(m for m in seen if m.startswith(("tasks", "sama.module", "datamodules")))
    assert not training, f"{module} reaches training code: {training}"
