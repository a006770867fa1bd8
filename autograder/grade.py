"""Grade one submission: exercises in the sandbox, prediction files and required files here.

The grader never imports student code. It reads files from the submission with
symlink-refusing, size-capped opens, runs student code only through
:func:`autograder.sandbox.run_sandbox`, and compares what comes back with the hidden targets.
"""

import os
import re
import signal
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import compare, data, evidence, sandbox
from .assignment import KIT_ROOT, load_assignment, sandbox_kit_files
from .declarations import number_key, read_declarations
from .predictions import PredictionError, grade_predictions, read_capped, read_labels
from .results import normalise, safe_print, write_results

MAX_SOURCE_BYTES = 2_000_000
MAX_OUTPUT_BYTES = 64 * 1024 * 1024


@dataclass
class GradeOptions:
    """Knobs for local runs and tests (Gradescope uses the defaults)."""

    assignment: str = None
    timeout_s: float = None  # overrides the per-exercise wall-clock limit
    startup_s: float = None
    insecure: bool = False  # run even if the sandbox probe finds the hidden data readable
    namespaces: bool = True  # use Linux namespaces when available
    userns: bool = False  # force the user-namespace mode even as root (tests)
    uid: int = sandbox.NOBODY
    reference_dir: str = None
    kit_root: str = None
    quiet: bool = False
    full_output: bool = False  # the console summary shows every line of each test's output
    shared: tuple = ()  # folders holding other uploads and results (grade-all): kept secret


def find_submission_root(submission, marker="transformer_utils.py"):
    """The folder holding the upload: itself, or its single sub-folder if zipped in one."""
    submission = Path(submission)
    if (submission / marker).exists() or (submission / marker).is_symlink():
        return submission
    subdirs = [
        p
        for p in submission.iterdir()
        if p.is_dir() and not p.is_symlink() and not p.name.startswith((".", "__MACOSX"))
    ]
    if len(subdirs) == 1 and (subdirs[0] / marker).exists():
        return subdirs[0]
    return submission


REQUIRED_FILE_TAG = "required file"
SUMMARY_LINES = 6  # lines of each test's output the console summary shows (--full-output: all)


def _test(name, number, score, max_score, output, visibility="visible", passed=None):
    if passed is None:
        passed = score >= max_score
    return {
        "name": name,
        "number": number,
        "score": score,
        "max_score": max_score,
        "output": output,
        "visibility": visibility,
        "status": "passed" if passed else "failed",
    }


_SIGNALS = {
    signal.SIGKILL: "was killed (SIGKILL): most likely it exceeded the memory or process limit",
    signal.SIGXCPU: "exceeded the CPU time limit",
    signal.SIGXFSZ: "tried to write a file larger than the file size limit",
    signal.SIGSEGV: "crashed (segmentation fault)",
    signal.SIGABRT: "aborted (SIGABRT)",
}


def _timed_out(out_dir, limits, source):
    """The time-out's feedback: what the process was doing, and the student's line that was
    running (from the stacks the supervisor asked for before killing it)."""
    try:
        stage = evidence.read_text(out_dir / "stage.txt", 2000).strip().splitlines()[0]
    except (evidence.EvidenceError, IndexError):
        stage = ""
    try:
        where, importing = evidence.running_line(
            evidence.read_text(out_dir / "stack.txt", 256_000), source
        )
    except evidence.EvidenceError:
        where, importing = "", False
    if importing:
        stage = "importing transformer_utils.py"
    message = f"Timed out after {limits['timeout_s']:g} s wall-clock"
    message += f" while {evidence.shown(stage, 200)}" if stage else ""
    message += (
        " (infinite loop, or far too slow?). The process and everything it started were killed."
    )
    if stage.startswith("importing"):  # no exercise ran yet: the file's top level is to blame
        message += (
            "\nCode at the top level of transformer_utils.py runs when the grader imports it: "
            'keep experiments and loops inside functions or under if __name__ == "__main__":.'
        )
    return message + (f"\nIt was running {where}" if where else "")


def _exercise_message(ex_id, decl, res, limits, source=""):
    """Return (passed, message) for one exercise from the sandbox's evidence, or
    (outputs, types) to compare. Everything read here is hostile data (see evidence.py)."""
    rec = res.records.get(ex_id)
    if rec is None:
        if not res.startup.get("ok"):
            # no student code ran yet, so the sandbox's own output is safe to show
            why = res.startup.get("error") or f"no report; sandbox output: {res.log[-600:]!r}"
            if why.startswith("refusing") and (
                res.probe.get("readable") or res.probe.get("writable")
            ):
                why = _refusal(res.probe)
            return False, (
                f"The sandbox could not start ({why}); this is a grader problem, "
                "please tell the course staff."
            )
        return False, (
            "Not run: the sandbox stopped before this exercise (an earlier exercise "
            "killed it, or the overall time limit was reached)."
        )
    out_dir = res.out_dir / ex_id
    if rec.get("timed_out"):
        return False, _timed_out(out_dir, limits, source)
    try:
        status = evidence.load_status(out_dir / "status.json")
    except evidence.EvidenceError as exc:
        sig = rec.get("signal")
        if sig:
            why = _SIGNALS.get(sig, f"was killed by signal {sig}")
            return False, f"Your code {why}; no output was produced."
        if "file not found" not in str(exc):
            return False, f"The exercise's report could not be read back ({exc})."
        return False, (
            f"The exercise process exited (code {rec.get('exit_code')}) before "
            "reporting: does your code call sys.exit(), os._exit() or kill itself?"
        )
    kind, msg, tb = status["kind"], status["message"], status["traceback"]
    if kind == "not_implemented":
        return False, f"{decl.name} is not implemented yet ({msg})."
    if kind == "forbidden":
        return False, f"{decl.name} uses a forbidden torch operation: {msg}"
    if kind == "memory":
        return False, f"{decl.name} ran out of memory (limit +{limits['memory_mb']} MB): {msg}"
    if kind == "skipped":
        return False, f"The test was skipped (unittest.SkipTest): skipping earns no credit. {msg}"
    if kind == "exit":
        return False, f"Your code called sys.exit()/exit() while being graded: {msg}"
    if kind != "ok":
        return False, f"{decl.name} raised an error: {msg}\n{tb}"
    try:
        outputs = evidence.load_outputs(out_dir / "outputs.npz", MAX_OUTPUT_BYTES)
    except ValueError as exc:  # any malformed or oversized archive is the student's
        return False, f"The outputs could not be read back ({evidence.shown(str(exc), 300)})."
    return outputs, status["types"]


def _refusal(probe):
    """The probe found protected paths within the sandbox's reach: say which, and what helps."""
    found = []
    if probe.get("readable"):
        found.append(f"readable (must stay hidden): {', '.join(probe['readable'][:4])}")
    if probe.get("writable"):
        found.append(f"writable (must stay unchanged): {', '.join(probe['writable'][:4])}")
    return (
        f"refusing to run student code: as the sandbox sees them, these paths are "
        f"{'; '.join(found)}. Make them root-only (chmod go-rwx), or grade where Linux "
        "namespaces work (as root, or as a user allowed user namespaces)"
    )


def _exercise_limits(assignment, opts):
    limits = vars(assignment.limits).copy()
    if opts.timeout_s is not None:
        limits["timeout_s"] = float(opts.timeout_s)
        limits["cpu_s"] = max(1, int(opts.timeout_s))
    if opts.startup_s is not None:
        limits["startup_s"] = float(opts.startup_s)
    return limits


def _start_exercises(assignment, decls, sub_root, opts, protected, unwritable):
    """Start the sandbox on the student's code; returns a state for :func:`_finish_exercises`.
    A failure here (an exercise's hidden data, the sandbox's start) is that part's zero with
    its reason, never the whole grading's."""
    ids = list(assignment.student_exercises)
    limits = _exercise_limits(assignment, opts)
    state = {
        "ids": ids,
        "limits": limits,
        "res": None,
        "error": None,
        "errors": {},  # exercise id -> why it cannot be graded
        "source": "",
        "data": {},
        "points": {i: assignment.exercise_points.get(i, decls[i].points) for i in ids},
    }
    try:
        source = read_capped(sub_root / "transformer_utils.py", MAX_SOURCE_BYTES)
    except PredictionError as exc:
        state["error"] = f"transformer_utils.py: {exc}. Upload your transformer_utils.py."
        return state
    state["source"] = source.decode("utf-8", "replace")
    for i in ids:
        try:
            state["data"][i] = data.load_exercise(i, opts.reference_dir or data.REFERENCE_DIR)
        except Exception as exc:  # the instructor's data: this exercise only
            state["errors"][i] = _grader_problem(exc)
    graded = [i for i in ids if i in state["data"]]
    if not graded:
        return state
    try:
        state["res"] = sandbox.start_sandbox(
            [{"id": i, "timeout_s": limits["timeout_s"]} for i in graded],
            source,
            sandbox_kit_files(Path(opts.kit_root or KIT_ROOT)),
            {i: state["data"][i].inputs_pickle for i in graded},
            _Limits(limits),
            protected,
            unwritable,
            uid=opts.uid,
            allow_namespaces=opts.namespaces,
            require_safe=not opts.insecure,
            force_userns=opts.userns,
        )
    except Exception as exc:
        state["error"] = f"The sandbox could not start ({_grader_problem(exc)})"
    return state


def _grader_problem(exc):
    return (
        f"{type(exc).__name__}: {evidence.shown(str(exc), 500)}; this is a grader problem, "
        "please tell the course staff"
    )


_MARKER = re.compile(r"^\[sandbox\s+[\d.]+s\] (?:running exercise (\S+)|all exercises done)$")


def split_log(log):
    """The captured output, split by the supervisor's "running exercise <id>" lines."""
    sections, current = {}, None
    for line in log.splitlines(keepends=True):
        m = _MARKER.match(line.rstrip("\n"))
        if m:
            current = m.group(1)
        elif current:
            sections[current] = sections.get(current, "") + line
    return sections


def _finish_exercises(state, decls):
    """Wait for the sandbox and turn its evidence into one test result per exercise."""
    res = state["res"]
    try:
        if res is not None:
            try:
                sandbox.finish_sandbox(res)
            except Exception as exc:
                state["error"], state["res"] = f"The sandbox failed ({_grader_problem(exc)})", None
        return exercise_tests(state, decls)
    finally:
        if res is not None:
            sandbox.cleanup(res)


def exercise_tests(state, decls):
    """One test result per exercise. Each is graded on its own: whatever goes wrong while
    grading one (hostile evidence, or the grader's own bug) is that exercise's zero with
    the reason, and the others are still graded."""
    res = state["res"]
    try:
        printed = split_log(res.log) if res is not None else {}
    except Exception:
        printed = {}
    tests = []
    for i in state["ids"]:
        d, points = decls[i], state["points"][i]
        try:
            passed, message = _grade_exercise(i, d, state)
        except Exception as exc:
            passed, message = False, f"This part could not be graded ({_grader_problem(exc)})."
        shown = printed.get(i, "").strip()
        if shown and not passed:
            message += f"\nWhat your code printed (last 1500 characters):\n{shown[-1500:]}"
        title = f"{d.number} {d.name} ({i})"
        tests.append(
            _test(
                title,
                d.number,
                points if passed else 0.0,
                points,
                ("Passed: " if passed else "Failed: ") + message,
                d.visibility,
            )
        )
    return tests


def _grade_exercise(i, decl, state):
    """``(passed, message)`` of one exercise."""
    res = state["res"]
    if i in state["errors"]:
        return False, state["errors"][i]
    if res is None:
        return False, state["error"]
    verdict = _exercise_message(i, decl, res, state["limits"], state.get("source", ""))
    if verdict[0] is False:
        return verdict
    outputs, types = verdict
    exd = state["data"][i]
    return compare.grade_outputs(
        outputs, types, exd.targets, exd.mistakes, decl.rtol, decl.atol, exd.tolerances
    )


class _Limits:
    """Attribute view of the limits dict, as run_sandbox expects."""

    def __init__(self, d):
        self.__dict__.update(d)


def describe_protections(res, caps, limits, protected):
    """Human-readable list of the protections that were active (for stdout and results)."""
    lines = ["Sandbox protections for this run:"]
    lines.append(
        "  - student code runs only in sandbox child processes (one fresh process per "
        "exercise); the grader never imports it"
    )
    if res is None:
        lines.append("  - (no student code was run)")
        return "\n".join(lines)
    probe = res.probe or {}
    if caps.userns:
        lines.append("  - user namespace (no root needed): student code runs as the grader's own "
                     "user with every capability dropped [active]")  # fmt: skip
    elif caps.root and probe.get("uid") not in (None, 0):
        lines.append(f"  - unprivileged user: uid {probe.get('uid')} [active, verified]")
    else:
        lines.append("  - unprivileged user: NOT active (grader is not root)")
    if caps.namespaces:
        lines.append(
            "  - mount namespace with a minimal read-only root (system folders and the Python "
            "installation; no repository, hidden data, labels or results inside) [active]"
        )
        lines.append("  - PID namespace (leftover processes die with the sandbox) [active]")
        lines.append("  - network namespace without interfaces (no network) [active]")
    else:
        lines.append(f"  - namespaces: NOT available ({caps.reason}); relying on file permissions")
        lines.append("  - network isolation: NOT available on this platform")
    readable = probe.get("readable", [])
    writable = probe.get("writable", [])
    if "error" in probe or not probe:
        lines.append(f"  - protected paths: probe FAILED ({probe.get('error', 'no report')})")
    elif readable or writable:
        lines.append(f"  - protected paths: UNSAFE, readable {readable}, writable {writable}")
    else:
        lines.append(
            "  - hidden data, labels, solution and uploads unreadable; results file, kit and "
            "Python installation unwritable, as the sandbox sees them [verified by probe, "
            f"{getattr(res, 'checked', len(protected))} paths]"
        )
    if getattr(res, "cgroups", None):
        names = " and ".join(
            sorted({"memory" if "memory" in str(c) else "pids" for c in res.cgroups})
        )
        lines.append(
            f"  - {names} cgroup around the whole sandbox (fork storms cannot exhaust the "
            "machine) [active]"
        )
    else:
        lines.append("  - cgroups: NOT available here (per-process rlimits only)")
    lines.append(
        f"  - limits per exercise: {limits['timeout_s']:g} s wall, {limits['cpu_s']} s CPU, "
        f"+{limits['memory_mb']} MB address space, {limits['max_procs']} processes, "
        f"{limits['max_file_mb']} MB files; every process of the sandbox user killed "
        "afterwards"
    )
    if caps.namespaces:
        lines.append(
            "  - each exercise in a mount namespace of its own: fresh /tmp and /dev/shm, no "
            "file of another exercise visible [active]"
        )
    elif getattr(res, "drop", False):
        lines.append(
            "  - what the sandbox user left in /tmp, /var/tmp and /dev/shm deleted after each "
            "exercise [active]"
        )
    if probe.get("exec_refused"):
        lines.append("  - exercise processes cannot start other programs (seccomp) [active]")
    else:
        lines.append("  - refusing other programs (seccomp): NOT available here")
    lines.append(
        f"  - clean environment, stdin /dev/null, output captured and capped at "
        f"{limits['max_output_kb']} KB; results returned as .npz (no pickle), read as "
        "untrusted data"
    )
    return "\n".join(lines)


def grade(submission, results_path, labels_dir, options=None):
    """Grade ``submission``; always leaves a valid results.json at ``results_path``."""
    opts = options or GradeOptions()
    start = time.monotonic()
    results_path = Path(results_path).absolute()
    write_results(
        results_path,
        {"output": "Grading started but did not finish (grader crash or time limit).", "tests": []},
    )
    results = {"tests": [], "output": ""}
    try:
        labels = Path(labels_dir).absolute() if labels_dir is not None else None
        results = _grade(Path(submission).absolute(), results_path, labels, opts)
    except KeyboardInterrupt:
        results["output"] = "Grading was interrupted."
        raise
    except sandbox.SandboxUnavailable as exc:  # a machine problem, said in one line
        results["output"] = str(exc)
    except Exception as exc:  # the grader's own failure: still a valid results.json
        results["output"] = (
            f"The autograder failed ({type(exc).__name__}: {exc}). Please tell the course staff."
        )
    finally:
        results["execution_time"] = time.monotonic() - start
        write_results(results_path, results)
    results = normalise(results)
    if not opts.quiet:
        safe_print(summary(results, None if opts.full_output else SUMMARY_LINES))
    return results


def summary(results, lines_per_test=SUMMARY_LINES):
    """The console summary: the grader's header (what it is, the protections), each test's
    score and the first ``lines_per_test`` lines of its output (None: all), then the total."""
    lines = [results["output"]] if results.get("output") else []
    total = sum(t["score"] for t in results["tests"])
    max_total = sum(t["max_score"] for t in results["tests"])
    for t in results["tests"]:
        lines.append(f"[{t['score']:g}/{t['max_score']:g}] {t['name']}")
        output = str(t["output"]).splitlines()
        for line in output[:lines_per_test]:
            lines.append(f"      {line}")
        if lines_per_test is not None and len(output) > lines_per_test:
            more = len(output) - lines_per_test
            lines.append(f"      ... {more} more line(s): --full-output shows them")
    lines.append(f"Total: {total:g}/{max_total:g}  ({results.get('execution_time', 0):.1f} s)")
    return "\n".join(lines)


def _grade(submission, results_path, labels_dir, opts):
    assignment = load_assignment(opts.assignment)
    kit_root = Path(opts.kit_root or KIT_ROOT)
    decls = read_declarations(kit_root / "test_functions.py")
    for i in assignment.student_exercises:
        if i not in decls:
            raise ValueError(f"exercise {i!r} is not declared in test_functions.py")
    if not submission.is_dir():
        raise ValueError(f"submission folder {submission} does not exist")
    sub_root = find_submission_root(submission)
    reference_dir = Path(opts.reference_dir or data.REFERENCE_DIR).absolute()
    protected, unwritable = _protected_paths(
        assignment, kit_root, reference_dir, labels_dir, submission, results_path, opts
    )
    # the instructor's files: check them before running anything
    if labels_dir is None and assignment.predictions:
        names = ", ".join(p.file for p in assignment.predictions)
        raise ValueError(f"this assignment grades {names}: pass --labels with their true labels")
    labels = read_labels(labels_dir, assignment.predictions) if assignment.predictions else {}
    caps = sandbox.require_sandbox(opts.namespaces, opts.userns, opts.insecure)
    # Start the sandbox first: its torch import is the slow part, so the checks below overlap.
    state = _start_exercises(assignment, decls, sub_root, opts, protected, unwritable)
    try:
        other_tests, leaderboard = _grade_files(assignment, sub_root, labels)
    finally:
        tests = _finish_exercises(state, decls)
    tests += other_tests
    tests.sort(key=lambda t: number_key(t["number"]))  # Gradescope lists them in this order
    res = state["res"]
    limits = state["limits"]
    try:
        protections = describe_protections(res, caps, limits, protected)
    except Exception as exc:  # never at the cost of the grades
        protections = f"Sandbox protections: could not be listed ({_grader_problem(exc)})"
    out = [f"Autograder for {assignment.name}.", protections]
    if res is not None and res.log_bytes > limits["max_output_kb"] * 1024:
        out.append(
            f"Your code printed {res.log_bytes} bytes; only the first "
            f"{limits['max_output_kb']} KB were kept."
        )
    if res is not None and not opts.quiet:
        safe_print("---- sandbox output (capped) ----", file=sys.stderr)
        shown = res.log if opts.full_output else res.log[-4000:]
        if len(shown) < len(res.log):
            safe_print("... (the last 4000 characters; --full-output shows all)", file=sys.stderr)
        safe_print(shown, file=sys.stderr)
    return {"tests": tests, "output": "\n".join(out), "leaderboard": leaderboard}


def _protected_paths(assignment, kit_root, reference_dir, labels_dir, submission, results, opts):
    """What student code must not read (secret) and must not change (untouched).

    The sandbox's probe checks each path, and what a folder holds, as the sandbox sees it,
    before any student code runs. Folders above them are not on the list: listing /tmp or
    /home reveals nothing, and the Python installation may live under them."""
    kit_root = Path(kit_root).absolute()
    secret = [
        kit_root,
        kit_root / "transformer_utils.py",  # the reference solution
        kit_root / "instructor",
        kit_root / ".git",
        data.PACKAGE_DIR,
        reference_dir,
        data.PREPARED_DIR,
        data.cache_dir(),
        *([labels_dir] if labels_dir is not None else []),
        *(labels_dir / p.file for p in assignment.predictions if labels_dir is not None),
        submission,
        *(Path(p).absolute() for p in opts.shared),
    ]
    untouched = [results, kit_root, kit_root / "test_functions.py", kit_root / "kit",
                 kit_root / "instructor", data.PACKAGE_DIR, submission]  # fmt: skip
    if labels_dir is not None:
        untouched.append(labels_dir)
    return [str(p) for p in secret], [str(p) for p in untouched]


def _grade_files(assignment, sub_root, labels):
    """Prediction files and required files (no student code runs). Each part is graded on
    its own: a failure while grading one is that part's zero with the reason."""
    tests, leaderboard = [], []
    for part in assignment.predictions:
        try:
            score, accuracy, message = grade_predictions(
                sub_root / part.file, labels[part.file], part
            )
        except Exception as exc:
            score, accuracy = 0.0, None
            message = f"{part.file}: this part could not be graded ({_grader_problem(exc)})."
        tests.append(_test(part.name, part.number, score, part.points, message, part.visibility))
        if part.leaderboard:
            leaderboard.append(
                {"name": part.leaderboard, "value": accuracy or 0.0, "order": "desc"}
            )
    for req in assignment.required_files:
        tests.append(_required_file_test(sub_root, req))
    return tests, leaderboard


def _required_file_test(sub_root, req):
    ok = False
    try:
        st = os.lstat(sub_root / req.file)
        ok = stat.S_ISREG(st.st_mode) and st.st_size > 0
    except (OSError, ValueError):  # ValueError: a name with a NUL byte
        pass
    message = (
        f"{req.file} found (it is checked, not run)."
        if ok
        else f"{req.file} is missing or empty: please upload it."
    )
    test = _test(
        req.name, req.number, req.points if ok else 0.0, req.points, message, req.visibility,
        passed=ok,
    )  # fmt: skip
    return test | {"tags": [REQUIRED_FILE_TAG]}  # grade-all's CSV says present / missing
