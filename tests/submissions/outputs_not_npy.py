# Replace numpy.savez: an outputs archive whose member is not an .npy array.
import os as _os
import zipfile as _zipfile

import numpy as _np


def _savez(path, **arrays):
    with _zipfile.ZipFile(path, "w") as zf:
        zf.writestr("c0.npy", b"not an array")
        zf.writestr("notes.txt", b"hello")


if _os.path.basename(_os.getcwd()) == "self_attention":
    _np.savez = _savez
EXPECT = {"self_attention": (0, "not a valid .npy array")}
