"""A DDS content filter on an existing subscription through rcl's C API, for rclpy releases that have none.

rcl has content filters since Humble (`rcl_subscription_set_content_filter`, implemented by rmw_fastrtps); rclpy
exposes them only from Kilted on (`create_subscription(..., content_filter_options=...)`). On Humble and Jazzy,
where robots run, the bridge sets the filter on its /rosout subscription through ctypes instead, given the
subscription's rcl handle (rclpy's `Subscription.handle.pointer`). Every failure (a library not found, an rmw
without content filters) leaves the subscription as it was, unfiltered, and says why: the bridge then drops the
entries below its level itself.

No rclpy here: node.py owns the subscription and hands over the address of its `rcl_subscription_t`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

RCL_RET_OK = 0
_OPTIONS_BYTES = 256
"""Room for an `rcl_subscription_content_filter_options_t` (64 bytes on 64-bit Humble to Kilted: a string
pointer and an rcutils_string_array_t), zeroed as rcl_get_zero_initialized_subscription_content_filter_options()
returns it."""


def set_filter(subscription: int, expression: str, parameters: Sequence[str]) -> str | None:
    """Filter the subscription at address `subscription` by `expression` (DDS SQL, `%0`… for `parameters`).
    None once the middleware filters, else why it does not (the subscription is then unchanged)."""
    try:
        rcl = ctypes.CDLL("librcl.so")
        rcutils = ctypes.CDLL("librcutils.so")
    except OSError as exc:
        return f"rcl not loadable: {exc}"
    try:
        init = rcl.rcl_subscription_content_filter_options_init
        set_content_filter = rcl.rcl_subscription_set_content_filter
        fini = rcl.rcl_subscription_content_filter_options_fini
        is_enabled = rcl.rcl_subscription_is_cft_enabled
        reset_error = rcutils.rcutils_reset_error
    except AttributeError as exc:  # an rcl older than Humble
        return f"this rcl has no content filters: {exc}"
    init.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_char_p),
        ctypes.c_void_p,
    ]
    init.restype = ctypes.c_int
    set_content_filter.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    set_content_filter.restype = ctypes.c_int
    fini.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    fini.restype = ctypes.c_int
    is_enabled.argtypes = [ctypes.c_void_p]
    is_enabled.restype = ctypes.c_bool
    reset_error.argtypes = []
    reset_error.restype = None

    options = ctypes.create_string_buffer(_OPTIONS_BYTES)
    argv = (ctypes.c_char_p * max(1, len(parameters)))(*(p.encode() for p in parameters))
    ret = init(subscription, expression.encode(), len(parameters), argv, options)
    if ret != RCL_RET_OK:
        reset_error()
        return f"rcl_subscription_content_filter_options_init returned {ret}"
    try:
        ret = set_content_filter(subscription, options)
    finally:
        if fini(subscription, options) != RCL_RET_OK:
            reset_error()
    if ret != RCL_RET_OK:
        reset_error()  # e.g. RCL_RET_UNSUPPORTED (3) from an rmw without content filters
        return f"rcl_subscription_set_content_filter returned {ret}"
    if not is_enabled(subscription):
        return "the middleware has no content filters"
    return None
