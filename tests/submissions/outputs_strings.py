# Replace numpy.savez (the sandbox saves the outputs with it): outputs of the right shapes
# that hold strings.
import numpy as _np

_real_savez = _np.savez


def _savez(path, **arrays):
    _real_savez(path, **{k: _np.full(v.shape, "x") for k, v in arrays.items()})


_np.savez = _savez
EXPECT = {
    "self_attention": (0, "is not a plain number type"),
    "layer_norm": (0, "is not a plain number type"),
}
