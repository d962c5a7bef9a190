"""Prometheus remote write 1.0 request bodies, encoded by hand. Pure: no I/O.

A remote-write request is a protobuf `prometheus.WriteRequest`, compressed with snappy's *block* format (not
the framed one), POSTed with the headers in HEADERS. Only four small messages are used:

    WriteRequest { repeated TimeSeries timeseries = 1; }
    TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    Label        { string name = 1; string value = 2; }
    Sample       { double value = 1; int64 timestamp = 2; }   // milliseconds since the epoch

so they are written here directly instead of through protobuf and snappy libraries the aggregator host would
have to install (the robot needs none of this). The snappy encoder emits literals only: a valid snappy block
that every decoder reads, without compression (a history batch is at most a few hundred kilobytes, sent to a
Prometheus on the same network). Labels are sorted by name, as the receiver expects.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence

HEADERS = {
    "Content-Type": "application/x-protobuf",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}
"""What a remote-write 1.0 request carries besides its body."""

Series = tuple[Mapping[str, str], Sequence[tuple[int, float]]]
"""One time series: its labels (`__name__` included) and its samples as (timestamp in ms, value)."""

_SNAPPY_CHUNK = 65536
"""Bytes per literal: one with a two-byte length (tag 61)."""


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # int64 fields: two's complement, as protobuf writes negative numbers
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _label(name: str, value: str) -> bytes:
    return _field(1, _field(1, name.encode()) + _field(2, value.encode()))


def _sample(timestamp_ms: int, value: float) -> bytes:
    # value: field 1, wire type 1 (64-bit); timestamp: field 2, wire type 0 (varint).
    return _field(2, b"\x09" + struct.pack("<d", value) + b"\x10" + _varint(timestamp_ms))


def write_request(series: Iterable[Series]) -> bytes:
    """The protobuf WriteRequest holding `series` (labels sorted by name, samples in the order given)."""
    out = bytearray()
    for labels, samples in series:
        body = b"".join(_label(name, labels[name]) for name in sorted(labels))
        body += b"".join(_sample(ts, value) for ts, value in samples)
        out += _field(1, body)
    return bytes(out)


def snappy_block(data: bytes) -> bytes:
    """`data` as a snappy block (literals only): the uncompressed length, then chunks of at most 64 KiB."""
    out = bytearray(_varint(len(data)))
    for start in range(0, len(data), _SNAPPY_CHUNK):
        chunk = data[start : start + _SNAPPY_CHUNK]
        out += bytes((61 << 2,)) + struct.pack("<H", len(chunk) - 1) + chunk
    return bytes(out)


def encode(series: Iterable[Series]) -> bytes:
    """The body of one remote-write request."""
    return snappy_block(write_request(series))
