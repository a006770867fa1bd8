"""Gather what to upload into one folder and check it as the grader will.

    python -m kit.upload RUN [RUN ...] --out upload/

``course.yml`` (next to the demos; the release writes it from the course's assignment)
lists this course's uploads. For each one:

- your code (e.g. ``transformer_utils.py``): copied from the kit's folder;
- a prediction file (e.g. ``test_flower.txt``): copied from the RUN that wrote it, after the
  grader's checks: not made from synthetic data, one integer class per line within the
  course's classes, as many lines as the run wrote test predictions;
- a training script (e.g. ``script_q2.py``): written here for the RUN whose predictions it
  belongs to: ONE self-contained file holding the source of every module of the kit and of
  your code that the demo runs, and the run's exact settings; ``python script_q2.py`` (with
  ``--data_dir`` where the data lives) trains that run again;
- anything else (a writeup): you add it yourself; it is listed as missing until you do.

Nothing is overwritten: ``--out`` must be new or empty, or ``--force`` replaces the files
this command writes. Exit status 0 when every upload is there and passes the checks.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from kit.errors import UserError
from kit.finished_runs import PREDICTIONS, demo_script, read_run
from kit.runs import atomic_write_text, read_predictions
from kit.stopping import run_main

KIT_ROOT = Path(__file__).resolve().parent.parent
COURSE_FILE = "course.yml"


def read_course(root: Path = KIT_ROOT) -> dict:
    """The course's uploads (``course.yml``)."""
    path = root / COURSE_FILE
    try:
        course = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError:
        raise UserError(f"{path} not found: this kit's course lists no uploads") from None
    except yaml.YAMLError:
        raise UserError(f"{path} is not valid YAML; restore it from your course's kit") from None
    if not isinstance(course.get("uploads"), list):
        raise UserError(f"{path} has no 'uploads:' list; restore it from your course's kit")
    return course


def check_predictions(path: Path, num_classes: int, run) -> str:
    """The grader's checks of a prediction file, and one more: as many lines as the run said
    it wrote. Returns a line for the report; UserError names what is wrong."""
    try:
        preds, synthetic = read_predictions(path)
    except ValueError:
        raise UserError(f"{path} holds a line that is not an integer class") from None
    if synthetic:
        raise UserError(
            f"{path} comes from SYNTHETIC data (its first line says so) and earns no credit; "
            "train on the real data and upload that run's file"
        )
    bad = [p for p in preds if not 0 <= p < num_classes]
    if bad:
        raise UserError(f"{path}: class {bad[0]} is outside 0..{num_classes - 1}")
    said = [
        line
        for line in run.log_text.splitlines()
        if " wrote " in line and " predictions to " in line and path.name in line
    ]
    wrote = int(said[-1].split(" wrote ")[1].split()[0]) if said else None
    if wrote is not None and wrote != len(preds):
        raise UserError(
            f"{path} has {len(preds)} lines but the run wrote {wrote} predictions: it was "
            "changed since; upload the run's own file"
        )
    return f"{len(preds)} predictions, classes 0..{num_classes - 1}"


# Run in a fresh Python by modules_of. A module is the kit folder's own when its file is where
# its name puts it under the folder (``a/b.py`` or ``a/b/__init__.py`` for ``a.b``): a file
# merely somewhere below it, as in the ``.venv`` that README's Quick start makes inside the
# kit's folder, belongs to an installed package.
_FIND_MODULES = """
import json, os, sys
import {demo}
root = {root!r}


def own(name, module):
    path = getattr(module, "__file__", None) or ""
    where = os.path.join(*name.split("."))
    places = (where + ".py", os.path.join(where, "__init__.py"))
    return bool(path) and os.path.relpath(path, root) in places


print(json.dumps(sorted(n for n, m in list(sys.modules.items()) if own(n, m))))
"""


def modules_of(demo: str, root: Path = KIT_ROOT) -> list[str]:
    """The modules of the kit's folder that the demo script ``demo`` imports, found by
    importing it in a fresh Python."""
    code = _FIND_MODULES.format(demo=Path(demo).stem, root=str(root))
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise UserError(f"cannot import {demo} to gather its code ({last})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def source_of(module: str, root: Path = KIT_ROOT) -> tuple[str, bool]:
    """``(source, is_package)`` of one module of the kit's folder."""
    path = root.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return (path / "__init__.py").read_text(encoding="utf-8"), True
    return path.with_suffix(".py").read_text(encoding="utf-8"), False


SCRIPT = '''#!/usr/bin/env python3
"""{name}: all the code that trained {run} ({demo}, preset {preset}).

Written by ``python -m kit.upload``: the source of every module of the kit and of the
student's code that {demo} runs, and the run's exact settings (its config.yaml). Run it
where the data is (or pass --data_dir) to train the same run again:

    python {name} --output_dir rerun [--data_dir DATA]
"""

import importlib.abc
import importlib.util
import os
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = {settings!r}
SECTION, PRESET, DEMO = {section!r}, {preset!r}, {demo_module!r}
PACKAGES = {packages!r}
# Every module, as it was in the kit's folder (file by file, verbatim):
SOURCES = {{}}
{sources}


class _Sources(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports the modules above from this file instead of from the disk."""

    def find_spec(self, name, path=None, target=None):
        if name not in SOURCES:
            return None
        return importlib.util.spec_from_loader(name, self, is_package=name in PACKAGES)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        name = module.__name__
        # where the file would be, next to this script (modules find config.yml from it)
        module.__file__ = os.path.join(HERE, *name.split("."), "__init__.py") if (
            name in PACKAGES
        ) else os.path.join(HERE, *name.split(".")) + ".py"
        if name in PACKAGES:
            module.__path__ = []
        exec(compile(SOURCES[name], module.__file__, "exec"), module.__dict__)


if __name__ == "__main__":
    sys.meta_path.insert(0, _Sources())
    presets = tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False)
    yaml.safe_dump({{SECTION: {{PRESET: SETTINGS}}, "data_sources": {{}}}}, presets)
    presets.close()
    demo = importlib.import_module(DEMO)
    sys.exit(demo.main(["--config", presets.name, "--exp_name", PRESET, *sys.argv[1:]]))
'''


def literal(text: str) -> str:
    """``text`` as a Python literal that shows it verbatim where it can (a raw triple-quoted
    string), else ``repr``."""
    if "'''" not in text and not text.endswith("\\") and "\r" not in text:
        return "r'''" + text + "'''"
    return repr(text)


def training_script(name: str, run, root: Path = KIT_ROOT) -> str:
    """The text of a self-contained script that trains ``run`` again."""
    demo = demo_script(run.kind)
    modules = modules_of(demo, root)
    sources, packages = [], []
    for module in modules:
        text, package = source_of(module, root)
        sources.append(f"\nSOURCES[{module!r}] = {literal(text)}\n")
        if package:
            packages.append(module)
    settings = {k: v for k, v in run.config.items() if k not in ("exp_name", "synthetic_data")}
    return SCRIPT.format(
        name=name,
        run=run.path,
        demo=demo,
        demo_module=Path(demo).stem,
        preset=run.config.get("exp_name", "preset"),
        section=run.kind,  # each demo's config.yml section is named after its kind
        settings=settings,
        sources="".join(sources),
        packages=packages,
    )


def prepare_out(out: Path, names: list[str], force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    clash = [n for n in names if (out / n).exists()]
    if clash and not force:
        raise UserError(
            f"--out {out} already holds {', '.join(clash)}; choose a new folder or add --force"
        )
    out.mkdir(parents=True, exist_ok=True)


def gather(runs: list[str], out: str, force: bool = False, root: Path = KIT_ROOT) -> bool:
    """Gather and check every upload of the course into ``out``; True when all are there
    and pass. Prints one line per upload."""
    course = read_course(root)
    uploads = course["uploads"]
    by_predictions = {}
    for given in runs:
        run = read_run(given)
        file = PREDICTIONS.get(run.kind)
        if file and (run.path / file).is_file():
            by_predictions.setdefault(file, run)
    out = Path(out)
    prepare_out(out, [u["file"] for u in uploads if u.get("kind") != "document"], force)
    ok = True
    for upload in uploads:
        name, kind = upload["file"], upload.get("kind", "document")
        try:
            if kind == "code":
                shutil.copyfile(root / name, out / name)
                line = "copied from the kit's folder"
            elif kind == "predictions":
                source = upload.get("from", name)
                run = by_predictions.get(source)
                if run is None:
                    raise UserError(f"no RUN given that wrote {source}; add its run folder")
                line = check_predictions(run.path / source, upload["num_classes"], run)
                shutil.copyfile(run.path / source, out / name)
                line += f", from {run.path}"
            elif kind == "script":
                run = by_predictions.get(upload["script_of"])
                if run is None:
                    raise UserError(
                        f"no RUN given that wrote {upload['script_of']}; add its run folder"
                    )
                atomic_write_text(out / name, training_script(name, run, root))
                line = f"the code and settings of {run.path}"
            elif (out / name).is_file():
                line = "there"
            else:
                raise UserError("add it yourself (the grader checks that it is there)")
            print(f"ok       {name}: {line}")
        except UserError as err:
            ok = False
            print(f"MISSING  {name}: {err}")
    print(
        f"everything is in {out}: upload its files"
        if ok
        else f"{out} is not complete yet: see the lines marked MISSING"
    )
    return ok


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m kit.upload", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("runs", nargs="*", metavar="RUN", help="run folders (--output_dir)")
    parser.add_argument("--out", default="upload", help="the folder to gather into (new)")
    parser.add_argument("--force", action="store_true", help="replace files already in --out")
    args = parser.parse_args(argv)

    def go():
        if not gather(args.runs, args.out, args.force):
            sys.exit(1)

    run_main(go)


if __name__ == "__main__":
    main()
