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
leaves the old file, never a half-written one (a process killed with SIGKILL mid-save may
leave a ``.NAME.*.tmp`` file beside it, never a damaged NAME). Loading checks the magic,
version, length, checksum and every array entry, and raises :class:`CheckpointError` (a
``ValueError``) naming the file and the problem; it trusts no declared size before checking
it against the file's real length, so a hostile file cannot make it allocate more than the
file holds. Array names are plain names, never paths.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import tempfile
import warnings
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
        if not _plain_name(name) or len(name) > _MAX_NAME:
            raise ValueError(f"array name {name!r} is not a plain name (at most {_MAX_NAME} "
                             "printable characters, no path separators, not '.' or '..')")
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
#
# A hostile file can carry a valid checksum, so the loader trusts nothing it reads: the
# header must have exactly the layout the writer produces (each array right after the
# previous one, canonical dtype strings, integer shapes), and the sizes it declares must
# add up to the file's real length before any array is allocated. Arrays are then read
# straight into their own buffers while the checksum is computed; nothing is unpickled,
# nothing is allocated beyond the file's size, and no entry name is ever used as a path.

_MAX_HEADER = 1 << 26               # 64 MiB of JSON is far beyond any real header
_MAX_NDIM = 32
_MAX_NAME = 1024
_DTYPE_TEXT = re.compile(r"[<>|][biufcSU][0-9]{1,9}\Z")   # what ``dtype.str`` writes
_DTYPE_SHAPE = re.compile(r"[<>|=]?[A-Za-z][A-Za-z0-9]{0,30}\Z")   # safe to hand NumPy
_HASH_CHUNK = 1 << 20


def _problem(path, text: str) -> CheckpointError:
    return CheckpointError(path, text)


def _read_exact(f, n: int) -> bytes:
    data = f.read(n)
    return data if data is not None else b""


def _check_preamble(path, f, size: int) -> Tuple[bytes, int]:
    """The magic, version and header length; ``(preamble bytes, header_len)``."""
    data = _read_exact(f, _PREAMBLE_END)
    if data[:len(MAGIC)] != MAGIC[:len(data)]:
        if data[:4] == b"PK\x03\x04":
            raise _problem(path, "not a fastrnn checkpoint (this is a zip/.npz file)")
        if data[:6] == b"\x93NUMPY":
            raise _problem(path, "not a fastrnn checkpoint (this is a .npy file)")
        if data[:1] == b"\x80":
            raise _problem(path, "not a fastrnn checkpoint (this looks like a pickle, "
                                 "which is never loaded)")
        raise _problem(path, f"not a fastrnn checkpoint (the file starts with "
                             f"{data[:len(MAGIC)]!r}, expected {MAGIC!r})")
    if size < _PREAMBLE_END + _DIGEST:   # includes a file cut inside the magic
        raise _problem(path, f"truncated: {size} bytes is shorter than any checkpoint")
    version, header_len = _PREAMBLE.unpack_from(data, len(MAGIC))
    if version != FORMAT_VERSION:
        raise _problem(path, f"format version {version} is not supported (this fastrnn "
                             f"reads version {FORMAT_VERSION})")
    if _PREAMBLE_END + header_len + _DIGEST > size:
        raise _problem(path, _short_file(f, header_len, size))
    if header_len > _MAX_HEADER:
        raise _problem(path, f"the header declares {header_len} bytes (at most "
                             f"{_MAX_HEADER} are read)")
    return data, header_len


def _short_file(f, header_len: int, size: int) -> str:
    """Why the declared header does not fit in the file: a damaged length field (a whole
    JSON header of another length is there) or a truncated file (it is cut inside)."""
    text = _read_exact(f, min(size - _PREAMBLE_END, _MAX_HEADER)).decode("utf-8", "replace")
    try:
        header, end = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError):
        header = None
    length = len(text[:end].encode("utf-8")) if isinstance(header, dict) else header_len
    if length != header_len:
        return (f"corrupted: the header length field says {header_len} bytes, the header "
                f"has {length}")
    return (f"truncated: the header alone needs {_PREAMBLE_END + header_len + _DIGEST} "
            f"bytes, the file has {size}")


def _decode_header(path, text: bytes) -> dict:
    """The header's JSON; CheckpointError for anything but a JSON object."""
    try:
        header = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError) as exc:   # RecursionError: deeply nested JSON
        raise _problem(path, f"the JSON header is unreadable ({type(exc).__name__})") \
            from None
    if not isinstance(header, dict):
        raise _problem(path, f"the JSON header is a {type(header).__name__}, not an object")
    return header


def _is_count(value) -> bool:
    return type(value) is int and value >= 0


def _plain_name(name: str) -> bool:
    """No path separators, no '.' or '..', no control characters: a name, never a path."""
    return (name not in (".", "..") and not any(c in name for c in "/\\")
            and name.isprintable())


def _same_int(value, expected: int) -> bool:
    """``value`` is the integer ``expected`` (not 24.0, not True)."""
    return type(value) is int and value == expected


def _check_name(path, name, seen) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME:
        raise _problem(path, f"an array name must be a string of 1 to {_MAX_NAME} "
                             f"characters, got {str(name)[:80]!r}")
    if not _plain_name(name):
        raise _problem(path, f"array name {name[:80]!r} is not a plain name (no path "
                             "separators, '..', or control characters)")
    if name in seen:
        raise _problem(path, f"array {name!r} appears twice")
    return name


def _entry_dtype(path, entry: dict) -> np.dtype:
    """The entry's dtype: a canonical ``dtype.str`` of a plain-data kind, nothing else."""
    text = entry.get("dtype")
    try:
        if not isinstance(text, str) or not _DTYPE_SHAPE.match(text):
            raise TypeError
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            dtype = np.dtype(text)   # np.dtype(",") raises SyntaxError: catch everything
    except Exception:
        raise _problem(path, f"array {entry['name']!r} has an invalid dtype "
                             f"{str(text)[:80]!r}") from None
    if dtype.kind not in _DATA_KINDS or dtype.fields is not None or dtype.subdtype:
        raise _problem(path, f"array {entry['name']!r} has dtype {dtype}, which "
                             "checkpoints never hold")
    if not _DTYPE_TEXT.match(text) or dtype.str != text:
        raise _problem(path, f"array {entry['name']!r} has an invalid dtype {text!r} (not "
                             f"the canonical {dtype.str!r})")
    return dtype


def _entry_shape(path, entry: dict) -> Tuple[int, ...]:
    shape = entry.get("shape")
    if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
            or not all(_is_count(n) for n in shape)):
        raise _problem(path, f"array {entry['name']!r} has an invalid shape "
                             f"{str(shape)[:80]} (a list of at most {_MAX_NDIM} "
                             "non-negative integers)")
    return tuple(shape)


def _check_entry(path, entry, offset: int, seen) -> Tuple[str, np.dtype, Tuple[int, ...], int]:
    """``(name, dtype, shape, nbytes)`` of one entry, which must start at ``offset``."""
    if not isinstance(entry, dict):
        raise _problem(path, f"an array entry is a {type(entry).__name__}, not an object")
    name = _check_name(path, entry.get("name"), seen)
    dtype, shape = _entry_dtype(path, entry), _entry_shape(path, entry)
    nbytes = dtype.itemsize
    for n in shape:          # Python integers: no overflow, whatever the header claims
        nbytes *= n
    if not _same_int(entry.get("nbytes"), nbytes):
        raise _problem(path, f"array {name!r}: {str(entry.get('nbytes'))[:40]} bytes do not "
                             f"fit shape {shape} of dtype {dtype}")
    if not _same_int(entry.get("offset"), offset):
        raise _problem(path, f"array {name!r} lies outside the payload (offset "
                             f"{str(entry.get('offset'))[:40]}, expected {offset})")
    return name, dtype, shape, nbytes


def _check_layout(path, header: dict, header_len: int, size: int) -> list:
    """Every entry checked, and the declared sizes checked against the file's length."""
    for key, kind in (("config", dict), ("meta", dict), ("arrays", list)):
        if not isinstance(header.get(key), kind):
            raise _problem(path, f"malformed header ({key!r} must be a JSON "
                                 f"{'object' if kind is dict else 'array'})")
    entries, seen, offset = [], set(), 0
    for entry in header["arrays"]:
        name, dtype, shape, nbytes = _check_entry(path, entry, offset, seen)
        seen.add(name)
        entries.append((name, dtype, shape, nbytes))
        offset += nbytes + _pad(nbytes)
        if offset > size:
            break            # the length check below reports it
    if not _same_int(header.get("payload_nbytes"), offset) and offset <= size:
        raise _problem(path, f"malformed header (payload_nbytes "
                             f"{str(header.get('payload_nbytes'))[:40]}, the arrays need "
                             f"{offset})")
    expected = _payload_offset(header_len) + offset + _DIGEST
    if size < expected:
        raise _problem(path, f"truncated: {size} bytes, the header says {expected}")
    if size > expected:
        raise _problem(path, f"{size - expected} unexpected bytes after the end of the "
                             "checkpoint")
    return entries


def _hash_rest(f, hasher, size: int) -> bytes:
    """Feed the file from its current position up to the digest; return the digest read."""
    remaining = size - _DIGEST - f.tell()
    while remaining > 0:
        chunk = _read_exact(f, min(remaining, _HASH_CHUNK))
        if not chunk:
            break
        hasher.update(chunk)
        remaining -= len(chunk)
    return _read_exact(f, _DIGEST)


def _fill(path, f, hasher, buffer: memoryview) -> None:
    """Read exactly ``len(buffer)`` bytes into ``buffer`` and hash them."""
    done = 0
    while done < len(buffer):
        n = f.readinto(buffer[done:])
        if not n:
            raise _problem(path, "truncated while reading (the file changed during load)")
        done += n
    hasher.update(buffer)


def _check_values(path, name: str, array: np.ndarray) -> None:
    """Bytes no NumPy dtype allows: bools other than 0/1, code points past U+10FFFF."""
    if array.dtype.kind == "b" and array.size and array.view(np.uint8).max() > 1:
        raise _problem(path, f"array {name!r} holds bools other than 0 and 1")
    if array.dtype.kind == "U" and array.size:
        codes = array.view(array.dtype.byteorder.replace("|", "=") + "u4")
        if codes.max() > 0x10FFFF:
            raise _problem(path, f"array {name!r} holds characters past U+10FFFF")


def _read_payload(path, f, hasher, entries, payload_offset: int) -> Dict[str, np.ndarray]:
    _fill(path, f, hasher, memoryview(bytearray(payload_offset - f.tell())))
    arrays = {}
    for name, dtype, shape, nbytes in entries:
        try:       # nbytes is checked against the file's length; shape (0, 2**62) is not
            array = np.empty(shape, dtype)
        except (ValueError, MemoryError) as exc:
            raise _problem(path, f"array {name!r} of shape {shape}: {exc}") from None
        if nbytes:
            _fill(path, f, hasher, memoryview(array.reshape(-1).view(np.uint8)))
        _fill(path, f, hasher, memoryview(bytearray(_pad(nbytes))))
        arrays[name] = array
    return arrays


def _load(path, f, size: int) -> Tuple[dict, Dict[str, np.ndarray]]:
    """Header and arrays of the checkpoint read from ``f`` (``size`` bytes in all)."""
    hasher = hashlib.sha256()
    preamble, header_len = _check_preamble(path, f, size)
    text = _read_exact(f, header_len)
    hasher.update(preamble)
    hasher.update(text)
    try:
        header = _decode_header(path, text)
        entries = _check_layout(path, header, header_len, size)
    except CheckpointError as exc:
        if "truncated" in exc.problem or "unexpected bytes" in exc.problem:
            raise
        # A damaged header: say "corrupted" when the checksum shows damage, else the
        # header's own problem (a valid checksum over a hand-made header).
        if _hash_rest(f, hasher, size) != hasher.digest():
            raise _problem(path, "corrupted: the sha256 checksum does not match the "
                                 "content") from None
        raise
    arrays = _read_payload(path, f, hasher, entries, _payload_offset(header_len))
    if _read_exact(f, _DIGEST) != hasher.digest():
        raise _problem(path, "corrupted: the sha256 checksum does not match the content")
    for name, array in arrays.items():
        _check_values(path, name, array)
    return header, arrays


def load_checkpoint(path) -> Tuple[dict, Dict[str, np.ndarray], dict]:
    """Read a file written by :func:`save_checkpoint`: ``(config, arrays, meta)``.

    Arrays come back with the saved dtype and shape, bitwise equal, writable, in the
    saved order. Raises :class:`CheckpointError` (a ``ValueError``) naming ``path`` for a
    file that is not a checkpoint, is truncated, fails its checksum or has a bad entry
    (checked before anything is allocated: the sizes the header declares must add up to
    the file's real length); ``FileNotFoundError`` if there is no file.
    """
    with open(path, "rb") as f:
        header, arrays = _load(path, f, os.fstat(f.fileno()).st_size)
    return header["config"], arrays, header["meta"]


def load_checkpoint_bytes(data: bytes, name: str = "<bytes>"
                          ) -> Tuple[dict, Dict[str, np.ndarray], dict]:
    """:func:`load_checkpoint` of bytes from :func:`checkpoint_bytes` (or a file's content),
    with the same checks; ``name`` stands for the path in error messages."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    header, arrays = _load(name, io.BytesIO(data), len(data))
    return header["config"], arrays, header["meta"]
