"""Read what a memory estimate needs from a GGUF header: the model's shape and where tensor data
starts. Standard library only: the supervisor must stay small (the `gguf` package needs numpy).

Layout (ggml docs/gguf.md): magic "GGUF", u32 version, u64 tensor count, u64 key/value count, the
key/value pairs, the tensor infos, padding to `general.alignment` (default 32), then tensor data.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
DEFAULT_ALIGNMENT = 32


class GgufError(ValueError):
    """Not a GGUF file this reader understands."""


@dataclass(frozen=True)
class GgufInfo:
    metadata: dict[str, Any]  # scalars, short scalar arrays as lists; other arrays reduced to their length
    tensor_bytes: int

    def arch_value(self, key: str, default: Any = None) -> Any:
        arch = self.metadata.get("general.architecture", "")
        return self.metadata.get(f"{arch}.{key}", default)


def _read(stream: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = stream.read(size)
    if len(data) != size:
        raise GgufError("truncated header")
    return struct.unpack(fmt, data)[0]


def _string(stream: BinaryIO) -> str:
    length = _read(stream, "<Q")
    if length > 1 << 24:
        raise GgufError("implausible string length")
    return stream.read(length).decode("utf-8", errors="replace")


def _value(stream: BinaryIO, kind: int) -> Any:
    if kind in _SCALARS:
        return _read(stream, _SCALARS[kind])
    if kind == _STRING:
        return _string(stream)
    if kind == _ARRAY:
        item_kind, count = _read(stream, "<I"), _read(stream, "<Q")
        if item_kind in _SCALARS and count <= 4096:  # e.g. head_count_kv per layer
            return [_read(stream, _SCALARS[item_kind]) for _ in range(count)]
        if item_kind in _SCALARS:
            stream.seek(struct.calcsize(_SCALARS[item_kind]) * count, 1)
        else:
            for _ in range(count):
                _value(stream, item_kind)
        return count
    raise GgufError(f"unknown value type {kind}")


def read_gguf(path: Path) -> GgufInfo:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not hang the supervisor
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise GgufError(f"{path} is not a regular file")
    with os.fdopen(fd, "rb") as stream:
        if stream.read(4) != b"GGUF":
            raise GgufError(f"{path} is not a GGUF file")
        version = _read(stream, "<I")
        if version < 2:
            raise GgufError(f"GGUF version {version} is too old")
        tensor_count, kv_count = _read(stream, "<Q"), _read(stream, "<Q")
        metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = _string(stream)
            metadata[key] = _value(stream, _read(stream, "<I"))
        for _ in range(tensor_count):
            _string(stream)
            dims = _read(stream, "<I")
            stream.seek(8 * dims + 4 + 8, 1)  # dimensions, type, offset
        alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT)) or DEFAULT_ALIGNMENT
        data_start = -(-stream.tell() // alignment) * alignment
        stream.seek(0, 2)
        return GgufInfo(metadata=metadata, tensor_bytes=max(0, stream.tell() - data_start))
