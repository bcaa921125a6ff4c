"""The vhost-user protocol, as a codec only (QEMU docs/interop/vhost-user.rst).

- ``messages``: request codes, flags, payload layouts and the per-request
  rules (payload size, fds, replies).
- ``codec``: ``Channel`` (framing + SCM_RIGHTS over a unix socket) and
  ``Message``; ``errors``: what can go wrong, with messages naming it.

No device logic, no virtio-net, no Numba: a session (state machine) and the
devices live elsewhere and use this package on both sides of the protocol.
"""
from .codec import Channel, Message, validate
from .errors import (
    BadFdCount,
    BadFlags,
    BadPayload,
    BadReply,
    BadSize,
    BadVersion,
    PeerClosed,
    ShortHeader,
    ShortPayload,
    Timeout,
    UnknownRequest,
    VhostUserError,
)
from .messages import (
    BackendReq,
    Config,
    DeviceStateParams,
    Empty,
    FrontendReq,
    InflightInfo,
    IotlbMsg,
    IotlbPerm,
    IotlbType,
    LogRegion,
    MemoryRegion,
    MemTable,
    Opaque,
    Payload,
    ProtocolFeature,
    SharedObject,
    SingleMemoryRegion,
    U64,
    VringAddr,
    VringArea,
    VringFd,
    VringState,
    expects_reply,
)

__all__ = [
    "Channel", "Message", "validate",
    "VhostUserError", "PeerClosed", "ShortHeader", "ShortPayload", "Timeout", "BadVersion", "BadFlags",
    "BadSize", "BadFdCount", "BadPayload", "UnknownRequest", "BadReply",
    "FrontendReq", "BackendReq", "ProtocolFeature", "IotlbType", "IotlbPerm", "expects_reply",
    "Payload", "Empty", "U64", "VringFd", "VringState", "VringAddr", "MemoryRegion", "MemTable",
    "SingleMemoryRegion", "LogRegion", "IotlbMsg", "Config", "VringArea", "InflightInfo", "SharedObject",
    "DeviceStateParams", "Opaque",
]
