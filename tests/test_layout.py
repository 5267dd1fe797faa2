"""What never imports what (docs/design.md): checked on the source, so a new import
that breaks a rule fails here with the file and the line."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cluster"
ROLES = ("gateway", "worker", "coordinator")
SANS_IO = ("gateway/http_core.py", "gateway/h2_core.py", "gateway/ws_core.py")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, under TYPE_CHECKING too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def test_the_roles_never_import_one_another() -> None:
    broken = []
    for role in ROLES:
        others = tuple(f"cluster.{other}" for other in ROLES if other != role)
        for path in sorted((PACKAGE / role).glob("*.py")):
            for line, module in imports(path):
                if module.startswith(others):
                    broken.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert broken == []


def test_the_protocol_cores_do_no_io() -> None:
    broken = []
    for name in SANS_IO:
        path = PACKAGE / name
        for line, module in imports(path):
            if module.split(".")[0] in ("asyncio", "zmq", "socket", "uvloop"):
                broken.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert broken == []


def test_what_a_handler_imports_pulls_in_no_role() -> None:
    code = ("import sys, cluster, cluster.app, cluster.realtime, cluster.state, "
            "cluster.responses, cluster.rpc; print(sorted(m for m in sys.modules if "
            "m.startswith(('cluster.gateway', 'cluster.coordinator', 'cluster.worker'))))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_itself_through_others() -> None:
    """No import circle anywhere in the package, TYPE_CHECKING imports included: a
    part names what it needs of another as a protocol, or is given it."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:  # `from cluster.worker import flow` names a module
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}

    def circle_from(start: str) -> list[str] | None:
        """A path start -> ... -> start, if there is one (depth-first)."""
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    circles = [" -> ".join(c) for c in map(circle_from, sorted(graph)) if c is not None]
    assert circles == []
