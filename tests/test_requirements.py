"""The requirements files: complete, ranges whose both ends CI tests, a lock that fits them, and
the places that install them (CI, README, Gradescope, the Slurm site settings) in agreement."""

import ast
import re
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# torch's CUDA runtime: torch pins it itself, and it exists for some platforms only.
CUDA_RUNTIME = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")


def read_requirements(name, seen=None):
    """canonical name -> Requirement for one requirements file, following ``-r`` includes."""
    seen = set() if seen is None else seen
    reqs = {}
    for raw in (ROOT / name).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            included = line[3:].strip()
            assert included not in seen, f"{name}: -r {included} twice"
            seen.add(included)
            reqs.update(read_requirements(included, seen))
            continue
        assert not line.startswith("-"), f"{name}: unexpected option line {raw!r}"
        req = Requirement(line)
        key = canonicalize_name(req.name)
        assert key not in reqs, f"{name}: {req.name} listed twice"
        reqs[key] = req
    return reqs


def read_lock():
    """canonical name -> pinned Version; every line must be an exact ``name==version`` pin."""
    pins = {}
    for raw in (ROOT / "requirements-lock.txt").read_text().splitlines():
        if not raw.strip() or raw.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!]*)", raw.strip())
        assert match, f"requirements-lock.txt: not an exact pin: {raw!r}"
        key = canonicalize_name(match[1])
        assert key not in pins, f"requirements-lock.txt: {match[1]} pinned twice"
        pins[key] = Version(match[2])
    return pins


RUNTIME = read_requirements("requirements.txt")
DEV = read_requirements("requirements-dev.txt")
LOCK = read_lock()


def test_dev_requirements_include_the_runtime_ones():
    assert set(RUNTIME) <= set(DEV)
    for name in ("torch", "torchvision", "numpy", "matplotlib", "pytest", "ruff", "torchattacks"):
        assert name in DEV, f"{name} missing from requirements(-dev).txt"


@pytest.mark.parametrize("name", sorted(DEV))
def test_range_runs_from_the_locked_version_to_an_untested_release(name):
    """Both ends tested: CI installs the lock (the lower end) and the newest the range allows."""
    req, pinned = DEV[name], LOCK.get(name)
    assert pinned is not None, f"{req.name} is required but not pinned in requirements-lock.txt"
    assert req.specifier.contains(pinned), f"lock pins {req.name}=={pinned}, outside {req}"
    lower = [s for s in req.specifier if s.operator == ">="]
    upper = [s for s in req.specifier if s.operator == "<"]
    assert [Version(s.version) for s in lower] == [pinned], (
        f"{req}: its lower end must be the locked version (>={pinned}), the one CI tests"
    )
    assert len(upper) == 1, f"{req}: needs one upper end '<' at the first untested release"
    assert req.marker is None and not req.extras, f"{req}: markers/extras are not tested by CI"


def test_lock_is_complete_and_leaves_the_cuda_runtime_to_torch():
    assert not [n for n in LOCK if CUDA_RUNTIME.match(n)], "pin torch only, not its CUDA runtime"
    # The transitive closure: what the direct requirements need must be pinned too.
    for needed in ("pillow", "sympy", "filelock", "jinja2", "scipy", "requests", "setuptools"):
        assert needed in LOCK, f"requirements-lock.txt lacks {needed} (write a full pip freeze)"
    assert "pip" not in LOCK


def _imported_modules(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _kit_python_files():
    out = subprocess.run(
        ["git", "ls-files", "-z", "--", "*.py"], cwd=ROOT, capture_output=True, check=False
    )
    if out.returncode != 0:  # not a git checkout (e.g. an unpacked copy): every file on disk
        return sorted(p for p in ROOT.rglob("*.py") if ".venv" not in p.parts)
    return sorted(ROOT / name for name in out.stdout.decode().split("\0") if name)


def test_every_third_party_import_is_a_requirement():
    """A module the kit imports must come from a distribution named in a requirements file:
    requirements.txt for what students and the grader run, requirements-dev.txt for the tests."""
    files = _kit_python_files()
    # The kit's own modules and packages (benchmarks and tests import each other by name).
    local = {p.stem for p in files} | {p.relative_to(ROOT).parts[0] for p in files}
    providers = packages_distributions()
    missing = []
    for path in files:
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "tests" and "submissions" in rel.parts:
            continue  # hostile uploads for the grader, never run by the kit
        allowed = DEV if rel.parts[0] in ("tests", "benchmarks") else RUNTIME
        needs = {}
        for module in _imported_modules(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in local or top == "__future__":
                continue
            names = needs.setdefault(top, set())
            names |= {canonicalize_name(d) for d in providers.get(top, [])}
            # torch.utils.tensorboard is torch's module, but it needs the tensorboard package.
            if module.startswith("torch.utils.tensorboard"):
                needs.setdefault("tensorboard", set()).add("tensorboard")
        for top, names in sorted(needs.items()):
            if not names:
                missing.append(f"{rel}: imports {top}, which no installed package provides")
            elif not names & set(allowed):
                missing.append(f"{rel}: imports {top} (from {', '.join(sorted(names))})")
    assert not missing, "add to requirements.txt / requirements-dev.txt:\n" + "\n".join(missing)


def _readme_test_block():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    found = [b for b in blocks if "pip install -r requirements-dev.txt" in b]
    assert len(found) == 1, "README.md needs one block installing requirements-dev.txt"
    return [line.strip() for line in found[0].splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command_in_fresh_venvs_of_both_files():
    command = _readme_test_block()[-1]
    assert command == "python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text()
    code = [line.split("#", 1)[0].strip() for line in ci.splitlines()]
    # Directly, or through run_pytest ARGS: `python -m pytest "$@"`, failing on no tests.
    args = command.removeprefix("python -m pytest")
    wrapped = any(line.startswith('python -m pytest "$@"') for line in code) and (
        f"run_pytest{args}" in code
    )
    direct = any(line.startswith(command + " ") or line == command for line in code)
    assert direct or wrapped, f".ci/run must run README's test command {command!r} exactly"
    slow = f"{command} -m slow"  # and the slow tier
    assert slow in code or (wrapped and f"run_pytest{args} -m slow" in code), slow
    # the lock's venv under /tmp; the newest inside the kit's folder, where README's .venv is
    assert 'make_venv "$WORK/lock" requirements-lock.txt' in code and "mktemp -d /tmp/" in ci
    assert 'NEWEST="$REPO/.ci-venv"' in code
    assert 'PIP_CONSTRAINT=/dev/null make_venv "$NEWEST" requirements-dev.txt' in code
    for demo in ("demo_flower.py flower_smoke", "demo_pixmo.py pixmo_smoke"):
        assert any(line.startswith(f"run_demo {demo} ") for line in code), demo


def test_readme_quick_start_creates_a_venv_and_offers_the_lock():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "python3 -m venv .venv" in quick
    assert "pip install -r requirements.txt" in quick
    assert "pip install -r requirements-lock.txt" in quick


def test_slurm_site_settings_install_the_lock():
    site = (ROOT / "cluster_site.sh").read_text()
    block = site.split("BEGIN SITE SETTINGS", 1)[1].split("END SITE SETTINGS", 1)[0]
    assert "pip install -r requirements-lock.txt" in block


def test_gradescope_setup_installs_the_packed_lock(tmp_path):
    from instructor.gradescope import build_zip

    # No graded exercises: preparing their data is slow and tested in test_autograder.py.
    assignment = (ROOT / "instructor" / "assignments" / "cs444_mp3.yml").read_text()
    assignment, count = re.subn(
        r"^student_exercises:.*$", "student_exercises: []", assignment, flags=re.M
    )
    assert count == 1
    (tmp_path / "assignment.yml").write_text(assignment)
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "test_flower.txt").write_text("".join(f"{i % 102}\n" for i in range(200)))
    (labels / "test_pixmo.txt").write_text("".join(f"{i % 20}\n" for i in range(100)))
    build_zip(tmp_path / "a.zip", labels, assignment_path=tmp_path / "assignment.yml")
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        assert zf.read("requirements-lock.txt") == (ROOT / "requirements-lock.txt").read_bytes()
        setup = zf.read("setup.sh").decode()
    installs = [line for line in setup.splitlines() if line.strip().startswith("pip_install ")]
    assert installs and all('-c "$LOCK"' in line for line in installs), installs
    assert 'LOCK="$HERE/requirements-lock.txt"' in setup
