"""Reading PyTorch checkpoints without PyTorch: both formats, strided views, and refusal of
pickles that would run code."""

import io
import os
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from tf_shopee.errors import UserError
from tf_shopee.models.torch_checkpoint import (
    LEGACY_MAGIC_NUMBER,
    UnsafeCheckpointError,
    read_torch_state_dict,
)


class _Tensor:
    """What the fake ``torch.save`` below pickles: a strided view of a named storage."""

    def __init__(self, key, storage, offset, shape, stride):
        self.key, self.storage, self.offset = key, storage, offset
        self.shape, self.stride = shape, stride


@pytest.fixture
def fake_torch(monkeypatch):
    """Modules named ``torch`` and ``torch._utils`` with the globals a checkpoint references,
    so that the standard pickler writes exactly the opcodes ``torch.save`` writes."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in ("FloatStorage", "LongStorage"):
        storage_class = type(name, (), {})
        storage_class.__module__ = "torch"
        setattr(torch, name, storage_class)

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled by reference, never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class _CheckpointPickler(pickle.Pickler):
    def __init__(self, file, torch):
        super().__init__(file, protocol=2)
        self.torch = torch

    def reducer_override(self, obj):
        if isinstance(obj, _Tensor):
            return self.torch._utils._rebuild_tensor_v2, (
                ("storage", obj.key), obj.offset, obj.shape, obj.stride, False, OrderedDict()
            )
        return NotImplemented

    def persistent_id(self, obj):
        if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "storage":
            key = obj[1]
            values = self.storages[key]
            kind = "LongStorage" if values.dtype == np.int64 else "FloatStorage"
            return ("storage", getattr(self.torch, kind), key, "cpu", values.size, None)
        return None


def _write_checkpoint(path, torch, tensors, storages, *, zip_format):
    """A file laid out as ``torch.save`` lays out a state dict (legacy or zip format)."""
    main = io.BytesIO()
    pickler = _CheckpointPickler(main, torch)
    pickler.storages = storages
    pickler.dump(tensors)
    if zip_format:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", main.getvalue())
            for key, values in storages.items():
                little_endian = values.astype(values.dtype.newbyteorder("<"))
                archive.writestr(f"archive/data/{key}", little_endian.tobytes())
        return
    with open(path, "wb") as file:
        for header in (LEGACY_MAGIC_NUMBER, 1001,
                       {"protocol_version": 1001, "little_endian": True,
                        "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(header, file, protocol=2)
        file.write(main.getvalue())
        pickle.dump(list(storages), file, protocol=2)
        for values in storages.values():
            file.write(struct.pack("<q", values.size))
            file.write(values.tobytes())


@pytest.mark.parametrize("zip_format", [False, True], ids=["legacy", "zip"])
def test_state_dict_round_trip_with_strided_views_offsets_and_int64(tmp_path, fake_torch,
                                                                    zip_format):
    storage = np.arange(20, dtype=np.float32)
    counter = np.array([7], dtype=np.int64)
    tensors = OrderedDict(
        [
            ("conv.weight", _Tensor("0", storage, 0, (2, 3), (3, 1))),
            # A transposed view starting at element 6: rows of stride 1, columns of stride 2.
            ("conv.weight_t", _Tensor("0", storage, 6, (2, 3), (1, 2))),
            ("bn.num_batches_tracked", _Tensor("1", counter, 0, (), ())),
        ]
    )
    path = tmp_path / "model.pth"
    _write_checkpoint(path, fake_torch, tensors, {"0": storage, "1": counter},
                      zip_format=zip_format)

    state = read_torch_state_dict(path)

    assert list(state) == ["conv.weight", "conv.weight_t", "bn.num_batches_tracked"]
    np.testing.assert_array_equal(state["conv.weight"], [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(state["conv.weight_t"], [[6, 8, 10], [7, 9, 11]])
    assert state["conv.weight"].dtype == np.float32
    assert state["bn.num_batches_tracked"].dtype == np.int64
    assert int(state["bn.num_batches_tracked"]) == 7


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "it_ran"
    plain = tmp_path / "plain.pth"
    plain.write_bytes(pickle.dumps({"weight": _RunsCode(marker)}, protocol=2))
    # The same payload where a real legacy checkpoint keeps its state dict, after valid headers.
    legacy = tmp_path / "legacy.pth"
    with open(legacy, "wb") as file:
        for header in (LEGACY_MAGIC_NUMBER, 1001, {"little_endian": True}):
            pickle.dump(header, file, protocol=2)
        pickle.dump({"weight": _RunsCode(marker)}, file, protocol=2)

    for path in (plain, legacy):
        with pytest.raises(UnsafeCheckpointError, match=r"system.*could run code") as caught:
            read_torch_state_dict(path)
        assert str(path) in str(caught.value)
    assert not marker.exists()


def test_truncated_missing_and_foreign_files_are_user_errors(tmp_path, fake_torch):
    storage = np.arange(6, dtype=np.float32)
    path = tmp_path / "model.pth"
    _write_checkpoint(path, fake_torch, {"w": _Tensor("0", storage, 0, (6,), (1,))},
                      {"0": storage}, zip_format=False)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(UserError, match="truncated"):
        read_torch_state_dict(truncated)
    with pytest.raises(UserError, match="cannot read checkpoint"):
        read_torch_state_dict(tmp_path / "missing.pth")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        read_torch_state_dict(text)
