"""Read the ``@exercise(...)`` declarations of test_functions.py WITHOUT importing it.

The grader must never import code it does not need, so the points, numbers, tolerances and
visibilities declared next to each student test are read from the file's syntax tree: every
keyword of the decorator is a Python literal (``ast.literal_eval``).
"""

import ast
from dataclasses import dataclass
from pathlib import Path


class DeclarationError(Exception):
    """test_functions.py does not declare its exercises the way the grader expects."""


@dataclass(frozen=True)
class Exercise:
    """One ``@exercise(...)`` declaration: what it grades and how strictly."""

    id: str
    number: str
    points: float
    visibility: str
    name: str
    data: str
    rtol: float
    atol: float
    test: str  # name of the unittest method, e.g. "test_self_attention"


_REQUIRED = ("id", "number", "points", "visibility", "name")


def _decorator_name(node):
    target = node.func if isinstance(node, ast.Call) else node
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute):
        return target.attr
    return None


def read_declarations(path):
    """Return ``{exercise_id: Exercise}`` in file order, read from ``path`` with ``ast``."""
    path = Path(path)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        raise DeclarationError(f"{path}: cannot read the exercise declarations ({exc})") from None
    found = {}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for deco in node.decorator_list:
            if not (isinstance(deco, ast.Call) and _decorator_name(deco) == "exercise"):
                continue
            values = {}
            for kw in deco.keywords:
                try:
                    values[kw.arg] = ast.literal_eval(kw.value)
                except ValueError:
                    raise DeclarationError(
                        f"{path}:{deco.lineno}: @exercise keyword {kw.arg!r} is not a literal"
                    ) from None
            missing = [k for k in _REQUIRED if k not in values]
            if missing:
                raise DeclarationError(
                    f"{path}:{deco.lineno}: @exercise is missing {', '.join(missing)}"
                )
            ex = Exercise(
                id=str(values["id"]),
                number=str(values["number"]),
                points=float(values["points"]),
                visibility=str(values["visibility"]),
                name=str(values["name"]),
                data=str(values.get("data", f"{values['id']}.pkl")),
                rtol=float(values.get("rtol", 1e-5)),
                atol=float(values.get("atol", 1e-6)),
                test=node.name,
            )
            if ex.id in found:
                raise DeclarationError(f"{path}:{deco.lineno}: exercise {ex.id!r} declared twice")
            found[ex.id] = ex
    return dict(sorted(found.items(), key=lambda kv: number_key(kv[1].number)))


def number_key(number):
    """Sort key of a test number: "1.2" < "1.10" < "2.1"."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in number.split("."))
