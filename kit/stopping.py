"""Stopping a run without losing it: signals, Ctrl-C, exit codes and the resume command.

- SIGTERM, SIGUSR1 (Slurm's warning before its time limit) or a first Ctrl-C set a flag
  (``stop_requested``) instead of killing the process; the Trainer checkpoints at its next
  step and raises ``Preempted``. A second Ctrl-C quits at once, without saving.
- ``run_main`` wraps a command: a ``UserError`` becomes one line and exit status 1, a
  checkpointed stop exit status 75 (EX_TEMPFAIL: the sbatch scripts requeue on it) with the
  command that continues the run, a second Ctrl-C exit status 130.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
from typing import Any, Callable

from kit.errors import UserError
from kit.runs import CHECKPOINT_FILE, current_run_dir, is_existing_run

EXIT_PREEMPTED = (
    75  # EX_TEMPFAIL: "checkpoint written, resume me"; the sbatch scripts requeue on it
)
EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT: a second Ctrl-C, stopped without a new checkpoint


class Preempted(Exception):
    """Raised by the Trainer after it saved a checkpoint because a stop was requested
    (SIGTERM, SIGUSR1, a first Ctrl-C, or ``Trainer.request_stop``)."""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
_stop_event = threading.Event()
_ctrl_c_presses = 0
_stop_reason = ""
CTRL_C_NOTICE = (
    "\nCtrl-C: stopping after the current step and writing checkpoint.pt "
    "(press Ctrl-C again to quit at once without saving)\n"
)


def handle_stop_signal(signum: int | None = None, _frame=None) -> None:
    """Ask training to write a checkpoint and stop at its next step (also a signal handler).

    The first Ctrl-C (SIGINT) asks for a stop like SIGTERM does and says so; a second one
    raises KeyboardInterrupt at once (``run_main`` exits 130 without saving), and a third
    gets Python's default handling, so an impatient student is never stuck.
    """
    global _ctrl_c_presses, _stop_reason
    if signum is not None and not _stop_reason:
        _stop_reason = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    if signum == signal.SIGINT:
        _ctrl_c_presses += 1
        if _ctrl_c_presses > 1:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        # os.write, not print: print() inside a signal handler can hit "reentrant call"
        # when the signal lands while the main thread is printing to the same stream.
        with contextlib.suppress(OSError):
            os.write(sys.stderr.fileno(), CTRL_C_NOTICE.encode())
    _stop_event.set()


def stop_requested() -> bool:
    return _stop_event.is_set()


def stop_reason() -> str:
    """What asked for the stop: "Ctrl-C", "SIGTERM", "SIGUSR1", or "" (no signal)."""
    return _stop_reason


def clear_stop_request() -> None:
    global _ctrl_c_presses, _stop_reason
    _ctrl_c_presses, _stop_reason = 0, ""
    _stop_event.clear()


@contextlib.contextmanager
def stop_on_signals():
    """While active, SIGTERM, SIGUSR1 and a first Ctrl-C (SIGINT) call ``handle_stop_signal``
    instead of killing the process.

    ``run_main`` enters it before any slow start-up work, so a signal that arrives while the
    data loads is not lost: the Trainer sees the request at its first step, writes
    checkpoint.pt and the process exits with status 75 (resumable). Only the main thread
    may install handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, handle_stop_signal) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def resume_command(argv: list[str] | None = None) -> str:
    """The command line that continues this run: the one that started it, plus --resume.

    ``sys.orig_argv`` is the command as typed (``python demo_<question>.py --exp_name ...``).
    Under torchrun or srun each worker sees only its own command line, so the advice is
    then to repeat the launcher's command.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "the same torchrun/srun command with --resume added"
    argv = list(argv if argv is not None else getattr(sys, "orig_argv", sys.argv))
    if not any(a in ("--resume", "--resume=true", "--resume=True") for a in argv):
        argv = [a for a in argv if a not in ("--noresume", "--resume=false", "--resume=False")]
        argv.append("--resume")
    return shlex.join(argv)


def run_main(main: Callable[[], Any]) -> None:
    """Call ``main()`` with stop-on-signal handlers installed.

    A ``UserError`` becomes one line on stderr and exit status 1. ``Preempted`` (checkpoint
    written: SIGTERM, SIGUSR1 or one Ctrl-C) prints the command that continues the run and
    exits 75, the status the Slurm scripts requeue on. A second Ctrl-C exits 130 at once,
    without a new checkpoint.
    """
    try:
        with stop_on_signals():
            main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Preempted as err:
        by = f" by {stop_reason()}" if stop_reason() else ""
        print(f"stopped{by}: {err}; continue with: {resume_command()}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except KeyboardInterrupt:
        run_dir = current_run_dir()
        if run_dir is None or not is_existing_run(run_dir):
            then = "no run folder was written; start again with the same command"
        elif (run_dir / CHECKPOINT_FILE).is_file():
            then = f"{run_dir / CHECKPOINT_FILE} from before is kept; continue with: "
            then += resume_command()
        else:
            then = f"{run_dir} has no checkpoint yet; restart it from step 0 with: "
            then += resume_command()
        print(f"\ninterrupted (second Ctrl-C): quit without saving; {then}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        clear_stop_request()
