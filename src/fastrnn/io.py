"""Checkpoints: one self-checking file of JSON and raw arrays that never unpickles.

Layout (all integers little-endian)::

    offset 0   magic       12 bytes  b"\\x89FASTRNN\\r\\n\\x1a\\n" (PNG-style: catches text-mode
                                     and truncation mangling)
    12         version     uint32    FORMAT_VERSION
    16         header_len  uint64    L
    24         header      L bytes   UTF-8 JSON: {"config", "meta", "writer",
                                     "arrays": [{"name", "dtype", "shape", "offset", "nbytes"}],
                                     "payload_nbytes"}
    ...        zero padding to the next 64-byte boundary, payload_offset
    payload    each array's C-order bytes at payload_offset + offset (64-byte aligned)
    end - 32   sha256      32 bytes  digest of every byte before it

Arrays keep their exact dtype (including byte order) and shape, so a round trip is
bitwise. Only plain data dtypes are stored (bool, integers, floats, complex, fixed-width
strings); object and structured arrays are refused. Saving writes a temporary file in the
target's directory and renames it over the target (``os.replace``), so a crash mid-save
leaves the old file, never a half-written one. Loading checks the magic, version, length,
checksum and every array entry, and raises :class:`CheckpointError` (a ``ValueError``)
naming the file and the problem.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tempfile
from typing import Any, Dict, Optional, Tuple

import numpy as np

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "checkpoint_bytes",
           "load_checkpoint_bytes", "FORMAT_VERSION"]

MAGIC = b"\x89FASTRNN\r\n\x1a\n"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<IQ")            # version, header_len
_PREAMBLE_END = len(MAGIC) + _PREAMBLE.size  # 24
_DIGEST = 32                                # sha256 bytes
_ALIGN = 64
_DATA_KINDS = "biufcSU"                      # plain-data dtype kinds


class CheckpointError(ValueError):
    """A file that is not a valid fastrnn checkpoint: wrong format, truncated, corrupted."""

    def __init__(self, path, problem: str):
        super().__init__(f"{os.fspath(path)}: {problem}")
        self.path = os.fspath(path)
        self.problem = problem


def _pad(n: int) -> int:
    """Bytes of padding that bring ``n`` to a multiple of ``_ALIGN``."""
    return -n % _ALIGN


# -- saving -----------------------------------------------------------------------------

def _json_default(value):
    if isinstance(value, np.generic):   # NumPy scalars (np.float32(0.1), np.int64(3))
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def _to_json(name: str, value) -> Any:
    """``value`` after a JSON round trip (tuples become lists), or TypeError naming it."""
    try:
        return json.loads(json.dumps(value, default=_json_default))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be JSON-serializable: {exc}") from None


def _plain_array(name, value) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "numpy"):   # a torch tensor
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype.kind not in _DATA_KINDS or array.dtype.fields is not None:
        raise TypeError(f"arrays[{name!r}] has dtype {array.dtype}; checkpoints store only "
                        "bool, integer, float, complex and fixed-width string arrays")
    return array if array.flags.c_contiguous else array.copy(order="C")  # keeps 0-d as 0-d


def _checked_arrays(arrays) -> Dict[str, np.ndarray]:
    if not isinstance(arrays, dict):
        raise TypeError(f"arrays must be a dict of name -> array, got {type(arrays).__name__}")
    out = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"array names must be non-empty strings, got {name!r}")
        out[name] = _plain_array(name, value)
    return out


def _header(config, meta, arrays: Dict[str, np.ndarray]) -> bytes:
    """The JSON header, with each array's place in the payload."""
    entries, offset = [], 0
    for name, array in arrays.items():
        entries.append({"name": name, "dtype": array.dtype.str, "shape": list(array.shape),
                        "offset": offset, "nbytes": array.nbytes})
        offset += array.nbytes + _pad(array.nbytes)
    from . import __version__
    header = {"config": config, "meta": meta, "writer": f"fastrnn {__version__}",
              "arrays": entries, "payload_nbytes": offset}
    return json.dumps(header).encode()


def _payload_offset(header_len: int) -> int:
    """The payload starts at the first 64-byte boundary after the header."""
    end = _PREAMBLE_END + header_len
    return end + _pad(end)


def _write_chunk(f, hasher, chunk) -> None:
    """Write bytes (any C-contiguous buffer) and feed them to the checksum."""
    f.write(chunk)
    hasher.update(chunk)


def _write_body(f, header: bytes, arrays: Dict[str, np.ndarray]) -> None:
    hasher = hashlib.sha256()
    padding = _payload_offset(len(header)) - _PREAMBLE_END - len(header)
    _write_chunk(f, hasher, MAGIC + _PREAMBLE.pack(FORMAT_VERSION, len(header)) + header
                 + bytes(padding))
    for array in arrays.values():
        _write_chunk(f, hasher, array.reshape(-1).view(np.uint8))
        _write_chunk(f, hasher, bytes(_pad(array.nbytes)))
    f.write(hasher.digest())


def _new_file_mode(path: str) -> int:
    """The mode a plainly created file would get (or the mode of the file replaced)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:   # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _prepared(config, arrays, meta) -> Tuple[bytes, Dict[str, np.ndarray]]:
    """``(header, arrays)`` checked and ready for :func:`_write_body`."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict or None, got {type(meta).__name__}")
    arrays = _checked_arrays(arrays)
    return _header(_to_json("config", config), _to_json("meta", meta or {}), arrays), arrays


def checkpoint_bytes(config: dict, arrays: Dict[str, np.ndarray],
                     meta: Optional[dict] = None) -> bytes:
    """The bytes :func:`save_checkpoint` would write, in memory (to ship a model to other
    processes: :func:`load_checkpoint_bytes` reads them back; the last 32 bytes are the
    sha256 of the rest, a ready-made cache key)."""
    header, arrays = _prepared(config, arrays, meta)
    buffer = io.BytesIO()
    _write_body(buffer, header, arrays)
    return buffer.getvalue()


def save_checkpoint(path, config: dict, arrays: Dict[str, np.ndarray],
                    meta: Optional[dict] = None) -> None:
    """Write ``config`` (JSON-able dict), ``arrays`` (name -> array) and ``meta`` to ``path``.

    The file appears atomically: it is written to a temporary file in the same
    directory, flushed to disk, and renamed over ``path``; on any error the temporary
    file is removed and an existing ``path`` is left as it was. Raises ``TypeError`` for a
    config or meta that is not JSON-serializable, or an object/structured array.
    """
    path = os.fspath(path)
    header, arrays = _prepared(config, arrays, meta)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_body(f, header, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


# -- loading ----------------------------------------------------------------------------

def _parse_header(path, data: bytes) -> Tuple[Optional[dict], int]:
    """``(header or None if unreadable, expected file size)``; checks magic and version."""
    if data[:len(MAGIC)] != MAGIC[:len(data)]:
        if data[:4] == b"PK\x03\x04":
            raise CheckpointError(path, "not a fastrnn checkpoint (this is a zip/.npz file)")
        raise CheckpointError(path, f"not a fastrnn checkpoint (the file starts with "
                                    f"{data[:len(MAGIC)]!r}, expected {MAGIC!r})")
    if len(data) < _PREAMBLE_END + _DIGEST:   # includes a file cut inside the magic
        raise CheckpointError(path, f"truncated: {len(data)} bytes is shorter than any "
                                    "checkpoint")
    version, header_len = _PREAMBLE.unpack_from(data, len(MAGIC))
    if version != FORMAT_VERSION:
        raise CheckpointError(path, f"format version {version} is not supported (this "
                                    f"fastrnn reads version {FORMAT_VERSION})")
    if _PREAMBLE_END + header_len + _DIGEST > len(data):
        raise CheckpointError(path, f"truncated: the header alone needs "
                                    f"{_PREAMBLE_END + header_len + _DIGEST} bytes, the file "
                                    f"has {len(data)}")
    try:
        header = json.loads(data[_PREAMBLE_END:_PREAMBLE_END + header_len].decode())
        header["payload_offset"] = _payload_offset(header_len)
        expected = header["payload_offset"] + int(header["payload_nbytes"]) + _DIGEST
    except (ValueError, KeyError, TypeError):
        return None, len(data)
    return header, expected


def _check_integrity(path, data: bytes) -> dict:
    header, expected = _parse_header(path, data)
    if len(data) < expected:
        raise CheckpointError(path, f"truncated: {len(data)} bytes, the header says "
                                    f"{expected}")
    if len(data) > expected:
        raise CheckpointError(path, f"{len(data) - expected} unexpected bytes after the "
                                    "end of the checkpoint")
    digest = hashlib.sha256(memoryview(data)[:-_DIGEST]).digest()
    if digest != data[-_DIGEST:]:
        raise CheckpointError(path, "corrupted: the sha256 checksum does not match the "
                                    "content")
    if header is None or not isinstance(header, dict):
        raise CheckpointError(path, "the JSON header is unreadable")
    return header


def _entry_dtype(path, entry: dict) -> np.dtype:
    try:
        dtype = np.dtype(entry["dtype"])
    except (TypeError, ValueError):
        raise CheckpointError(path, f"array {entry['name']!r} has an invalid dtype "
                                    f"{entry['dtype']!r}") from None
    if dtype.kind not in _DATA_KINDS or dtype.fields is not None:
        raise CheckpointError(path, f"array {entry['name']!r} has dtype {dtype}, which "
                                    "checkpoints never hold")
    return dtype


def _read_array(path, data: bytes, entry: dict, payload: Tuple[int, int]) -> np.ndarray:
    """One array, copied out of ``data`` after checking its entry against the payload."""
    dtype = _entry_dtype(path, entry)
    shape = tuple(int(n) for n in entry["shape"])
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    offset, nbytes = int(entry["offset"]), int(entry["nbytes"])
    if min(shape, default=0) < 0 or nbytes != count * dtype.itemsize:
        raise CheckpointError(path, f"array {entry['name']!r}: {nbytes} bytes do not fit "
                                    f"shape {shape} of dtype {dtype}")
    if offset < 0 or offset + nbytes > payload[1]:
        raise CheckpointError(path, f"array {entry['name']!r} lies outside the payload")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=payload[0] + offset)
    return array.reshape(shape).copy()


def _read_arrays(path, data: bytes, header: dict) -> Dict[str, np.ndarray]:
    payload = (int(header["payload_offset"]), int(header["payload_nbytes"]))
    arrays = {}
    for entry in header["arrays"]:
        if entry["name"] in arrays:
            raise CheckpointError(path, f"array {entry['name']!r} appears twice")
        arrays[entry["name"]] = _read_array(path, data, entry, payload)
    return arrays


def load_checkpoint(path) -> Tuple[dict, Dict[str, np.ndarray], dict]:
    """Read a file written by :func:`save_checkpoint`: ``(config, arrays, meta)``.

    Arrays come back with the saved dtype and shape, bitwise equal, writable, in the
    saved order. Raises :class:`CheckpointError` (a ``ValueError``) naming ``path`` for a
    file that is not a checkpoint, is truncated, fails its checksum or has a bad entry;
    ``FileNotFoundError`` if there is no file.
    """
    with open(path, "rb") as f:
        data = f.read()
    return load_checkpoint_bytes(data, path)


def load_checkpoint_bytes(data: bytes, name: str = "<bytes>"
                          ) -> Tuple[dict, Dict[str, np.ndarray], dict]:
    """:func:`load_checkpoint` of bytes from :func:`checkpoint_bytes` (or a file's content);
    ``name`` stands for the path in error messages."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    data, path = bytes(data), name
    header = _check_integrity(path, data)
    try:
        arrays = _read_arrays(path, data, header)
        config, meta = header["config"], header["meta"]
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(path, f"malformed header ({type(exc).__name__}: {exc})") from None
    return config, arrays, meta
