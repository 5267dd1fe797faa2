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
