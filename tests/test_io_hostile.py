"""Hostile checkpoint files: whatever the bytes, loading raises CheckpointError (never another
exception, never an allocation the file's length does not justify), and a save killed
with SIGKILL at any point leaves the previous checkpoint loadable and unchanged.

Most hostile files here carry a *valid* checksum (an attacker recomputes it), so the
header checks themselves are what refuses them."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fastrnn import io
from fastrnn.io import CheckpointError, load_checkpoint, save_checkpoint


def small_arrays():
    return {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "flags": np.array([True]),
            "words": np.array(["ab", "c"]), "n": np.array(3, dtype=">i8")}


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.frnn"
    save_checkpoint(path, {"k": [1, 2]}, small_arrays(), {"epoch": 1})
    return path


def split(data: bytes):
    """``(header dict, payload bytes)`` of a checkpoint's bytes."""
    header_len = int.from_bytes(data[16:24], "little")
    return json.loads(data[24:24 + header_len]), data[io._payload_offset(header_len):-32]


def forge(header, payload: bytes = b"", *, raw_header: bytes = None,
          header_len: int = None) -> bytes:
    """A checkpoint with the given header and payload and a valid checksum."""
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    declared = len(text) if header_len is None else header_len
    start = io._payload_offset(len(text))
    body = (io.MAGIC + io._PREAMBLE.pack(io.FORMAT_VERSION, declared) + text
            + bytes(start - 24 - len(text)) + payload)
    return body + hashlib.sha256(body).digest()


def entry(name="w", dtype="<f4", shape=(2, 3), offset=0, nbytes=None):
    count = int(np.prod(shape, dtype=object)) if shape else 1
    return {"name": name, "dtype": dtype, "shape": list(shape), "offset": offset,
            "nbytes": count * 4 if nbytes is None else nbytes}


def header_with(*entries, payload_nbytes=64, **extra):
    header = {"config": {}, "meta": {}, "writer": "forged", "arrays": list(entries),
              "payload_nbytes": payload_nbytes}
    header.update(extra)
    return header


def refused(path, data: bytes, match=None, trace=True):
    """Loading ``data`` raises CheckpointError (matching ``match``) and allocates little."""
    path.write_bytes(data)
    if not trace:
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(path)
        return None
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=match) as info:
            load_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(data) + (2 << 20), f"allocated {peak} bytes for a {len(data)}-byte file"
    assert str(path) in str(info.value)
    return info.value


def test_forged_file_with_valid_layout_loads(tmp_path):
    """The forger itself is right: an honest forged file loads (so refusals below are the
    checks' doing, not the forger's)."""
    payload = np.arange(6, dtype=np.float32).tobytes() + bytes(40)
    (tmp_path / "f").write_bytes(forge(header_with(entry()), payload))
    config, arrays, meta = load_checkpoint(tmp_path / "f")
    assert arrays["w"].tolist() == [[0, 1, 2], [3, 4, 5]] and config == {} == meta


def test_truncation_at_every_length(small):
    data = small.read_bytes()
    for size in range(len(data)):
        refused(small, data[:size], "truncated|not a fastrnn checkpoint", trace=size % 16 == 0)


def test_every_bit_flip(small):
    data = small.read_bytes()
    for index in range(len(data)):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[index] ^= 1 << bit
            refused(small, bytes(damaged), trace=False)


@pytest.mark.parametrize("shape,nbytes", [
    ((2 ** 40, 2 ** 40), 2 ** 82),              # product above 2**63, consistent nbytes
    ((2 ** 40, 2 ** 40), 0),                    # ... inconsistent
    ((2 ** 31, 2 ** 31), 2 ** 64),              # wraps to 0 in int64
    ((2 ** 32, 2 ** 32), 0),                    # int64 product overflows to exactly 0
    ((2 ** 62,), 2 ** 64),
    ((0, 2 ** 62), 0),                          # zero bytes, but NumPy refuses the shape
    ((0, 2 ** 64), 0),
    ((-1, 3), -12),
    ((-2, -3), 24),
    ((10 ** 9,), 4 * 10 ** 9),                  # plausible, but the file is tiny
    ((1,) * 40, 4),                             # too many dimensions
])
def test_huge_or_negative_shapes(tmp_path, shape, nbytes):
    header = header_with(entry(shape=shape, nbytes=nbytes), payload_nbytes=64)
    refused(tmp_path / "f", forge(header, bytes(64)))


@pytest.mark.parametrize("shape", [[1.5], [True, 2], ["3"], [[2]], None, "23", {"a": 1},
                                   [float("nan")], [1e300]])
def test_shapes_that_are_not_integer_lists(tmp_path, shape):
    header = header_with(dict(entry(shape=(2,)), shape=shape), payload_nbytes=64)
    refused(tmp_path / "f", forge(header, bytes(64)), "invalid shape")


@pytest.mark.parametrize("dtype", [
    "|O", "O", "object", "unicode", "str", "|V8", "V8", "<M8[s]", "<m8[ns]", "(3,)<f4",
    "<f4,<i4", [["a", "<f4"]], {"names": ["a"], "formats": ["<f4"]}, "\u00e9f4", "<f\uff14",
    "f4", "<f4 ", "float32", "<U999999999999", "<f3", "<q", None, 4, "",
    "<f" + "9" * 10000,
])
def test_unknown_dtypes(tmp_path, dtype):
    header = header_with(dict(entry(), dtype=dtype), payload_nbytes=64)
    refused(tmp_path / "f", forge(header, bytes(64)), "dtype")


def test_huge_unicode_itemsize_is_refused_by_length(tmp_path):
    header = header_with(entry(dtype="<U99999999", shape=(4,), nbytes=4 * 4 * 99999999))
    refused(tmp_path / "f", forge(header, bytes(64)), "truncated")


@pytest.mark.parametrize("name", ["../evil", "../../etc/passwd", "/abs", "a/b", "a\\b", "..",
                                  ".", "", "a\0b", "new\nline", 123, None, ["w"],
                                  "x" * 5000])
def test_path_like_and_bad_names(tmp_path, name):
    header = header_with(dict(entry(), name=name), payload_nbytes=64)
    refused(tmp_path / "f", forge(header, bytes(64)), "name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]   # nothing written anywhere


def test_save_refuses_path_like_names(tmp_path):
    for name in ("../evil", "a/b", ".."):
        with pytest.raises(ValueError, match="not a plain name"):
            save_checkpoint(tmp_path / "c", {}, {name: np.ones(1)})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("raw", [
    b"[" * 100000 + b"]" * 100000,
    b'{"config": ' + b'{"a": ' * 50000 + b"1" + b"}" * 50000 + b"}",
    b'{"config": {}, "meta": ' + b"[" * 3000 + b"]" * 3000 + b"}",
])
def test_deeply_nested_json(tmp_path, raw):
    refused(tmp_path / "f", forge(None, b"", raw_header=raw), "header")


@pytest.mark.parametrize("raw", [
    b"\xff\xfe not utf-8", b"", b"null", b"[]", b'"text"', b"1" * 5000, b"{", b"NaN",
    json.dumps({"arrays": []}).encode(),
    json.dumps(header_with(payload_nbytes=0, config=[])).encode(),
    json.dumps(header_with(payload_nbytes=0, arrays={"w": 1})).encode(),
    json.dumps(header_with(payload_nbytes=0, arrays=[1])).encode(),
    json.dumps(header_with(payload_nbytes=-64)).encode(),
    json.dumps(header_with(payload_nbytes=2 ** 70)).encode(),
    json.dumps(header_with(entry(offset=-64), payload_nbytes=64)).encode(),
    json.dumps(header_with(entry(offset=64), payload_nbytes=64)).encode(),
    json.dumps(header_with(entry(), entry(), payload_nbytes=128)).encode(),
    json.dumps(header_with(entry(nbytes=24.0), payload_nbytes=64)).encode(),
])
def test_malformed_headers(tmp_path, raw):
    refused(tmp_path / "f", forge(None, bytes(64), raw_header=raw))


@pytest.mark.parametrize("header_len", [2 ** 63, 2 ** 64 - 1, 2 ** 40, 10 ** 6])
def test_header_length_beyond_the_file(tmp_path, header_len):
    # a whole JSON header is there, so the length field is damaged: corrupt, not truncated
    refused(tmp_path / "f", forge({}, b"", header_len=header_len), "corrupted: the header "
                                                                    "length field says")


def test_header_length_beyond_the_read_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "_MAX_HEADER", 10)
    refused(tmp_path / "f", forge(header_with(payload_nbytes=0)), "at most 10")


def test_values_no_dtype_allows(tmp_path):
    bools = header_with(dict(entry(dtype="|b1", shape=(3,)), nbytes=3), payload_nbytes=64)
    refused(tmp_path / "f", forge(bools, b"\x00\x01\x02" + bytes(61)), "bools")
    text = header_with(dict(entry(dtype="<U1", shape=(1,)), nbytes=4), payload_nbytes=64)
    refused(tmp_path / "f", forge(text, (0x110000).to_bytes(4, "little") + bytes(60)),
            "U\\+10FFFF")


def test_other_formats(tmp_path):
    npz, npy, zipped = tmp_path / "a.npz", tmp_path / "a.npy", tmp_path / "a.zip"
    np.savez(npz, a=np.ones(3))
    np.save(npy, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("header.json", "{}")
    cases = {
        "pickle": pickle.dumps({"w": np.ones(3)}),
        "pickle0": pickle.dumps({"w": 1}, protocol=0),
        "npz": npz.read_bytes(), "npy": npy.read_bytes(), "zip": zipped.read_bytes(),
        "gzip": gzip.compress(b"x" * 100), "empty": b"", "json": b'{"config": {}}',
        "torch-like": b"PK\x03\x04" + bytes(100),
        "magic-only": io.MAGIC, "magic-prefix": io.MAGIC[:5],
    }
    for name, data in cases.items():
        error = refused(tmp_path / name, data)
        assert "not a fastrnn checkpoint" in str(error) or "truncated" in str(error), name


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10 ** 6), st.binary(min_size=0, max_size=8),
                                st.integers(0, 8)), min_size=1, max_size=4),
       refix=st.booleans())
def test_random_edits_raise_checkpoint_error_or_load(tmp_path_factory, edits, refix):
    """Random splices anywhere (optionally with the checksum recomputed): the file loads
    or raises CheckpointError -- never another exception."""
    path = tmp_path_factory.mktemp("edit") / "c"
    save_checkpoint(path, {"k": 1}, small_arrays())
    data = bytearray(path.read_bytes())
    for position, insert, delete in edits:
        position %= len(data) + 1
        data[position:position + delete] = insert
    if refix and len(data) >= 32:
        data[-32:] = hashlib.sha256(bytes(data[:-32])).digest()
    path.write_bytes(bytes(data))
    try:
        load_checkpoint(path)
    except CheckpointError:
        pass


_SAVER = r"""
import sys, numpy as np
from fastrnn.io import save_checkpoint
path = sys.argv[1]
big = {"w": np.full((512, 1024), 2.0), "b": np.arange(1000.0)}
print("ready", flush=True)
i = 0
while True:                       # save forever, alternating two versions
    save_checkpoint(path, {"version": i % 2}, {k: v + i % 2 for k, v in big.items()})
    i += 1
"""


def _expected(version):
    return {"w": np.full((512, 1024), 2.0) + version, "b": np.arange(1000.0) + version}


def test_kill_during_save_keeps_the_previous_checkpoint(tmp_path):
    """SIGKILL a process that saves in a loop, at random moments: the checkpoint on disk
    is always one of the complete versions."""
    path = tmp_path / "model.frnn"
    save_checkpoint(path, {"version": 0}, _expected(0))
    rng = random.Random(12)
    for _ in range(4):
        child = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.2))     # a few saves in: somewhere inside one
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            child.stdout.close()
        config, arrays, _ = load_checkpoint(path)
        want = _expected(config["version"])
        assert list(arrays) == list(want)
        for name, array in want.items():
            assert np.array_equal(arrays[name], array), name
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != path.name]
    assert all(name.startswith(".model.frnn.") and name.endswith(".tmp")
               for name in leftovers), leftovers
