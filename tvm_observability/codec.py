"""Wire codec: VehicleSnapshot <-> msgpack bytes. The only module that imports msgpack."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from .errors import MalformedBody
from .model import VehicleSnapshot

CONTENT_TYPE = "application/msgpack"

MAX_STR = 4096
"""Longest string, bin or ext (bytes) in a body: handed to the C unpacker, with MAX_CONTAINER, so that a hostile
body cannot make it allocate much more than the body itself (no value larger than a valid snapshot needs)."""
MAX_CONTAINER = 1024
"""Most entries of one array or map in a body (the header's count)."""


def encode(snapshot: VehicleSnapshot) -> bytes:
    """The msgpack body of one push."""
    return encode_wire(snapshot.to_wire())


def encode_wire(wire: dict[str, Any]) -> bytes:
    """Pack an arbitrary wire map (tests and load tools build these directly)."""
    packed: bytes = msgpack.packb(wire, use_bin_type=True)
    return packed


def encode_batch(bodies: Sequence[bytes]) -> bytes:
    """A msgpack array of already encoded snapshot bodies (a backlog upload), without decoding them again."""
    header: bytes = msgpack.Packer().pack_array_header(len(bodies))
    return header + b"".join(bodies)


def decode(body: bytes) -> Any:
    """Unpack a body into plain Python values; anything but clean msgpack raises MalformedBody.

    The result is not yet trusted: `ingest.parse_snapshot` checks it against the schema.
    """
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=MAX_STR,
            max_bin_len=MAX_STR,
            max_array_len=MAX_CONTAINER,
            max_map_len=MAX_CONTAINER,
            max_ext_len=MAX_STR,
        )
    except Exception as exc:  # msgpack raises ValueError, TypeError, StackError, ExtraData, ...
        raise MalformedBody(f"body is not a valid msgpack document: {type(exc).__name__}") from None


def as_ext(value: object) -> tuple[int, bytes] | None:
    """(type code, data) of a msgpack extension value as `decode` returns it (an ExtType, or a Timestamp for
    type -1), None for anything else: for showing values the schema does not know."""
    if isinstance(value, msgpack.ExtType):
        return value.code, value.data
    if isinstance(value, msgpack.Timestamp):
        return -1, value.to_bytes()
    return None


def pack_state(image: dict[str, Any]) -> bytes:
    """The aggregator's state file image (trusted, written by this program) as msgpack."""
    packed: bytes = msgpack.packb(image, use_bin_type=True)
    return packed


def pack_state_entry(key: str, value: Any) -> bytes:
    """One key and value of a map, packed on their own (for `pack_state_map`)."""
    packed: bytes = msgpack.packb(key, use_bin_type=True) + msgpack.packb(value, use_bin_type=True)
    return packed


def pack_state_map(header: Mapping[str, Any], key: str, entries: Sequence[bytes]) -> bytes:
    """The same bytes as pack_state({**header, key: {...}}) when the inner map's entries were packed one at a
    time by `pack_state_entry`: so a large image can be packed in slices."""
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack_map_header(len(header) + 1)]
    for name, value in header.items():
        parts += [packer.pack(name), packer.pack(value)]
    parts += [packer.pack(key), packer.pack_map_header(len(entries)), *entries]
    return b"".join(parts)


def unpack_state(data: bytes) -> Any:
    """Read a state file image; raise ValueError if it is not one msgpack document."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise ValueError(f"not a msgpack state image: {type(exc).__name__}: {exc}") from None
