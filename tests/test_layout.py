"""The layout's rules, read from the imports: the chat never loads the console, the brokers load
neither, the server API (api/) and the console never load each other, nothing of the chat,
the brokers or the console loads the API, the client library (client/) loads nothing but
itself, and only app.py wires the parts together (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gochat"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(name: str, source: str, is_package: bool, known: set[str]) -> set[str]:
    """The gochat modules that module `name` imports (any import, at any depth of its code)."""
    found: set[str] = set()
    package = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "gochat"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "gochat":
                continue
            found.add(target)
            # `from . import protocol`: the names may be modules themselves
            found |= {f"{target}.{a.name}" for a in node.names} & known
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(p, root): p for p in root.rglob("*.py")}
    known = set(paths)
    return {
        name: imports_of(name, path.read_text(), path.name == "__init__.py", known) & known
        for name, path in paths.items()
    }


def closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def in_part(module: str, part: str) -> bool:
    return module == f"gochat.{part}" or module.startswith(f"gochat.{part}.")


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every broken rule, as `module -> module it must not load`."""
    found: list[str] = []
    for module in sorted(graph):
        reach = closure(graph, module)
        if in_part(module, "chat"):
            found += [f"{module} -> {m}" for m in sorted(reach) if in_part(m, "console")]
        if in_part(module, "brokers"):
            found += [
                f"{module} -> {m}"
                for m in sorted(reach)
                if in_part(m, "console") or in_part(m, "chat")
            ]
        if in_part(module, "api"):
            found += [f"{module} -> {m}" for m in sorted(reach) if in_part(m, "console")]
        if any(in_part(module, part) for part in ("chat", "brokers", "console")):
            found += [f"{module} -> {m}" for m in sorted(reach) if in_part(m, "api")]
        if in_part(module, "client"):  # a client of any server: it never drags one in
            found += [f"{module} -> {m}" for m in sorted(reach) if not in_part(m, "client")]
        direct = graph[module]
        if module != "gochat.app" and not in_part(module, "console"):
            found += [f"{module} -> {m} (only app.py)" for m in direct if in_part(m, "console")]
    return found


def test_the_chat_never_loads_the_console_nor_the_brokers_either() -> None:
    graph = import_graph()
    assert any(in_part(m, "chat") for m in graph) and any(in_part(m, "console") for m in graph)
    assert violations(graph) == []


def test_only_app_py_wires_the_chat_and_the_console_together() -> None:
    graph = import_graph()
    both = [
        m
        for m, deps in graph.items()
        if any(in_part(d, "chat") for d in deps)
        and any(in_part(d, "console") for d in deps)
        and not in_part(m, "console")
    ]
    assert both == ["gochat.app"]


def test_the_rules_catch_a_chat_module_that_imports_the_console(tmp_path: Path) -> None:
    """The check itself: a copy of the tree with one such import is refused."""
    (tmp_path / "gochat" / "chat").mkdir(parents=True)
    (tmp_path / "gochat" / "console").mkdir()
    for name in ("gochat/__init__.py", "gochat/chat/__init__.py", "gochat/console/__init__.py"):
        (tmp_path / name).write_text("")
    (tmp_path / "gochat" / "console" / "views.py").write_text("X = 1\n")
    (tmp_path / "gochat" / "keys.py").write_text("from .console import views\n")
    (tmp_path / "gochat" / "chat" / "ws.py").write_text("from .. import keys\n")
    found = violations(import_graph(tmp_path / "gochat"))
    assert "gochat.chat.ws -> gochat.console.views" in found
    assert "gochat.keys -> gochat.console.views (only app.py)" in found


def test_the_rules_keep_the_api_and_the_console_apart(tmp_path: Path) -> None:
    """The API may load the chat, never the console (app.py hands it the console's actions),
    and the console never loads the API."""
    graph = import_graph()
    assert any(in_part(m, "api") for m in graph)
    assert any(in_part(d, "chat") for m in graph if in_part(m, "api") for d in graph[m])
    for name in ("gochat", "gochat/api", "gochat/console", "gochat/chat"):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / "gochat" / "chat" / "hub.py").write_text("X = 1\n")
    (tmp_path / "gochat" / "console" / "state.py").write_text("from ..api import views\n")
    (tmp_path / "gochat" / "api" / "views.py").write_text("from ..chat import hub\n")
    (tmp_path / "gochat" / "api" / "rooms.py").write_text("from ..console import state\n")
    found = violations(import_graph(tmp_path / "gochat"))
    assert "gochat.console.state -> gochat.api.views" in found
    assert "gochat.api.rooms -> gochat.console.state" in found
    assert not [f for f in found if f.startswith("gochat.api.views")]


def test_the_rules_keep_the_client_library_on_its_own(tmp_path: Path) -> None:
    assert not [v for v in violations(import_graph()) if v.startswith("gochat.client")]
    for name in ("gochat", "gochat/client", "gochat/chat"):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / "gochat" / "protocol.py").write_text("X = 1\n")
    (tmp_path / "gochat" / "client" / "frames.py").write_text("from .. import protocol\n")
    found = violations(import_graph(tmp_path / "gochat"))
    assert "gochat.client.frames -> gochat.protocol" in found
