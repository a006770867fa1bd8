"""The corpus of correct answers written other ways (tests/variants/), each loaded as its
own copy of transformer_utils."""

import ast
import os
import textwrap
import types

import transformer_utils as tu  # the reference solution
from kit.exercise_checks.harness import KIT_ROOT

# tests/variants/<exercise>/*.py: correct student answers, each written the way students
# write them (other products, the scale elsewhere, a hand-written softmax, other variance
# formulas, float64 inside, ...). Each file defines ``forward(self, ...)``; its body is what
# a student writes between YOUR CODE START and YOUR CODE END. A module-level
# ``PRECISION_NOTE = "..."`` marks a formula that is correct but loses precision on hard
# inputs; it is what the student is told when their output shows that loss.
VARIANTS_DIR = os.path.join(KIT_ROOT, "tests", "variants")
# The names a variant may import: exactly those transformer_utils.py itself imports.
_ALLOWED_IMPORTS = {
    ("math", None),
    ("torch", None),
    ("torch.nn", "nn"),
    ("torch.nn.functional", "F"),
}


class Variant:
    """One correct answer of the corpus (see VARIANTS_DIR)."""

    def __init__(self, exercise, path):
        self.exercise, self.path = exercise, path
        self.name = os.path.splitext(os.path.basename(path))[0]
        text = open(path, encoding="utf-8").read()
        tree = ast.parse(text, filename=path)
        self.precision_note = ""
        functions = []
        for node in tree.body:
            if isinstance(node, ast.Import):
                names = {(a.name, a.asname) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(f"{node.module}.{a.name}", a.asname) for a in node.names}
            elif isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "PRECISION_NOTE":
                self.precision_note = ast.literal_eval(node.value)
                continue
            elif isinstance(node, ast.FunctionDef):
                functions.append(node)
                continue
            else:
                continue
            if not names <= _ALLOWED_IMPORTS:
                raise ValueError(f"{path}:{node.lineno}: transformer_utils.py does not import that")
        if [f.name for f in functions] != ["forward"]:
            raise ValueError(f"{path}: define exactly one function, forward(self, ...)")
        body = functions[0].body[1:] if ast.get_docstring(functions[0]) else functions[0].body
        lines = text.splitlines(keepends=True)[body[0].lineno - 1 : functions[0].end_lineno]
        self.body = textwrap.dedent("".join(lines))

    def source(self, reference_source=None):
        """transformer_utils.py with this answer in place of the reference solution."""
        from instructor.markers import find_regions

        source = reference_source or open(tu.__file__, encoding="utf-8").read()
        regions = [
            r for r in find_regions(source, "transformer_utils.py") if r.exercise == self.exercise
        ]
        if len(regions) != 1:
            raise ValueError(f"{self.exercise}: a variant replaces exactly one solution region")
        lines = source.splitlines(keepends=True)
        r = regions[0]
        lines[r.begin - 1 : r.end] = [textwrap.indent(self.body, r.indent)]
        return "".join(lines)

    def module(self):
        """The variant's transformer_utils, as a module object (nothing written to disk)."""
        module = types.ModuleType("transformer_utils")
        module.__file__ = self.path
        exec(compile(self.source(), self.path, "exec"), module.__dict__)
        return module


def corpus(exercise_id):
    """The correct answers of one exercise, sorted by name ([] when it has none)."""
    folder = os.path.join(VARIANTS_DIR, exercise_id)
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if n.endswith(".py"))
    return [Variant(exercise_id, os.path.join(folder, n)) for n in names]
