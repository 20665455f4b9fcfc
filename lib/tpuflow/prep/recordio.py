"""TFRecord files and `tf.train.Example` bytes without TensorFlow.

The dataset builder's worker processes and its writer use this module instead of TensorFlow:
importing TensorFlow costs seconds per process and gigabytes of address space, and the two
formats are small and stable:

- a TFRecord file is a sequence of `uint64 length | uint32 masked crc32c(length) | data |
  uint32 masked crc32c(data)`, little-endian;
- a `tf.train.Example` is the protobuf `Example{features: Features{feature: map<string,
  Feature>}}`, where `Feature` holds one of a `BytesList`, `FloatList` or `Int64List`.

`encode_example` writes the map entries sorted by key, so equal features always give equal
bytes (protobuf itself does not promise a map order). TensorFlow parses the result like any
other record; tests check that against `tf.train.Example` and `tf.data.TFRecordDataset`.

The example -> shard assignment lives here too, so every writer shares it (the names: `tpuflow.prep.shard_names`).
"""
from __future__ import annotations

import hashlib
import struct
from typing import BinaryIO, Iterator, Mapping

import google_crc32c
import numpy as np

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1


def shard_bounds(n_examples: int, n_shards: int) -> list[tuple[int, int]]:
    """Contiguous, near-equal [start, stop) ranges: fixed example->shard assignment, order kept."""
    edges = [round(i * n_examples / n_shards) for i in range(n_shards + 1)]
    return list(zip(edges[:-1], edges[1:]))


# ---------------------------------------------------------------------------------------------
# tf.train.Example


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint; negative int64 values as their 64-bit two's complement."""
    value &= _U64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _head(number: int, size: int) -> bytes:
    """Tag and length of a length-delimited field (wire type 2) whose payload has `size` bytes."""
    return _varint(number << 3 | 2) + _varint(size)


def _field(number: int, payload: bytes) -> bytes:
    return _head(number, len(payload)) + payload


def _feature(value) -> list[bytes]:
    """A serialised `Feature` holding `value` (one value or a list of one type), as pieces.

    Pieces, joined once by `encode_example`, keep an n-frame sequence from being copied once
    per nesting level of the message.
    """
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    if values and all(isinstance(v, (bytes, str)) for v in values):
        body = []
        for v in values:
            v = v.encode() if isinstance(v, str) else v
            body += [_head(1, len(v)), v]
        return [_head(1, sum(map(len, body))), *body]  # bytes_list
    if values and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return [_field(3, _field(1, b"".join(_varint(int(v)) for v in values)))]  # int64_list
    if values and all(isinstance(v, (float, np.floating)) for v in values):
        return [_field(2, _field(1, struct.pack(f"<{len(values)}f", *values)))]  # float_list
    raise TypeError(f"cannot store {value!r} in a tf.train.Feature (empty, mixed or "
                    "unsupported types)")


def encode_example(features: Mapping[str, object]) -> bytes:
    """A serialised `tf.train.Example` (bytes/str, int or float values, or lists of one type).

    Map entries are written sorted by key, so the bytes depend only on the features.
    """
    entries = []
    for key in sorted(features):
        feature = _feature(features[key])
        key_field = _field(1, key.encode())
        value_head = _head(2, sum(map(len, feature)))
        entry_size = len(key_field) + len(value_head) + sum(map(len, feature))
        entries += [_head(1, entry_size), key_field, value_head, *feature]
    return b"".join([_head(1, sum(map(len, entries))), *entries])


# ---------------------------------------------------------------------------------------------
# TFRecord framing


def _mask(crc: int) -> bytes:
    """TFRecord's masking of a CRC32C (so CRCs of data holding CRCs stay well spread)."""
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & _U32)


def masked_crc(data: bytes) -> bytes:
    """TFRecord's masked CRC32C of `data`, as the 4 little-endian bytes stored in the file."""
    return _mask(google_crc32c.value(data))


class RecordWriter:
    """Appends TFRecords to an open binary file and keeps the sha256 of everything written."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self._sha = hashlib.sha256()
        self.count = 0

    def write(self, record: bytes) -> None:
        length = struct.pack("<Q", len(record))
        for part in (length + masked_crc(length), record, masked_crc(record)):
            self._sha.update(part)
            self._f.write(part)
        self.count += 1

    def sha256(self) -> str:
        return self._sha.hexdigest()


def read_records(f: BinaryIO, name: str = "<records>") -> Iterator[bytes]:
    """The records of a TFRecord file, checking both CRCs; a damaged file raises ValueError
    naming `name` and the record index."""
    index = 0
    while True:
        head = f.read(12)
        if not head:
            return
        if len(head) < 12 or masked_crc(head[:8]) != head[8:]:
            raise ValueError(f"{name}: record {index}: damaged or truncated length header")
        (length,) = struct.unpack("<Q", head[:8])
        data = f.read(length)
        footer = f.read(4)
        if len(data) < length or len(footer) < 4 or masked_crc(data) != footer:
            raise ValueError(f"{name}: record {index}: damaged or truncated data")
        yield data
        index += 1
