"""Forbidden torch built-ins: an exercise must not call torch's own version of itself.

``forbidden_ops(exercise_id)`` records every torch function called (TorchFunctionMode) and
every low-level aten operator that ran (TorchDispatchMode) while the student's code runs,
and raises ``ForbiddenOpError`` naming the first forbidden one. It is feedback, not a
security boundary: a determined student can hide an op (correctness cannot be faked).
"""

import contextlib

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
    "window_attention": {
        "functions": ("scaled_dot_product_attention", "multi_head_attention_forward"),
        "aten": _ATTENTION_OPS,
    },
}


class ForbiddenOpError(AssertionError):
    """Raised when an exercise uses torch's built-in version of itself."""


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
def forbidden_ops(exercise_id):
    """Fail if the code run inside uses torch's own version of the exercise.

    Usage: ``with forbidden_ops("layer_norm"): out = norm(x)``. Raises
    ForbiddenOpError naming the operator that was used.
    """
    rules = FORBIDDEN.get(exercise_id, {"functions": (), "aten": ()})
    functions, aten = _FunctionRecorder(), _AtenRecorder()

    def check():
        used = sorted(name for name in functions.names if name in rules["functions"])
        used += sorted(op for op in aten.names if any(bad in op for bad in rules["aten"]))
        if used:
            raise ForbiddenOpError(
                f"exercise '{exercise_id}' used torch's built-in {used[0]!r}; this exercise must "
                "be built from basic tensor operations (matmul, sum, mean, exp, softmax, "
                "reshape, ...)."
            )

    with functions, aten:
        try:
            yield
        except Exception:
            check()  # a forbidden op explains the crash better than the crash itself
            raise
    check()
