"""Checkpoint files: bitwise round trips, every kind of damage, refusal of object arrays,
and atomic writes."""
from __future__ import annotations

import os

import numpy as np
import pytest

from fastrnn import io
from fastrnn.io import CheckpointError, load_checkpoint, save_checkpoint


def sample_arrays():
    rng = np.random.default_rng(0)
    return {
        "lstm.w_ih": rng.standard_normal((8, 3)).astype(np.float32),
        "lstm.b": rng.standard_normal(8),
        "ints": np.arange(-3, 3, dtype=np.int64).reshape(2, 3),
        "big_endian": np.arange(4, dtype=">f8"),
        "scalar": np.array(7, dtype=np.int32),
        "empty": np.zeros((0, 5), np.float32),
        "flags": np.array([True, False, True]),
        "vocab": np.array(["a", "bc", "\u00e9"]),
        "complex": np.array([1 + 2j]),
        "fortran": np.asfortranarray(rng.standard_normal((3, 4))),
    }


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.frnn"
    save_checkpoint(path, {"cell": "lstm", "hidden": 8, "sizes": (1, 2)},
                    sample_arrays(), {"epoch": 3, "loss": np.float32(0.5)})
    return path


def test_round_trip_is_bitwise(saved):
    config, arrays, meta = load_checkpoint(saved)
    assert config == {"cell": "lstm", "hidden": 8, "sizes": [1, 2]}   # JSON: tuples -> lists
    assert meta == {"epoch": 3, "loss": 0.5}
    original = sample_arrays()
    assert list(arrays) == list(original)
    for name, array in original.items():
        got = arrays[name]
        assert got.dtype == array.dtype and got.shape == array.shape, name
        assert got.tobytes() == np.ascontiguousarray(array).tobytes(), name
        assert got.flags.writeable and got.flags.c_contiguous


def test_round_trip_nan_and_empty(tmp_path):
    path = str(tmp_path / "c")
    save_checkpoint(path, {}, {"x": np.array([np.nan, -0.0, np.inf])})
    config, arrays, meta = load_checkpoint(path)
    assert config == {} and meta == {}
    assert arrays["x"].tobytes() == np.array([np.nan, -0.0, np.inf]).tobytes()
    save_checkpoint(path, {"a": 1}, {})
    assert load_checkpoint(path) == ({"a": 1}, {}, {})


def test_payload_is_aligned(saved):
    data = saved.read_bytes()
    assert data.startswith(io.MAGIC)
    header_len = int.from_bytes(data[16:24], "little")
    assert io._payload_offset(header_len) % 64 == 0


def test_truncated_files(saved):
    data = saved.read_bytes()
    for size in (0, 5, 23, 40, 200, len(data) // 2, len(data) - 1):
        saved.write_bytes(data[:size])
        with pytest.raises(CheckpointError, match="truncated") as info:
            load_checkpoint(saved)
        assert str(saved) in str(info.value)


def test_extra_bytes(saved):
    saved.write_bytes(saved.read_bytes() + b"\0")
    with pytest.raises(CheckpointError, match="1 unexpected bytes after the end"):
        load_checkpoint(saved)


@pytest.mark.parametrize("where", ["header", "payload", "checksum", "padding"])
def test_flipped_byte_is_detected(saved, where):
    data = bytearray(saved.read_bytes())
    header_len = int.from_bytes(data[16:24], "little")
    index = {"header": 30, "payload": io._payload_offset(header_len) + 5,
             "checksum": len(data) - 1, "padding": 24 + header_len}[where]
    if where == "padding" and index == io._payload_offset(header_len):
        pytest.skip("no padding in this file")
    data[index] ^= 0x01
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted: the sha256 checksum"):
        load_checkpoint(saved)


@pytest.mark.parametrize("where", ["length field", "payload size", "shape"])
def test_a_flipped_header_byte_is_corrupt_not_truncated(saved, where):
    data = bytearray(saved.read_bytes())
    if where == "length field":
        indices = [17, 19, 23]                        # header_len + 256, + 2**24, + 2**56
    else:
        key = b'"payload_nbytes": ' if where == "payload size" else b'"shape": ['
        indices = [data.index(key) + len(key)]        # its first digit, still a digit
    for index in indices:
        damaged = bytearray(data)
        damaged[index] ^= 0x01
        saved.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError, match="corrupted|malformed|do not fit") as info:
            load_checkpoint(saved)
        assert "truncated" not in str(info.value), index


def test_every_single_byte_flip_raises(saved):
    """Whatever byte is damaged, loading raises CheckpointError (never garbage, never
    another exception)."""
    data = saved.read_bytes()
    for index in range(0, len(data), 7):
        damaged = bytearray(data)
        damaged[index] ^= 0x80
        saved.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError):
            load_checkpoint(saved)


def test_wrong_magic_and_other_formats(tmp_path, saved):
    data = saved.read_bytes()
    saved.write_bytes(b"X" + data[1:])
    with pytest.raises(CheckpointError, match="not a fastrnn checkpoint"):
        load_checkpoint(saved)
    npz = tmp_path / "weights.npz"
    np.savez(npz, a=np.ones(2))
    with pytest.raises(CheckpointError, match="zip/.npz"):
        load_checkpoint(npz)
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a checkpoint at all")
    with pytest.raises(ValueError, match="notes.txt: not a fastrnn checkpoint"):
        load_checkpoint(text)


def test_unsupported_version(saved):
    data = bytearray(saved.read_bytes())
    data[12:16] = (99).to_bytes(4, "little")
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="format version 99 is not supported"):
        load_checkpoint(saved)


def _rewrite_header(path, edit):
    """Write a file whose header was edited, with a *valid* checksum (a writer bug or a
    hand-made file), so the entry checks themselves are exercised."""
    import hashlib
    import json
    data = path.read_bytes()
    header_len = int.from_bytes(data[16:24], "little")
    header = json.loads(data[24:24 + header_len])
    payload = data[io._payload_offset(header_len):-32]
    edit(header)
    encoded = json.dumps(header).encode()
    start = io._payload_offset(len(encoded))
    body = (io.MAGIC + io._PREAMBLE.pack(io.FORMAT_VERSION, len(encoded)) + encoded
            + bytes(start - 24 - len(encoded)) + payload)
    path.write_bytes(body + hashlib.sha256(body).digest())


@pytest.mark.parametrize("edit,message", [
    (lambda h: h["arrays"][0].update(dtype="|O"), "dtype object, which checkpoints never hold"),
    (lambda h: h["arrays"][0].update(dtype="not-a-dtype"), "invalid dtype"),
    (lambda h: h["arrays"][0].update(shape=[100, 100]), "do not fit shape"),
    (lambda h: h["arrays"][1].update(offset=10**6), "lies outside the payload"),
    (lambda h: h["arrays"].append(dict(h["arrays"][0])), "appears twice"),
    (lambda h: h.pop("config"), "malformed header"),
])
def test_mismatched_entries(saved, edit, message):
    _rewrite_header(saved, edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(saved)


def test_save_refuses_object_arrays_and_bad_config(tmp_path):
    path = tmp_path / "c"
    with pytest.raises(TypeError, match=r"arrays\['bad'\] has dtype object"):
        save_checkpoint(path, {}, {"bad": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(TypeError, match="dtype"):
        save_checkpoint(path, {}, {"rec": np.zeros(2, dtype=[("a", "f4"), ("b", "i4")])})
    with pytest.raises(TypeError, match="config must be JSON-serializable"):
        save_checkpoint(path, {"f": lambda: 0}, {})
    with pytest.raises(TypeError, match="config must be a dict"):
        save_checkpoint(path, [1], {})
    with pytest.raises(TypeError, match="array names must be non-empty strings"):
        save_checkpoint(path, {}, {1: np.ones(1)})
    assert list(tmp_path.iterdir()) == []       # nothing written, not even a temp file


def test_failed_save_leaves_old_file_intact(saved, monkeypatch):
    before = saved.read_bytes()
    calls = {"n": 0}
    real = io._write_chunk

    def failing(f, hasher, chunk):
        calls["n"] += 1
        if calls["n"] == 3:                     # part-way through the arrays
            f.write(bytes(chunk)[:3])
            raise OSError("disk full")
        real(f, hasher, chunk)

    monkeypatch.setattr(io, "_write_chunk", failing)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(saved, {"new": True}, {"w": np.ones((100, 100))})
    assert saved.read_bytes() == before
    assert sorted(p.name for p in saved.parent.iterdir()) == [saved.name]   # no temp left
    monkeypatch.undo()
    assert load_checkpoint(saved)[0]["cell"] == "lstm"


def test_failed_save_of_new_file_leaves_nothing(tmp_path, monkeypatch):
    def failing_replace(src, dst):
        raise OSError("rename failed")
    monkeypatch.setattr(io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_checkpoint(tmp_path / "new.frnn", {}, {"w": np.ones(3)})
    assert list(tmp_path.iterdir()) == []


def test_overwrite_and_file_mode(saved):
    os.chmod(saved, 0o640)
    save_checkpoint(saved, {"v": 2}, {"w": np.zeros(2)})
    assert load_checkpoint(saved)[0] == {"v": 2}
    if os.name == "posix":
        assert os.stat(saved).st_mode & 0o777 == 0o640


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope")


def test_module_state_round_trip(tmp_path):
    from fastrnn.nn.layers import Embedding, Linear
    layer, emb = Linear(4, 3, seed=0), Embedding(5, 4, seed=1)
    arrays = {f"linear.{k}": v for k, v in layer.state_dict().items()}
    arrays.update({f"emb.{k}": v for k, v in emb.state_dict().items()})
    save_checkpoint(tmp_path / "m", {"in": 4}, arrays)
    _, loaded, _ = load_checkpoint(tmp_path / "m")
    layer2, emb2 = Linear(4, 3, seed=5), Embedding(5, 4, seed=6)
    layer2.load_state_dict({k[7:]: v for k, v in loaded.items() if k.startswith("linear.")})
    emb2.load_state_dict({k[4:]: v for k, v in loaded.items() if k.startswith("emb.")})
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    assert layer2(x).tobytes() == layer(x).tobytes()
    assert emb2(np.array([1, 4])).tobytes() == emb(np.array([1, 4])).tobytes()
