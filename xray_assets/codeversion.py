"""Code versions that change when behaviour changes, and only then.

A step's code version hashes what decides its output:
- the parsed code (AST, without docstrings, comments or layout) of the functions, classes and
  modules it runs, followed through the project: every function, class or module of `xray_assets`
  that they name is included in turn, so a helper's change counts and an unrelated function's does not;
- the values of the data those functions read from module globals (the class maps in
  `core/classes.py`, grids, constants), so changing a mapping changes the version of every step
  that reads it;
- the installed versions of the libraries named (ultralytics and torch for training, the DICOM
  decoders for conversion);
- settings passed explicitly (the profile's training parameters), so that a change of epochs or
  imgsz shows in the UI as "code version changed".
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import hashlib
import inspect
import sys
import textwrap
import types
from importlib import metadata

PACKAGE = "xray_assets"
PLAIN = (str, bytes, int, float, bool, type(None), complex)


def _ours(obj) -> bool:
    name = (
        obj.__name__
        if isinstance(obj, types.ModuleType)
        else getattr(obj, "__module__", None) or ""
    )
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(getattr(body[0], "value", None), ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return tree


def normalized_source(obj) -> tuple[str, ast.AST]:
    """The object's code as a canonical dump of its AST: comments, docstrings and layout gone."""
    tree = _strip_docstrings(ast.parse(textwrap.dedent(inspect.getsource(obj))))
    return ast.dump(tree, include_attributes=False), tree


def stable_repr(value, depth: int = 0) -> str:
    """A repr that does not depend on set order or object addresses."""
    if depth > 20:
        return "..."
    if isinstance(value, enum.Enum):
        return f"{type(value).__qualname__}.{value.name}"
    if isinstance(value, PLAIN):
        return repr(value)
    if isinstance(value, dict):
        items = sorted(
            (stable_repr(k, depth + 1), stable_repr(v, depth + 1)) for k, v in value.items()
        )
        return "{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__}(" + ",".join(stable_repr(v, depth + 1) for v in value) + ")"
    if isinstance(value, (set, frozenset)):
        return "set(" + ",".join(sorted(stable_repr(v, depth + 1) for v in value)) + ")"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = ",".join(
            f"{f.name}={stable_repr(getattr(value, f.name), depth + 1)}"
            for f in dataclasses.fields(value)
        )
        return f"{type(value).__qualname__}({fields})"
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def _is_data(value) -> bool:
    if isinstance(value, (PLAIN, enum.Enum)):
        return True
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        return True
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _referenced(tree: ast.AST) -> list[tuple[str, ...]]:
    """Names the code reads, with their attribute chains (`classes.TASKS` -> ("classes", "TASKS"))."""
    chains = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts, cur = [], node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name):
                chains.append((cur.id, *reversed(parts)))
        elif isinstance(node, ast.Name):
            chains.append((node.id,))
    return chains


def _local_imports(tree: ast.AST, module_name: str) -> list[tuple[str, object]]:
    """What `from .x import y` statements inside functions bring in from this project."""
    import importlib
    import importlib.util

    package = (
        module_name.rpartition(".")[0]
        if not hasattr(sys.modules.get(module_name), "__path__")
        else module_name
    )
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        try:
            target = (
                importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                if node.level
                else node.module or ""
            )
        except (ImportError, ValueError):
            continue
        if not (target == PACKAGE or target.startswith(PACKAGE + ".")):
            continue
        mod = importlib.import_module(target)
        for alias in node.names:
            if hasattr(mod, alias.name):
                found.append((f"{target}.{alias.name}", getattr(mod, alias.name)))
    return found


class _Hasher:
    def __init__(self):
        self.h = hashlib.sha256()
        self.seen: set[int] = set()

    def add(self, obj) -> None:
        obj = inspect.unwrap(obj) if callable(obj) and not isinstance(obj, type) else obj
        if id(obj) in self.seen:
            return
        self.seen.add(id(obj))
        if isinstance(obj, types.ModuleType):
            self._module(obj)
        elif inspect.isfunction(obj) or inspect.isclass(obj):
            self._code(obj)
        else:  # data (class maps, grids) by value; anything else by its type's name
            self.h.update(stable_repr(obj).encode())

    def _module(self, mod: types.ModuleType) -> None:
        self.h.update(f"module {mod.__name__}\n".encode())
        for name in sorted(vars(mod)):
            value = vars(mod)[name]
            if name.startswith("__"):
                continue
            if (inspect.isfunction(value) or inspect.isclass(value)) and getattr(
                value, "__module__", ""
            ) == mod.__name__:
                self.add(value)
            elif _is_data(value):
                self.h.update(f"{name}=".encode())
                self.add(value)

    def _code(self, obj) -> None:
        try:
            dump, tree = normalized_source(obj)
        except (OSError, TypeError):  # built in, or defined where no source is kept
            self.h.update(f"<{obj.__module__}.{obj.__qualname__}>".encode())
            return
        self.h.update(f"{obj.__module__}.{obj.__qualname__}\n{dump}\n".encode())
        module = sys.modules.get(obj.__module__)
        scope = getattr(obj, "__globals__", None) or (vars(module) if module else {})
        for name, value in _local_imports(tree, obj.__module__):
            self.h.update(f"import {name}=".encode())
            if not isinstance(value, types.ModuleType):
                self.add(value)
        for chain in _referenced(tree):
            if chain[0] not in scope:
                continue
            value = scope[chain[0]]
            for attr in chain[1:]:  # follow `module.name` into our own modules
                if isinstance(value, types.ModuleType) and _ours(value) and hasattr(value, attr):
                    value = getattr(value, attr)
                else:
                    break
            if isinstance(value, types.ModuleType):
                continue  # a whole module named but not used through an attribute: its members count when used
            if inspect.isfunction(value) or inspect.isclass(value):
                if _ours(value):
                    self.add(value)
            elif _is_data(value):
                self.h.update(f"{'.'.join(chain)}=".encode())
                self.add(value)


def library_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def code_version(*objects, libraries: tuple[str, ...] = (), settings: tuple = ()) -> str:
    """12 hex digits over `objects` (functions, classes, modules of this project, followed through
    what they call and read), the versions of `libraries`, and `settings` (values)."""
    hasher = _Hasher()
    for o in objects:
        hasher.add(o)
    for lib in sorted(libraries):
        hasher.h.update(f"lib {lib}=={library_version(lib)}\n".encode())
    for s in settings:
        hasher.h.update(f"setting {stable_repr(s)}\n".encode())
    return hasher.h.hexdigest()[:12]
