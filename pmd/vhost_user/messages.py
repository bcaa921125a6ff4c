"""vhost-user message layouts: request codes, flags, payload structs, rules.

Everything here follows QEMU's ``docs/interop/vhost-user.rst`` (numbers are
native byte order, structs are laid out as QEMU's ``VhostUserMsg`` union
members).  Nothing here knows about virtio-net, sockets or Numba: this module
says what a well-formed message looks like; ``codec`` moves messages over a
socket and enforces the rules in ``FRONTEND_SPECS`` / ``BACKEND_SPECS``.
"""
from __future__ import annotations

import enum
import functools
import struct
from dataclasses import dataclass, field, fields
from typing import ClassVar, Literal, Self

from .errors import BadPayload, BadSize

# --------------------------------------------------------------------------
# Header

HEADER = struct.Struct("=III")  # request, flags, size
HEADER_SIZE = HEADER.size  # 12

VERSION = 0x1  # the only protocol version; lives in flags bits 0-1
VERSION_MASK = 0x3
FLAG_REPLY = 0x4  # bit 2: set on every reply
FLAG_NEED_REPLY = 0x8  # bit 3: sender asks for a REPLY_ACK (u64 0 = success)
KNOWN_FLAGS = VERSION_MASK | FLAG_REPLY | FLAG_NEED_REPLY

# At most 8 fds per message: 8 memory regions, and the back-end channel's
# documented limit for BACKEND_SEND_FD.
MAX_FDS = 8
MAX_MEM_REGIONS = 8
MAX_CONFIG_SIZE = 256  # largest virtio config space a GET/SET_CONFIG carries
# The largest fixed layout is a full Config (268 bytes); QEMU's crypto session
# struct is ~1.1 KiB.  Nothing legal comes near 4096, so anything bigger is a
# broken or hostile peer and is refused before we buffer it.
MAX_PAYLOAD_SIZE = 4096

Direction = Literal["frontend", "backend"]
"""Which request namespace a channel carries: ``"frontend"`` for the main
socket (FrontendReq codes, replies from the back-end), ``"backend"`` for the
SET_BACKEND_REQ_FD channel (BackendReq codes, replies from the front-end)."""


class FrontendReq(enum.IntEnum):
    """Requests sent by the front-end on the main socket."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4  # deprecated
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21  # formerly SET_SLAVE_REQ_FD
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40
    GET_SHARED_OBJECT = 41
    SET_DEVICE_STATE_FD = 42
    CHECK_DEVICE_STATE = 43

    SET_SLAVE_REQ_FD = 21  # alias: the name older QEMU and DPDK use


class BackendReq(enum.IntEnum):
    """Requests sent by the back-end on the SET_BACKEND_REQ_FD channel."""

    IOTLB_MSG = 1
    CONFIG_CHANGE_MSG = 2
    VRING_HOST_NOTIFIER_MSG = 3
    VRING_CALL = 4
    VRING_ERR = 5
    SHARED_OBJECT_ADD = 6
    SHARED_OBJECT_REMOVE = 7
    SHARED_OBJECT_LOOKUP = 8


class ProtocolFeature(enum.IntEnum):
    """Bit numbers of the protocol feature mask (GET/SET_PROTOCOL_FEATURES)."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    MTU = 4
    BACKEND_REQ = 5  # formerly SLAVE_REQ
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10  # formerly SLAVE_SEND_FD
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16
    XEN_MMAP = 17  # changes MemoryRegion's layout; this codec does not support it
    SHARED_OBJECT = 18
    DEVICE_STATE = 19

    @property
    def mask(self) -> int:
        return 1 << self.value


# Virtio feature bits that vhost-user itself defines or reuses.
VHOST_USER_F_PROTOCOL_FEATURES = 30
VHOST_F_LOG_ALL = 26
VHOST_VRING_F_LOG = 0  # bit number in VringAddr.flags
VRING_ADDR_F_LOG = 1 << VHOST_VRING_F_LOG
VHOST_LOG_PAGE = 0x1000  # one dirty-log bit covers this many bytes

# The u64 payload of SET_VRING_KICK/CALL/ERR (and VringArea.u64):
VRING_IDX_MASK = 0xFF  # bits 0-7: vring index
VRING_NOFD_MASK = 1 << 8  # bit 8: no fd attached (poll instead)


class IotlbType(enum.IntEnum):
    """``IotlbMsg.type``."""

    MISS = 1
    UPDATE = 2
    INVALIDATE = 3
    ACCESS_FAIL = 4


class IotlbPerm(enum.IntEnum):
    """``IotlbMsg.perm`` (from the device's point of view)."""

    NONE = 0
    RO = 1
    WO = 2
    RW = 3


class ConfigFlags(enum.IntEnum):
    """``Config.flags``."""

    WRITABLE = 0  # a guest write to a writable field
    LIVE_MIGRATION = 1  # restoring config on the migration destination


class TransferDirection(enum.IntEnum):
    SAVE = 0  # back-end -> front-end (migration source)
    LOAD = 1  # front-end -> back-end (migration destination)


class MigrationPhase(enum.IntEnum):
    STOPPED = 0


# --------------------------------------------------------------------------
# Payloads


class Payload:
    """Base of all payload layouts.

    Fixed-size layouts set ``FORMAT`` (whose fields map, in order, onto the
    dataclass fields; ``x`` pads need no field).  Variable-size layouts
    override ``size_ok``/``expected_size``/``max_size``/``pack``/``unpack``.
    """

    FORMAT: ClassVar[struct.Struct]

    @classmethod
    def size_ok(cls, size: int) -> bool:
        """Whether a payload of ``size`` bytes can be this layout."""
        return size == cls.FORMAT.size

    @classmethod
    def expected_size(cls) -> str:
        """The legal size(s), for error messages."""
        return str(cls.FORMAT.size)

    @classmethod
    def max_size(cls) -> int:
        return cls.FORMAT.size

    @classmethod
    def check_size(cls, data: bytes) -> None:
        """Raise BadSize unless ``data`` has a legal size for this layout."""
        if not cls.size_ok(len(data)):
            raise BadSize(f"{cls.__name__} payload is {len(data)} bytes, expected {cls.expected_size()}")

    def pack(self) -> bytes:
        """The wire bytes; ValueError if a field does not fit its C type."""
        try:
            return self.FORMAT.pack(*(getattr(self, f.name) for f in fields(self)))  # type: ignore[arg-type]
        except struct.error as e:
            raise ValueError(f"{type(self).__name__}: {e}") from None

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        """Parse wire bytes; BadSize/BadPayload if they are not this layout."""
        cls.check_size(data)
        return cls(*cls.FORMAT.unpack(data))


@dataclass
class Empty(Payload):
    """No payload (size 0)."""

    FORMAT: ClassVar = struct.Struct("=")


@dataclass
class U64(Payload):
    """A single u64: features, protocol features, status, MTU, queue count, ack."""

    value: int
    FORMAT: ClassVar = struct.Struct("=Q")


@dataclass
class VringFd(Payload):
    """The u64 of SET_VRING_KICK/CALL/ERR: vring index (bits 0-7) and NOFD (bit 8)."""

    index: int
    nofd: bool = False
    FORMAT: ClassVar = struct.Struct("=Q")

    def pack(self) -> bytes:
        if not 0 <= self.index <= VRING_IDX_MASK:
            raise ValueError(f"VringFd: index {self.index} outside 0..{VRING_IDX_MASK}")
        return self.FORMAT.pack(self.index | (VRING_NOFD_MASK if self.nofd else 0))

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        cls.check_size(data)
        (value,) = cls.FORMAT.unpack(data)
        # Bits 9-63 are unused; QEMU and DPDK ignore them, so do we.
        return cls(value & VRING_IDX_MASK, bool(value & VRING_NOFD_MASK))


@dataclass
class VringState(Payload):
    """struct vhost_vring_state: index + num (size, base, enable, endianness)."""

    index: int
    num: int
    FORMAT: ClassVar = struct.Struct("=II")


@dataclass
class VringAddr(Payload):
    """struct vhost_vring_addr.  Addresses are QEMU user addresses, or IOVAs
    when VIRTIO_F_IOMMU_PLATFORM was negotiated; ``log_guest_addr`` is a
    guest-physical address used only for dirty logging."""

    index: int
    flags: int
    desc_user_addr: int
    used_user_addr: int
    avail_user_addr: int
    log_guest_addr: int
    FORMAT: ClassVar = struct.Struct("=IIQQQQ")


@dataclass
class MemoryRegion(Payload):
    """One region of the front-end's memory, mapped from its own fd at ``mmap_offset``."""

    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int
    FORMAT: ClassVar = struct.Struct("=QQQQ")


@dataclass
class MemTable(Payload):
    """SET_MEM_TABLE: u32 nregions, u32 padding, then nregions MemoryRegions.

    QEMU and DPDK send exactly ``8 + 32 * nregions`` bytes (not the full
    8-slot array), so that is the only size accepted.
    """

    regions: list[MemoryRegion] = field(default_factory=list)
    PREFIX: ClassVar = struct.Struct("=II")

    @classmethod
    def size_ok(cls, size: int) -> bool:
        body, step = size - cls.PREFIX.size, MemoryRegion.FORMAT.size
        return body >= 0 and body % step == 0 and body // step <= MAX_MEM_REGIONS

    @classmethod
    def expected_size(cls) -> str:
        return f"{cls.PREFIX.size} + {MemoryRegion.FORMAT.size} * nregions (nregions <= {MAX_MEM_REGIONS})"

    @classmethod
    def max_size(cls) -> int:
        return cls.PREFIX.size + MAX_MEM_REGIONS * MemoryRegion.FORMAT.size

    @staticmethod
    def nregions_of(data: bytes) -> int:
        """The nregions field of a payload already known to be a MemTable size."""
        return MemTable.PREFIX.unpack_from(data)[0]

    def pack(self) -> bytes:
        if len(self.regions) > MAX_MEM_REGIONS:
            raise ValueError(f"MemTable: {len(self.regions)} regions, at most {MAX_MEM_REGIONS}")
        return self.PREFIX.pack(len(self.regions), 0) + b"".join(r.pack() for r in self.regions)

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        cls.check_size(data)
        nregions = cls.nregions_of(data)
        carried = (len(data) - cls.PREFIX.size) // MemoryRegion.FORMAT.size
        if nregions != carried:
            raise BadPayload(f"MemTable says nregions={nregions} but its {len(data)} bytes carry {carried} regions")
        step = MemoryRegion.FORMAT.size
        off = cls.PREFIX.size
        return cls([MemoryRegion.unpack(data[off + i * step : off + (i + 1) * step]) for i in range(nregions)])


@dataclass
class SingleMemoryRegion(Payload):
    """ADD_MEM_REG / REM_MEM_REG: u64 padding, then one MemoryRegion."""

    region: MemoryRegion
    FORMAT: ClassVar = struct.Struct("=8xQQQQ")

    def pack(self) -> bytes:
        r = self.region
        try:
            return self.FORMAT.pack(r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset)
        except struct.error as e:
            raise ValueError(f"SingleMemoryRegion: {e}") from None

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        cls.check_size(data)
        return cls(MemoryRegion(*cls.FORMAT.unpack(data)))


@dataclass
class LogRegion(Payload):
    """SET_LOG_BASE: size of the dirty log and its offset in the attached fd.

    (The spec's message table says "u64" but the layout QEMU sends, and DPDK
    checks, is this 16-byte VhostUserLog.)"""

    mmap_size: int
    mmap_offset: int
    FORMAT: ClassVar = struct.Struct("=QQ")


@dataclass
class IotlbMsg(Payload):
    """struct vhost_iotlb_msg: 3 x u64, u8 perm, u8 type, padded to 32 bytes
    (the C struct's alignment, which is what QEMU and DPDK send).

    On INVALIDATE, QEMU leaves ``uaddr``/``perm`` as garbage: don't check them.
    """

    iova: int
    size: int
    uaddr: int
    perm: int
    type: int
    FORMAT: ClassVar = struct.Struct("=QQQBB6x")


@dataclass
class Config(Payload):
    """GET/SET_CONFIG: u32 offset, u32 size, u32 flags, then ``size`` bytes.

    ``payload`` shorter than ``size`` is zero-padded by pack() (a GET_CONFIG
    request carries ``size`` bytes of zeros).
    """

    offset: int
    size: int
    flags: int = ConfigFlags.WRITABLE
    payload: bytes = b""
    PREFIX: ClassVar = struct.Struct("=III")

    @classmethod
    def size_ok(cls, size: int) -> bool:
        return cls.PREFIX.size <= size <= cls.PREFIX.size + MAX_CONFIG_SIZE

    @classmethod
    def expected_size(cls) -> str:
        return f"{cls.PREFIX.size} + size (size <= {MAX_CONFIG_SIZE})"

    @classmethod
    def max_size(cls) -> int:
        return cls.PREFIX.size + MAX_CONFIG_SIZE

    def pack(self) -> bytes:
        if not 0 <= self.size <= MAX_CONFIG_SIZE or len(self.payload) > self.size:
            raise ValueError(f"Config: size {self.size} with {len(self.payload)} payload bytes (max {MAX_CONFIG_SIZE})")
        try:
            head = self.PREFIX.pack(self.offset, self.size, self.flags)
        except struct.error as e:
            raise ValueError(f"Config: {e}") from None
        return head + self.payload.ljust(self.size, b"\0")

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        cls.check_size(data)
        offset, size, flags = cls.PREFIX.unpack_from(data)
        carried = len(data) - cls.PREFIX.size
        if size != carried:
            raise BadPayload(f"Config says size={size} but carries {carried} bytes")
        return cls(offset, size, flags, bytes(data[cls.PREFIX.size :]))


@dataclass
class VringArea(Payload):
    """Back-end VRING_HOST_NOTIFIER_MSG: u64 (index + NOFD), size, offset."""

    index: int
    size: int
    offset: int
    nofd: bool = False
    FORMAT: ClassVar = struct.Struct("=QQQ")

    def pack(self) -> bytes:
        if not 0 <= self.index <= VRING_IDX_MASK:
            raise ValueError(f"VringArea: index {self.index} outside 0..{VRING_IDX_MASK}")
        try:
            return self.FORMAT.pack(self.index | (VRING_NOFD_MASK if self.nofd else 0), self.size, self.offset)
        except struct.error as e:
            raise ValueError(f"VringArea: {e}") from None

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        cls.check_size(data)
        u64, size, offset = cls.FORMAT.unpack(data)
        return cls(u64 & VRING_IDX_MASK, size, offset, bool(u64 & VRING_NOFD_MASK))


@dataclass
class InflightInfo(Payload):
    """GET/SET_INFLIGHT_FD: u64 mmap_size, u64 mmap_offset, u16 num_queues,
    u16 queue_size, padded to 24 bytes (the C struct's size)."""

    mmap_size: int
    mmap_offset: int
    num_queues: int
    queue_size: int
    FORMAT: ClassVar = struct.Struct("=QQHH4x")


@dataclass
class SharedObject(Payload):
    """VhostUserShared: a 16-byte UUID."""

    uuid: bytes
    FORMAT: ClassVar = struct.Struct("=16s")

    def pack(self) -> bytes:
        if len(self.uuid) != 16:
            raise ValueError(f"SharedObject: uuid is {len(self.uuid)} bytes, expected 16")
        return self.uuid


@dataclass
class DeviceStateParams(Payload):
    """SET_DEVICE_STATE_FD: u32 transfer direction, u32 migration phase."""

    direction: int
    phase: int
    FORMAT: ClassVar = struct.Struct("=II")


@dataclass
class Opaque(Payload):
    """A payload this codec passes through unparsed (crypto sessions)."""

    data: bytes = b""

    @classmethod
    def size_ok(cls, size: int) -> bool:
        return 0 <= size <= MAX_PAYLOAD_SIZE

    @classmethod
    def expected_size(cls) -> str:
        return f"0..{MAX_PAYLOAD_SIZE}"

    @classmethod
    def max_size(cls) -> int:
        return MAX_PAYLOAD_SIZE

    def pack(self) -> bytes:
        return bytes(self.data)

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        cls.check_size(data)
        return cls(bytes(data))


# --------------------------------------------------------------------------
# Rules: payload layout, fd count and reply per request


class FdRule(enum.Enum):
    """How many fds a message carries; the text is used in error messages."""

    NONE = "no fd"
    ONE = "exactly one fd"
    OPTIONAL = "zero or one fd"
    PER_REGION = "one fd per memory region"
    UNLESS_NOFD = "one fd unless NOFD (bit 8 of the u64) is set"

    def expected(self, payload: bytes) -> tuple[int, int]:
        """(min, max) fds for this payload, whose size was already checked."""
        if self is FdRule.NONE:
            return 0, 0
        if self is FdRule.ONE:
            return 1, 1
        if self is FdRule.OPTIONAL:
            return 0, 1
        if self is FdRule.PER_REGION:
            n = MemTable.nregions_of(payload)
            return n, n
        (u64,) = struct.unpack_from("=Q", payload)
        return (0, 0) if u64 & VRING_NOFD_MASK else (1, 1)


@dataclass(frozen=True)
class Rule:
    """The legal payload layouts of one message, and its fd rule."""

    layouts: tuple[type[Payload], ...]
    fds: FdRule = FdRule.NONE

    def layout_for(self, size: int) -> type[Payload] | None:
        """The first layout that admits ``size`` bytes, or None."""
        for layout in self.layouts:
            if layout.size_ok(size):
                return layout
        return None

    def expected_size(self) -> str:
        return " or ".join(layout.expected_size() for layout in self.layouts)

    def max_size(self) -> int:
        return max(layout.max_size() for layout in self.layouts)


@dataclass(frozen=True)
class RequestSpec:
    """What a request carries and what comes back.

    ``reply`` is the layout of an explicit reply body (validated when a
    reply arrives).  It is sent when ``always_reply`` is set, or when the
    ``reply_if`` protocol feature was negotiated.  Besides that, any request
    with NEED_REPLY (and REPLY_ACK negotiated) gets a u64 ack (``ACK_RULE``).
    """

    request: Rule
    reply: Rule | None = None
    always_reply: bool = False
    reply_if: ProtocolFeature | None = None


ACK_RULE = Rule((U64,))  # REPLY_ACK body: u64, 0 = success

_NONE = Rule((Empty,))
_U64 = Rule((U64,))
_STATE = Rule((VringState,))


def _get(reply: Rule, request: Rule = _NONE) -> RequestSpec:
    return RequestSpec(request, reply, always_reply=True)


_F = FrontendReq
FRONTEND_SPECS: dict[int, RequestSpec] = {
    _F.GET_FEATURES: _get(_U64),
    _F.SET_FEATURES: RequestSpec(_U64),
    _F.SET_OWNER: RequestSpec(_NONE),
    _F.RESET_OWNER: RequestSpec(_NONE),
    # Explicit reply only in postcopy (after POSTCOPY_LISTEN), not modelled here.
    _F.SET_MEM_TABLE: RequestSpec(Rule((MemTable,), FdRule.PER_REGION), reply=Rule((MemTable,))),
    # DPDK replies with an empty body, libvhost-user with a u64: accept both.
    _F.SET_LOG_BASE: RequestSpec(
        Rule((LogRegion,), FdRule.ONE), reply=Rule((Empty, U64)), reply_if=ProtocolFeature.LOG_SHMFD
    ),
    _F.SET_LOG_FD: RequestSpec(Rule((Empty,), FdRule.ONE)),
    _F.SET_VRING_NUM: RequestSpec(_STATE),
    _F.SET_VRING_ADDR: RequestSpec(Rule((VringAddr,))),
    _F.SET_VRING_BASE: RequestSpec(_STATE),
    _F.GET_VRING_BASE: _get(_STATE, _STATE),
    _F.SET_VRING_KICK: RequestSpec(Rule((VringFd,), FdRule.UNLESS_NOFD)),
    _F.SET_VRING_CALL: RequestSpec(Rule((VringFd,), FdRule.UNLESS_NOFD)),
    _F.SET_VRING_ERR: RequestSpec(Rule((VringFd,), FdRule.UNLESS_NOFD)),
    _F.GET_PROTOCOL_FEATURES: _get(_U64),
    _F.SET_PROTOCOL_FEATURES: RequestSpec(_U64),
    _F.GET_QUEUE_NUM: _get(_U64),
    _F.SET_VRING_ENABLE: RequestSpec(_STATE),
    _F.SEND_RARP: RequestSpec(_U64),  # first 6 bytes: the guest MAC
    _F.NET_SET_MTU: RequestSpec(_U64),
    _F.SET_BACKEND_REQ_FD: RequestSpec(Rule((Empty,), FdRule.ONE)),
    _F.IOTLB_MSG: _get(_U64, Rule((IotlbMsg,))),
    _F.SET_VRING_ENDIAN: RequestSpec(_STATE),
    # An empty GET_CONFIG reply is the back-end's way of saying "error".
    _F.GET_CONFIG: _get(Rule((Config, Empty)), Rule((Config,))),
    _F.SET_CONFIG: RequestSpec(Rule((Config,))),
    _F.CREATE_CRYPTO_SESSION: _get(Rule((Opaque,)), Rule((Opaque,))),
    _F.CLOSE_CRYPTO_SESSION: RequestSpec(_U64),
    _F.POSTCOPY_ADVISE: _get(Rule((Empty,), FdRule.ONE)),  # reply carries the userfaultfd
    _F.POSTCOPY_LISTEN: RequestSpec(_NONE),
    _F.POSTCOPY_END: _get(_U64),
    # A back-end with nothing to share replies mmap_size 0 and no fd (QEMU accepts that).
    _F.GET_INFLIGHT_FD: _get(Rule((InflightInfo,), FdRule.OPTIONAL), Rule((InflightInfo,))),
    _F.SET_INFLIGHT_FD: RequestSpec(Rule((InflightInfo,), FdRule.ONE)),
    _F.GPU_SET_SOCKET: RequestSpec(Rule((Empty,), FdRule.ONE)),
    _F.RESET_DEVICE: RequestSpec(_NONE),
    _F.VRING_KICK: RequestSpec(_STATE),
    _F.GET_MAX_MEM_SLOTS: _get(_U64),
    _F.ADD_MEM_REG: RequestSpec(Rule((SingleMemoryRegion,), FdRule.ONE), reply=Rule((SingleMemoryRegion,))),
    # The spec lets back-ends accept (and must then close) a stray fd here.
    _F.REM_MEM_REG: RequestSpec(Rule((SingleMemoryRegion,), FdRule.OPTIONAL)),
    _F.SET_STATUS: RequestSpec(_U64),
    _F.GET_STATUS: _get(_U64),
    _F.GET_SHARED_OBJECT: _get(Rule((U64,), FdRule.OPTIONAL), Rule((SharedObject,))),
    # Reply: bits 0-7 error code, bit 8 = no fd returned.
    _F.SET_DEVICE_STATE_FD: _get(Rule((U64,), FdRule.UNLESS_NOFD), Rule((DeviceStateParams,), FdRule.ONE)),
    _F.CHECK_DEVICE_STATE: _get(_U64),
}

_B = BackendReq
BACKEND_SPECS: dict[int, RequestSpec] = {
    _B.IOTLB_MSG: RequestSpec(Rule((IotlbMsg,))),
    _B.CONFIG_CHANGE_MSG: RequestSpec(_NONE),
    _B.VRING_HOST_NOTIFIER_MSG: RequestSpec(Rule((VringArea,), FdRule.UNLESS_NOFD)),
    _B.VRING_CALL: RequestSpec(_STATE),
    _B.VRING_ERR: RequestSpec(_STATE),
    _B.SHARED_OBJECT_ADD: RequestSpec(Rule((SharedObject,))),
    _B.SHARED_OBJECT_REMOVE: RequestSpec(Rule((SharedObject,))),
    _B.SHARED_OBJECT_LOOKUP: _get(Rule((U64,), FdRule.OPTIONAL), Rule((SharedObject,))),
}

SPECS: dict[str, dict[int, RequestSpec]] = {"frontend": FRONTEND_SPECS, "backend": BACKEND_SPECS}
_CODES: dict[str, type[enum.IntEnum]] = {"frontend": FrontendReq, "backend": BackendReq}


@functools.lru_cache(maxsize=1024)  # every message names itself several times; pure
def request_code(request: int, direction: Direction) -> int:
    """``request`` as a FrontendReq/BackendReq member when known (it prints its name), else the int."""
    try:
        return _CODES[direction](request)
    except ValueError:
        return request


@functools.lru_cache(maxsize=1024)
def request_name(request: int, direction: Direction) -> str:
    """'SET_FEATURES (2)' for a known code, 'unknown request 999' otherwise."""
    code = request_code(request, direction)
    if isinstance(code, enum.IntEnum):
        return f"{code.name} ({int(code)})"
    return f"unknown {direction} request {request}"


def expects_reply(request: int, flags: int, protocol_features: int, direction: Direction = "frontend") -> bool:
    """Whether the receiver of this request must send a reply.

    True for requests with an explicit reply (GET_*, IOTLB_MSG, ...; SET_LOG_BASE
    only with LOG_SHMFD), and for any request with NEED_REPLY once REPLY_ACK
    has been negotiated.  Exactly one reply is sent even when both hold.
    """
    spec = SPECS[direction].get(request)
    if spec is not None and spec.reply is not None:
        if spec.always_reply:
            return True
        if spec.reply_if is not None and protocol_features & spec.reply_if.mask:
            return True
    return bool(flags & FLAG_NEED_REPLY) and bool(protocol_features & ProtocolFeature.REPLY_ACK.mask)


# Every layout's largest size fits under the global cap (checked at import so
# a table edit cannot silently make a legal message unreadable).
assert all(
    rule.max_size() <= MAX_PAYLOAD_SIZE
    for specs in SPECS.values()
    for spec in specs.values()
    for rule in (spec.request, spec.reply or _NONE)
)
