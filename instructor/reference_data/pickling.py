"""Reproducible pickling: tensors copied out of their graphs and stored by value, so that
the same data gives the same bytes on every run."""

import io
import pickle
from collections import OrderedDict

import numpy
import torch

PICKLE_PROTOCOL = 4


def _clean(value):
    """Detached, contiguous, own-storage copies, so pickles are small and reproducible."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().contiguous()
    if isinstance(value, OrderedDict):
        return OrderedDict((k, _clean(v)) for k, v in value.items())
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clean(v) for v in value)
    return value


class _RawBytes:
    """Pickles as numpy.frombuffer(data, dtype)."""

    def __init__(self, data, dtype):
        self.data, self.dtype = data, dtype

    def __reduce__(self):
        return (numpy.frombuffer, (self.data, self.dtype))


class _FlatTensor:
    """Pickles as torch.tensor(numpy.frombuffer(...)): a copy, so it is writable."""

    def __init__(self, tensor):
        self.array = tensor.detach().cpu().contiguous().reshape(-1).numpy()

    def __reduce__(self):
        return (torch.tensor, (_RawBytes(self.array.tobytes(), str(self.array.dtype)),))


class _ReproduciblePickler(pickle.Pickler):
    """Pickles tensors by value only.

    torch's own tensor pickling embeds a memory address as the storage key, so the
    same tensor gives different bytes on every run. Here a tensor becomes
    ``torch.tensor(numpy.frombuffer(raw_bytes, dtype)).reshape(shape)``: plain
    ``pickle.load`` still returns an ordinary torch tensor.
    """

    def reducer_override(self, obj):
        if type(obj) is torch.Tensor:
            return (torch.Tensor.reshape, (_FlatTensor(obj), tuple(obj.shape)))
        return NotImplemented


def _dumps(obj):
    buffer = io.BytesIO()
    _ReproduciblePickler(buffer, protocol=PICKLE_PROTOCOL).dump(obj)
    return buffer.getvalue()
