"""Helpers for the demo tests: a demo's ``main(argv)`` run inside the test process, a real
signal sent from inside a step, and the one command line per demo run as a user runs it.

Starting a fresh Python and torch costs seconds; ``main(argv)`` (``kit.cli.run_demo``) runs
the same code (flags, ``run_main``'s one-line errors and exit statuses) in this process and
returns the exit status instead of exiting. What only a real process shows (``app.run``,
``sys.exit``, anything printed while importing) is checked once per demo by a
``CommandLine`` (``command_line_of``), started in the background so that it loads beside
the in-process tests.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kit.stopping import handle_stop_signal
from kit.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def call_demo(main, args, capfd=None) -> tuple[int, str, str]:
    """``main(args)`` in this process on one CPU thread (the subprocess tests' determinism
    setting, OMP_NUM_THREADS=1): (exit status, stdout, stderr). ``capfd`` also catches what
    is written to the file descriptors (the Ctrl-C notice, C-level warnings); without it
    (in a module-scoped fixture) Python's streams are read."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if capfd is None:
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main([str(a) for a in args])
            return code, out.getvalue(), err.getvalue()
        capfd.readouterr()  # only this call's output
        code = main([str(a) for a in args])
        out, err = capfd.readouterr()
        return code, out, err
    finally:
        torch.set_num_threads(threads)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def assert_one_error_line(code: int, out: str, err: str, needle: str) -> str:
    """Exit status 1, no traceback, exactly one line on stderr: ``error: ...needle...``."""
    assert code == 1, f"exit status {code}\n{out[-2000:]}\n{err[-2000:]}"
    assert "Traceback" not in out + err, err[-2000:]
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and needle in lines[0], lines[0]
    return lines[0]


def snapshot(folder) -> dict:
    """Every file under ``folder`` with its bytes (to prove that nothing was written)."""
    return {p: p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@contextlib.contextmanager
def signal_after_step(signum: int, step: int):
    """While active, a demo's Trainer sends ``signum`` to this process right after its
    optimiser step number ``step`` (counted over the run, from 1): a real signal, caught by
    the handler that ``run_main`` installs, as Slurm's SIGTERM or a Ctrl-C would be."""
    real_init = Trainer.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        inner = self.on_step_end

        def on_step_end(trainer, epoch, step_in_epoch):
            if inner is not None:
                inner(trainer, epoch, step_in_epoch)
            if trainer.global_step == step:
                # Without the demo's handler the signal would stop pytest itself.
                handler = signal.getsignal(signum)
                assert handler is handle_stop_signal, f"{signum!r} is not caught: {handler}"
                os.kill(os.getpid(), signum)

        self.on_step_end = on_step_end

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "__init__", init)
        yield


class CommandLine:
    """``python <demo> <args>`` in ``cwd``, started now in the background (a fresh Python
    and torch load for seconds beside the other tests); ``result()`` waits for it."""

    def __init__(self, demo: str | Path, args: list[str], cwd: Path, env: dict | None = None):
        self.cwd = Path(cwd)
        self.args = [sys.executable, str(demo), *args]
        self.proc = subprocess.Popen(
            self.args,
            cwd=cwd,
            env=env or dict(os.environ, PYTHONUNBUFFERED="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._result = None

    def result(self, timeout: float = 300) -> subprocess.CompletedProcess:
        if self._result is None:
            out, err = self.proc.communicate(timeout=timeout)
            self._result = subprocess.CompletedProcess(self.args, self.proc.returncode, out, err)
        return self._result

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


# The one command line each demo's test module checks (its test_the_command_line_* test): a
# bad input as a user types it. CPU only, offline, one thread, as the subprocess tests run.
COMMAND_LINES = {
    "test_flower_demo": ("demo_flower.py", ["--exp_name", "vit_deeep", "--output_dir", "run"]),
    "test_pixmo_demo": ("demo_pixmo.py", ["--exp_name", "pixmo_nope"]),
    "test_scratch_demo": ("demo_scratch.py", ["--exp_name", "nope", "--output_dir", "run"]),
    "test_caption_demo": ("demo_caption.py", ["--exp_name", "nope", "--output_dir", "run"]),
}
COMMAND_LINE_TEST = "test_the_command_line_"
COMMAND_LINE_ENV = dict(
    os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", VIT_OFFLINE="1"
)
_started: dict[str, CommandLine] = {}


def command_line_of(request, tmp_path_factory) -> CommandLine:
    """The command-line check of the asking test module (a module-scoped fixture's
    ``request``). The first module to ask starts the checks of every demo module whose
    command-line test is among the tests to run, so that each fresh Python loads beside
    the in-process tests instead of being waited for in turn; each module closes its own."""
    module = request.module.__name__
    if module not in _started:
        wanted = {
            item.module.__name__
            for item in request.session.items
            if item.name.startswith(COMMAND_LINE_TEST) and item.module.__name__ in COMMAND_LINES
        }
        for name in sorted(wanted | {module}):
            if name not in _started:
                demo, args = COMMAND_LINES[name]
                cwd = tmp_path_factory.mktemp(f"{name}_command_line")
                _started[name] = CommandLine(ROOT / demo, args, cwd, COMMAND_LINE_ENV)
    return _started.pop(module)
