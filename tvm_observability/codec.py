"""Wire codec: VehicleSnapshot <-> msgpack bytes. The only module that imports msgpack."""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import MalformedBody
from .model import VehicleSnapshot

CONTENT_TYPE = "application/msgpack"

# Bounds handed to the C unpacker so a hostile body cannot make it allocate much
# more than the body itself: no string, array or map larger than a valid snapshot needs.
_MAX_STR = 4096
_MAX_CONTAINER = 1024


def encode(snapshot: VehicleSnapshot) -> bytes:
    """The msgpack body of one push."""
    return encode_wire(snapshot.to_wire())


def encode_wire(wire: dict[str, Any]) -> bytes:
    """Pack an arbitrary wire map (tests and load tools build these directly)."""
    packed: bytes = msgpack.packb(wire, use_bin_type=True)
    return packed


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
            max_str_len=_MAX_STR,
            max_bin_len=_MAX_STR,
            max_array_len=_MAX_CONTAINER,
            max_map_len=_MAX_CONTAINER,
            max_ext_len=_MAX_STR,
        )
    except Exception as exc:  # msgpack raises ValueError, TypeError, StackError, ExtraData, ...
        raise MalformedBody(f"body is not a valid msgpack document: {type(exc).__name__}") from None


def pack_state(image: dict[str, Any]) -> bytes:
    """The aggregator's state file image (trusted, written by this program) as msgpack."""
    packed: bytes = msgpack.packb(image, use_bin_type=True)
    return packed


def unpack_state(data: bytes) -> Any:
    """Read a state file image; raise ValueError if it is not one msgpack document."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise ValueError(f"not a msgpack state image: {type(exc).__name__}: {exc}") from None
