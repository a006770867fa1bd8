"""Helpers shared by the sbatch-script tests: the README's cluster commands, a copy of the kit."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

KIT = Path(__file__).resolve().parents[2]
SCRIPTS = {name: KIT / f"{name}.sbatch" for name in ("flower", "pixmo", "scratch", "caption")}
SITE_FILE = KIT / "cluster_site.sh"
# What a run of the kit needs; tests, data, runs and the grader stay behind.
SKIP = {".git", "tests", "runs", "synthetic-data", "autograder", "instructor", "benchmarks"}


def readme_cluster_section() -> str:
    """The README text between <!-- BEGIN cluster --> and <!-- END cluster -->."""
    text = (KIT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- BEGIN cluster -->(.*?)<!-- END cluster -->", text, re.S)
    assert match, "README.md has no <!-- BEGIN cluster --> ... <!-- END cluster --> section"
    return match.group(1)


def readme_bash_blocks() -> list[str]:
    """The ```bash blocks of the README's cluster section that run sbatch."""
    blocks = re.findall(r"```bash\n(.*?)```", readme_cluster_section(), re.S)
    return [b for b in blocks if re.search(r"^sbatch ", b, re.M)]


def readme_block_for(exp_name: str) -> str:
    """The README's bash block that submits preset ``exp_name``."""
    found = [b for b in readme_bash_blocks() if re.search(rf"EXP_NAME={exp_name}[,\s]", b)]
    assert len(found) == 1, f"README cluster section: expected one sbatch block for {exp_name}"
    return found[0]


def parse_sbatch(line: str) -> dict[str, str]:
    """The pieces of a README sbatch line: exports, --output, --error and the script."""
    exports = re.search(r"--export=(\S+)", line)
    assert exports, f"no --export in: {line}"
    pairs = dict(item.split("=", 1) for item in exports.group(1).split(",") if "=" in item)
    output = re.search(r"--output=(\S+)", line)
    error = re.search(r"--error=(\S+)", line)
    return {
        "export_all": exports.group(1).split(",")[0] == "ALL",
        "vars": {k: v.strip("\"'") for k, v in pairs.items()},
        "output": output.group(1).strip("\"'") if output else "",
        "error": error.group(1).strip("\"'") if error else "",
        "script": line.split()[-1],
    }


def copy_kit(dest: Path) -> Path:
    """Copy the files a training run needs into ``dest`` (runs there must not touch the repo)."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in KIT.iterdir():
        if item.name in SKIP or item.name.startswith("."):
            continue
        if item.is_file():
            shutil.copy2(item, dest / item.name)
        elif item.is_dir() and (item / "__init__.py").exists():
            shutil.copytree(item, dest / item.name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest
