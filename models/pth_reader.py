"""Reads a PyTorch legacy (pre-1.6, non-zip) .pth state dict into numpy, without torch.

A .pth is a pickle, and unpickling can call any importable function (os.system included), so the
pickles here go through an unpickler whose find_class allows only what a state dict needs:
`torch._utils._rebuild_tensor_v2` and the storage type names (both replaced by harmless local
stand-ins, torch is never imported) and `collections.OrderedDict`. Anything else, a truncated
file or a malformed record raises PthError (a ValueError) with one line naming the file.

Legacy layout: pickles of the magic number, the protocol version and a dict of type sizes; the
state dict pickle (tensors refer to storages by persistent id ('storage', type, key, location,
size[, None])); a pickle of the storage keys; then per key, in that order, an int64 little-endian element
count and the raw little-endian data.
"""
from __future__ import annotations

import collections
import io
import pickle

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class PthError(ValueError):
    """A .pth file we refuse to read: truncated, corrupt, or asking for a class we do not allow."""


class _StorageType:
    def __init__(self, name):
        self.name, self.dtype = name, np.dtype(STORAGE_DTYPES[name]).newbyteorder("<")


class _Storage:
    def __init__(self, key, storage_type, size):
        self.key, self.dtype, self.size = key, storage_type.dtype, size


class _TensorRef:
    """What `_rebuild_tensor_v2(storage, offset, shape, stride, ...)` describes; filled in later."""

    def __init__(self, storage, offset, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor without a storage")
    ints = (storage_offset, *size, *stride)
    if len(size) != len(stride) or not all(type(v) is int and v >= 0 for v in ints):
        raise pickle.UnpicklingError("tensor with a bad offset, shape or stride")
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, storages):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module, name):
        # Fresh stand-ins per lookup: a BUILD opcode aimed at one cannot alter the module's objects.
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda *args: _rebuild_tensor_v2(*args)
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"refused to load class {module}.{name} (not in the allow-list)")

    def persistent_load(self, pid):
        # ('storage', type, key, location, size[, view_metadata]); views of storages are not supported.
        if (not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], str)
                or type(pid[4]) is not int or pid[4] < 0 or (len(pid) == 6 and pid[5] is not None)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, size = pid[:5]
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type, size)
        return self.storages[key]


def _load(file, storages):
    return _RestrictedUnpickler(file, storages).load()


def _tensor(ref, data, path):
    shape, stride = ref.shape, ref.stride
    count = int(np.prod(shape, dtype=np.int64))
    if count:
        last = ref.offset + sum((dim - 1) * step for dim, step in zip(shape, stride))
        if last >= data.size:
            raise PthError(f"{path}: corrupt .pth: a tensor reaches past its storage '{ref.storage.key}'")
    itemsize = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(data[ref.offset:] if count else data, shape=shape,
                                           strides=tuple(step * itemsize for step in stride))
    return np.array(view, dtype=data.dtype.newbyteorder("="))


def read_pth(path) -> dict[str, np.ndarray]:
    """Legacy .pth state dict -> {name: numpy array} (copies, native byte order)."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise PthError(f"{path}: cannot read: {err.strerror or err}") from None
    if raw[:2] == b"PK":
        raise PthError(f"{path}: zip-format .pth (PyTorch >= 1.6) is not supported; "
                       "expected the legacy format")
    file = io.BytesIO(raw)
    storages: dict[str, _Storage] = {}
    try:
        if _load(file, storages) != MAGIC_NUMBER:
            raise PthError(f"{path}: not a legacy PyTorch .pth file (bad magic number)")
        if _load(file, storages) != PROTOCOL_VERSION:
            raise PthError(f"{path}: unsupported .pth protocol version")
        sys_info = _load(file, storages)
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
            raise PthError(f"{path}: unsupported .pth: not written little-endian")
        state = _load(file, storages)
        keys = _load(file, storages)
    except PthError:
        raise
    except Exception as err:  # UnpicklingError, EOFError, ValueError, ... from a bad stream
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PthError(f"{path}: corrupt or refused .pth: {message}") from None
    if not isinstance(state, dict) or not isinstance(keys, list):
        raise PthError(f"{path}: not a state dict")
    data = {}
    for key in keys:
        if key not in storages:
            raise PthError(f"{path}: corrupt .pth: unknown storage '{key!s:.40}'")
        header = file.read(8)
        if len(header) < 8:
            raise PthError(f"{path}: truncated .pth: storage '{key}' is missing")
        count = int(np.frombuffer(header, "<i8")[0])
        storage = storages[key]
        if count != storage.size:
            raise PthError(f"{path}: corrupt .pth: storage '{key}' has {count} elements, "
                           f"expected {storage.size}")
        nbytes = count * storage.dtype.itemsize
        chunk = file.read(nbytes)
        if len(chunk) < nbytes:
            raise PthError(f"{path}: truncated .pth: storage '{key}' has {len(chunk)} of {nbytes} bytes")
        data[key] = np.frombuffer(chunk, storage.dtype)
    tensors = {}
    for name, ref in state.items():
        if (not isinstance(name, str) or not isinstance(ref, _TensorRef)
                or not isinstance(ref.storage, _Storage)):
            raise PthError(f"{path}: not a state dict of tensors (entry {name!r:.40})")
        if ref.storage.key not in data:
            raise PthError(f"{path}: corrupt .pth: storage '{ref.storage.key}' of {name} is missing")
        tensors[name] = _tensor(ref, data[ref.storage.key], path)
    return tensors
