"""Forbidden torch built-ins: an exercise must not call torch's own version of itself.

Two layers, one rule (``FORBIDDEN``):

* ``forbidden_ops(exercise_id)`` records every torch function called (TorchFunctionMode) and
  every low-level aten operator that ran (TorchDispatchMode) in the thread that enters it,
  for the message's names, and raises ``ForbiddenOpError`` naming the first forbidden one.
* the **process-wide guard** (entered by ``forbidden_ops``, or for a whole process by
  ``guard_process``): torch's modes are thread-local, so a thread, a thread pool or a forked
  process would escape them. The guard replaces, in torch's dispatcher (one table for the
  whole process), the kernels of every forbidden aten operator by one that records the use
  and raises ``ForbiddenOpError``, and wraps the forbidden Python functions of
  ``torch.nn.functional`` the same way. Every thread sees the dispatcher, and a forked child
  inherits it; the autograder's sandbox refuses to start other programs (a fresh interpreter
  would not have the guard) and installs the guard before the student's module is imported,
  so import-time code is covered too. A forked child's uses reach the parent through the
  guard's record file.

It is feedback, not a security boundary: a determined student can hide an op (correctness
cannot be faked).
"""

import contextlib
import functools
import os
import threading

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_ATTENTION_OPS = ("scaled_dot_product", "_native_multi_head_attention", "flash_attention")
_NORM_OPS = ("layer_norm", "group_norm", "batch_norm", "instance_norm", "rms_norm")
_CONV_OPS = ("convolution", "conv2d", "conv_depthwise", "slow_conv", "thnn_conv")

# Per exercise: names of torch functions (as torch.nn.functional / torch call them)
# and substrings of low-level "aten" operator names that are not allowed.
FORBIDDEN = {
    "self_attention": {
        "functions": ("scaled_dot_product_attention", "multi_head_attention_forward"),
        "aten": _ATTENTION_OPS,
    },
    "layer_norm": {
        "functions": ("layer_norm", "group_norm", "batch_norm", "instance_norm", "rms_norm"),
        "aten": _NORM_OPS,
    },
    "multi_head_attention": {
        "functions": ("scaled_dot_product_attention", "multi_head_attention_forward"),
        "aten": _ATTENTION_OPS,
    },
    "patch_embedding": {"functions": ("conv2d",), "aten": _CONV_OPS},
    "encoder_layer": {"functions": (), "aten": ("_transformer_encoder_layer_fwd",)},
    "differential_attention": {
        "functions": (
            "scaled_dot_product_attention",
            "multi_head_attention_forward",
            "layer_norm",
            "group_norm",
            "rms_norm",
        ),
        "aten": _ATTENTION_OPS + _NORM_OPS,
    },
    "conv2d": {"functions": ("conv2d", "conv_transpose2d"), "aten": _CONV_OPS},
}
NO_RULES = {"functions": (), "aten": ()}

# The dispatcher keys whose kernels the guard replaces: every CPU tensor's computation ends
# in a CPU kernel, and "Autograd" (every autograd key) catches composite operators before
# they decompose into basic ones (a math fallback, a layout without a CPU kernel).
_GUARD_KEYS = ("CPU", "Autograd")


class ForbiddenOpError(AssertionError):
    """Raised when an exercise uses torch's built-in version of itself."""


def _message(exercise_id, name):
    return (
        f"exercise '{exercise_id}' used torch's built-in {name!r}; this exercise must "
        "be built from basic tensor operations (matmul, sum, mean, exp, softmax, "
        "reshape, ...)."
    )


@functools.cache
def _aten_ops(substrings):
    """The aten operators (with overload) whose names contain one of ``substrings`` (cached:
    the sandbox's supervisor looks them up once, before forking the exercise processes)."""
    if not substrings:
        return []
    names = torch._C._dispatch_get_all_op_names()
    return sorted(
        n[len("aten::") :]
        for n in names
        if n.startswith("aten::") and any(s in n[len("aten::") :] for s in substrings)
    )


class _ProcessGuard:
    """The forbidden ops of one exercise refused in every thread of this process (and in
    the processes it forks), each use recorded."""

    def __init__(self, exercise_id, record_path=None):
        self.exercise_id = exercise_id
        self.rules = FORBIDDEN.get(exercise_id, NO_RULES)
        self.record_path = record_path
        self.used = []
        self._lock = threading.Lock()
        self._library = None
        self._wrapped = []  # (module, name, original)

    def _use(self, name):
        with self._lock:
            self.used.append(name)
        if self.record_path:  # a forked child tells its parent through this file
            try:
                fd = os.open(self.record_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, (name[:100] + "\n").encode())
                finally:
                    os.close(fd)
            except OSError:
                pass
        raise ForbiddenOpError(_message(self.exercise_id, name))

    def install(self):
        try:
            ops = _aten_ops(self.rules["aten"])
            if ops:
                self._library = torch.library.Library("aten", "IMPL")
                for op in ops:
                    refuse = functools.partial(_refuse_op, self, op.split(".")[0])
                    for key in _GUARD_KEYS:
                        self._library.impl(op, refuse, key)
            functional = torch.nn.functional
            for name in self.rules["functions"]:
                original = getattr(functional, name, None)
                if callable(original):
                    self._wrapped.append((functional, name, original))
                    setattr(functional, name, _refusing_function(self, name, original))
        except BaseException:  # e.g. another Python kernel already there: leave nothing behind
            self.uninstall()
            raise
        return self

    def uninstall(self):
        for module, name, original in reversed(self._wrapped):
            setattr(module, name, original)
        self._wrapped = []
        if self._library is not None:
            self._library._destroy()  # the original kernels are back
            self._library = None

    def recorded(self):
        """Every use so far, in this process and (through the record file) its children."""
        with self._lock:
            names = list(self.used)
        if self.record_path:
            try:
                with open(self.record_path, "rb") as fh:
                    text = fh.read(65536).decode("ascii", "replace")
                names += [line for line in text.splitlines() if line]
            except OSError:
                pass
        return names

    def check(self):
        names = self.recorded()
        if names:
            raise ForbiddenOpError(_message(self.exercise_id, names[0]))


def _refuse_op(guard, name, *args, **kwargs):
    guard._use(name)


def _refusing_function(guard, name, original):
    @functools.wraps(original)
    def refuse(*args, **kwargs):
        guard._use(name)

    del refuse.__wrapped__  # no way back to the original through the wrapper
    return refuse


_ACTIVE = []  # the process-wide guard in force, if any (one at a time)
_ACTIVE_LOCK = threading.Lock()


def guard_process(exercise_id, record_path=None):
    """Refuse the exercise's forbidden ops in this whole process from now on (the autograder's
    one-process-per-exercise sandbox calls it before importing the student's module).
    Returns the guard: ``guard.check()`` raises if any thread or forked child used one."""
    with _ACTIVE_LOCK:
        if _ACTIVE:
            raise RuntimeError("a process-wide forbidden-op guard is already installed")
        guard = _ProcessGuard(exercise_id, record_path).install()
        _ACTIVE.append(guard)
    return guard


class _FunctionRecorder(TorchFunctionMode):
    """Records the names of the torch functions called (e.g. 'layer_norm')."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.add(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


class _AtenRecorder(TorchDispatchMode):
    """Records the low-level operators that actually ran (e.g. 'aten.native_layer_norm')."""

    def __init__(self):
        super().__init__()
        self.names = set()

    @classmethod
    def _should_skip_dynamo(cls):
        # Nothing is compiled under this mode. Without this, torch wraps __torch_dispatch__
        # in a lazy dynamo.disable whose first call imports torch._dynamo: about 2 s, half
        # of the whole suite's CPU time (and of a grading run's).
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _process_guard(exercise_id):
    """The guard in force for ``exercise_id``: the process's own, else one for this block."""
    with _ACTIVE_LOCK:
        active = _ACTIVE[0] if _ACTIVE else None
        if active is None:
            active = _ProcessGuard(exercise_id).install()
            _ACTIVE.append(active)
            owned = True
        else:
            owned = False
    try:
        yield active if active.exercise_id == exercise_id else None
    finally:
        if owned:
            with _ACTIVE_LOCK:
                _ACTIVE.remove(active)
                active.uninstall()


@contextlib.contextmanager
def forbidden_ops(exercise_id):
    """Fail if the code run inside uses torch's own version of the exercise.

    Usage: ``with forbidden_ops("layer_norm"): out = norm(x)``. Raises
    ForbiddenOpError naming the operator that was used, in whichever thread it ran.
    """
    rules = FORBIDDEN.get(exercise_id, NO_RULES)
    functions, aten = _FunctionRecorder(), _AtenRecorder()

    def check(guard):
        used = sorted(name for name in functions.names if name in rules["functions"])
        used += sorted(op for op in aten.names if any(bad in op for bad in rules["aten"]))
        if used:
            raise ForbiddenOpError(_message(exercise_id, used[0]))
        if guard is not None:
            guard.check()  # another thread, or a forked child

    with _process_guard(exercise_id) as guard, functions, aten:
        try:
            yield
        except Exception:
            check(guard)  # a forbidden op explains the crash better than the crash itself
            raise
        check(guard)
