"""The floor plan, guarded: imports only go down, there are no import circles, and
function-local imports are kept for the CLI's start-up time and optional extras.

The floors (DESIGN.md): kernel < data < datasets, models < parameter_server < strategies
< config < train < compress, reporting < runs < bench < commands, cli. Within a package
any import is allowed as long as there is no circle; packages on one floor do not import
each other.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"

FLOORS = {
    "hpmodel.kernel": 0,
    "hpmodel.data": 1,
    "hpmodel.datasets": 2, "hpmodel.models": 2,
    "hpmodel.parameter_server": 2.5,  # its own runner; strategies name it in errors
    "hpmodel.strategies": 3,
    "hpmodel.config": 4,
    "hpmodel.train": 5,
    "hpmodel": 5.5,  # the package facade: hm.Trainer, hm.get_strategy, hm.data
    "hpmodel.compress": 6, "hpmodel.reporting": 6,
    "hpmodel.runs": 7,
    "hpmodel.bench": 8,
    "hpmodel.commands": 9, "hpmodel.cli": 9, "hpmodel.__main__": 10,
}

# Imported inside functions on purpose: optional extras, heavy peers of benchmarks, and
# sklearn, which only the digits loader needs (1.5 s of hpmodel's 5 s import otherwise,
# paid by every command and every spawned worker that never reads the digits).
OPTIONAL = ("onnx", "onnxruntime", "onnxscript", "torchao", "tensorflow", "lightning",
            "accelerate", "transformers", "torchvision", "tensorboard", "torch.utils.tensorboard",
            "torch_pruning", "torchdata", "triton", "psutil", "sklearn")


def is_optional(name: str) -> bool:
    return any(name == extra or name.startswith(extra + ".") for extra in OPTIONAL)
LAZY_HPMODEL = ("hpmodel.commands", "hpmodel.cli")  # start-up time of the command


def modules() -> dict[str, Path]:
    found = {}
    for path in SOURCE.rglob("*.py"):
        parts = list(path.relative_to(SOURCE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def package_of(module: str) -> str:
    """The floor entry a module belongs to (the longest matching prefix)."""
    best = ""
    for name in FLOORS:
        if (module == name or module.startswith(name + ".")) and len(name) > len(best):
            best = name
    return best


def resolve(name: str, known: dict) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str, path: Path, known: dict) -> list[tuple[str, int, bool]]:
    """(imported hpmodel module or top-level third-party name, line, is_local) of ``module``."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top = {id(node) for node in tree.body}
    top |= {id(n) for node in tree.body if isinstance(node, (ast.If, ast.Try))
            for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
            names = [n for n in names if resolve(n, known) not in (None, module)] or [base]
        else:
            continue
        for name in names:
            target = resolve(name, known) if name.startswith("hpmodel") else name
            if target and target != module:
                found.append((target, node.lineno, id(node) not in top))
    return found


def graph() -> tuple[dict, list]:
    known = modules()
    edges, problems = {}, []
    for module, path in sorted(known.items()):
        edges[module] = set()
        for target, line, local in imports(module, path, known):
            where = f"{path.relative_to(SOURCE)}:{line}"
            if not target.startswith("hpmodel"):
                if local and not is_optional(target):
                    problems.append(f"{where}: local import of {target} (import it at the top)")
                continue
            if local:
                if not module.startswith(LAZY_HPMODEL):
                    problems.append(f"{where}: local import of {target} (import it at the top)")
                continue
            edges[module].add(target)
            mine, theirs = package_of(module), package_of(target)
            if mine == theirs:
                continue
            if FLOORS[theirs] >= FLOORS[mine]:
                problems.append(f"{where}: {module} (floor {FLOORS[mine]}) imports {target} "
                                f"(floor {FLOORS[theirs]}): imports must go down")
    return edges, problems


def circles(edges: dict) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_floor():
    assert not [m for m in modules() if not package_of(m)]


def test_imports_only_go_down_and_none_are_local():
    _, problems = graph()
    assert not problems, "\n".join(problems)


def test_no_import_circles():
    edges, _ = graph()
    assert circles(edges) == []


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
