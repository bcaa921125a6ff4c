"""IOTLB misses of the vhost-pci port, the whole story in one place.

Behind VM1's vIOMMU (VIRTIO_F_IOMMU_PLATFORM) a guest address the window
does not map yet is a *miss*, not an error:

1. **Park** (kernel, ``park_on_miss``): the kernel that met the unmapped
   address stops where it is -- the descriptor stays available, nothing is
   consumed or dropped -- records the address and direction in its vring's
   ``VQ_MISS_*`` words and sends the MISS itself (``send_miss``: on a dup of
   the back-end channel, unless the page is asked for already).
   ``buffer_offset`` is where buffers are translated: it parks on the first
   page of a buffer not granted for the access it needs.  A page granted
   without that permission (read-only where the device must write) is asked
   for once, like a missing one (VM1 may have changed the mapping); if the
   UPDATE that answers still lacks it, the descriptor is bad (returned with
   len 0, counted in ``iotlb_perm_denied``): asking again would get the
   same answer forever.
2. **Ask ahead** (kernel, ``ask_ahead``): in the same park it looks at the
   next available chains of that vring, split or packed (read-only: the
   kernel consumes nothing past its miss; ``iotlb_ahead.py``) and asks for
   every page not granted yet, each once (``state.asked``), so VM1 answers
   them back to back instead of one round trip per buffer.  No Python runs
   between a miss and its UPDATE.
3. **Retry** (``unpark_covered``, ``iotlb_answer.py``: from the compiled
   IOTLB path, the lcore mapping acked UPDATEs, or ``IotlbMisses.updated``):
   an UPDATE that covers a parked address clears the vring's
   ``VQ_MISS_PENDING`` (and records the page in
   ``VQ_MISS_ANSWERED``); its kernel retries on the next burst (and parks
   again if it still needs a page).  Packets the port's transmit side
   accepted meanwhile wait in its hold queue (``txhold.py``).
4. **Ask again** (control thread, ``IotlbMisses.service``): a park whose
   MISS the kernel could not send (no back-end channel yet, a full socket)
   wakes the control thread, which sends it; a MISS with no UPDATE in reply
   is sent again after ``MISS_RESEND_S`` (its periodic service).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from ..atomics import fence, load_acquire, store_release
from ..guestmem.translate import granted_perm, translate, translate_inline
from ..guestmem.vmem import PAGE_SIZE
from ..iotlb_wire import BACKEND_IOTLB_MSG, MISS, MSG_SIZE, put_iotlb
from ..syscalls import MSG_DONTWAIT, MSG_NOSIGNAL, eventfd_signal, monotonic_ns, socket_send_from
from ..vhost_user.messages import VERSION, IotlbPerm
from .iotlb_ahead import misses_ahead
from .iotlb_answer import ASK_SLOTS, forget_asked, unpark_covered  # noqa: F401  (re-exported)
from .iotlb_maps import lcore_maps, maps_pending
from .state import (
    PORT_MISS_FD, PORT_WAKE_FD, VQ_IOMMU, VQ_MISS_ANSWERED, VQ_MISS_IOVA, VQ_MISS_PENDING, VQ_MISS_SENT, VQ_MISS_WRITE,
    VQ_READY, XS_IOTLB_MISS, XS_MISS_AHEAD, XS_MISS_SENT, XS_PERM_DENIED,
)

if TYPE_CHECKING:
    from ..vhost_user.backend import BackendSession

log = logging.getLogger("vhostpci.iotlb")

MISS_RESEND_S = 0.1  # a MISS with no UPDATE in reply is sent again after this
MISS_RESEND_NS = int(MISS_RESEND_S * 1e9)
MAX_ASK = 64  # pages asked for per ask-ahead (each MISS is 36 bytes: the socket holds thousands)
_U64 = (1 << 64) - 1
_PAGE_MASK = ~(PAGE_SIZE - 1)

# the MISS message a kernel sends itself (send_miss)
_PERM_RO, _PERM_WO = int(IotlbPerm.RO), int(IotlbPerm.WO)

# buffer_offset's answers besides a window offset (>= 0)
BUF_BAD, BUF_MISS = -1, -2


# ---------------------------------------------------------------- kernels
# send_miss's answers
SENT, ASKED_ALREADY, NOT_SENT, GRANTED = 1, 0, -1, 2


@njit(nogil=True, cache=True, _nrt=False)
def send_miss(st, v, iova, write):
    """Send the MISS for ``iova`` on the back-end channel from the kernel
    (``PORT_MISS_FD``; -1: none yet, the control thread sends it): one
    non-blocking ``send`` of the whole 44-byte message, which a unix stream
    socket appends whole or not at all, so it never splits a message the
    control thread sends on the same channel.  SENT, ASKED_ALREADY (less
    than MISS_RESEND_S ago, by any vring or the control thread), GRANTED
    (mapped meanwhile: nothing sent) or NOT_SENT.

    The note is read before the window: an UPDATE clears the notes of its
    pages only after it is mapped (``unpark_covered``'s fence orders them),
    so a note gone because the page was answered means the grant shows now.
    Asking again then would be a second MISS queued behind the answered
    one: QEMU takes it after the kernel used the page and VM1 unmapped it,
    fails to translate it (a DMAR fault in the guest) and sends nothing,
    while its note holds back the MISS of VM1's next buffer at that address
    (a strict guest reuses it at once) until MISS_RESEND_S."""
    fd = st.ctl[PORT_MISS_FD]
    if fd < 0:
        return NOT_SENT
    key = np.int64(iova) | (1 if write else 0)
    slot = (np.int64(iova) >> 12) & (ASK_SLOTS - 1)
    now = monotonic_ns()
    if load_acquire(st.asked[slot], 0) == key and now - st.asked[slot, 1] < MISS_RESEND_NS:
        return ASKED_ALREADY
    if translate(st.table, st.tcount, iova, 1, write) >= 0:
        return GRANTED
    b = st.missmsg[v]
    put_iotlb(b, 0, BACKEND_IOTLB_MSG, VERSION, iova, 0, 0, _PERM_WO if write else _PERM_RO, MISS)
    # noted before it is sent: the UPDATE may be mapped (and the note cleared,
    # forget_asked) before send returns; a note written after would stay
    old_key, old_t = st.asked[slot, 0], st.asked[slot, 1]
    st.asked[slot, 0] = key
    st.asked[slot, 1] = now
    if socket_send_from(fd, b, MSG_SIZE, MSG_DONTWAIT | MSG_NOSIGNAL) != MSG_SIZE:
        if st.asked[slot, 0] == key:
            st.asked[slot, 0], st.asked[slot, 1] = old_key, old_t
        return NOT_SENT
    return SENT


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def map_acked(st):
    """Map the UPDATEs acked and not mapped yet (``iotlb_maps.py``), if any:
    VM1 may have posted the buffer a kernel misses after one's ack, and it
    then needs no MISS.  True if some were queued."""
    mq = st.iotlb.maps
    if not maps_pending(mq):
        return False
    lcore_maps(st.iotlb.ws, st.vq, st.asked, mq)
    return True


@njit(nogil=True, cache=True, _nrt=False)
def park_on_miss(st, v, iova, write):
    """Vring ``v`` stops on the unmapped ``iova``: record it (once until it
    is answered; counted once), send the MISS and ask ahead (``send_miss``,
    ``ask_ahead``); only a MISS the kernel could not send wakes the control
    thread.

    The UPDATE may land between the failed lookup and the park (pages asked
    ahead stream in): the control thread un-parks only vrings it sees
    parked, so after publishing the park the kernel looks again, and
    un-parks itself if the page is there now.  Fences on both sides
    (``unpark_covered``): either it sees the park, or we see the page."""
    if map_acked(st) and translate(st.table, st.tcount, iova, 1, write) >= 0:
        return  # mapped now (its vring un-parked with it): the caller's next burst retries
    if load_acquire(st.vq[v], VQ_MISS_PENDING) != 0:
        return
    st.xstats[v, XS_IOTLB_MISS] += 1
    st.vq[v, VQ_MISS_IOVA] = np.int64(iova)
    st.vq[v, VQ_MISS_WRITE] = 1 if write else 0
    sent = send_miss(st, v, iova, write)
    if sent == GRANTED:
        return  # answered meanwhile: the caller's next burst retries
    if sent == SENT:
        st.vq[v, VQ_MISS_SENT] = 1  # published with the park below
        st.xstats[v, XS_MISS_SENT] += 1
    store_release(st.vq[v], VQ_MISS_PENDING, 1)
    fence()
    if translate(st.table, st.tcount, iova, 1, write) >= 0:
        store_release(st.vq[v], VQ_MISS_PENDING, 0)  # answered meanwhile: retry at once
        return
    if sent != NOT_SENT:
        ask_ahead(st, v, np.int64(iova) & np.int64(_PAGE_MASK))
        return
    fd = st.ctl[PORT_WAKE_FD]
    if fd >= 0:
        eventfd_signal(fd)


@njit(nogil=True, cache=True, _nrt=False)
def ask_ahead(st, v, parked):
    """Ask for the ungranted pages of the chains queued behind vring
    ``v``'s parked one (``misses_ahead``): one round trip for a ring of
    fresh buffers.  At most MAX_ASK per park; pages asked already are
    skipped, and it stops when the channel is full.  Returns how many."""
    out = st.ahead[v]
    n = misses_ahead(st, v, out)
    asked = 0
    for k in range(n):
        page = out[k] & ~np.int64(1)
        if page == parked:
            continue
        sent = send_miss(st, v, page, out[k] & 1 != 0)
        if sent == NOT_SENT:
            break
        if sent == SENT:
            asked += 1
            if asked == MAX_ASK:
                break
    st.xstats[v, XS_MISS_AHEAD] += asked
    return asked


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _first_missing_page(st, addr, length, write):
    """The first page of ``[addr, addr+length)`` not granted for this
    direction (a buffer across pages: its first page may be granted)."""
    a = np.int64(addr)
    nxt = (a | np.int64(PAGE_SIZE - 1)) + 1
    end = a + np.int64(length)
    while nxt < end and translate(st.table, st.tcount, a, 1, write) >= 0:
        a = nxt
        nxt += PAGE_SIZE
    return a


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def buffer_offset(st, v, addr, length, write):
    """Window offset of one descriptor's buffer, or BUF_MISS (parked, see
    the module docstring) or BUF_BAD (not VM1 memory, or granted without the
    permission this direction needs even after asking)."""
    off = translate_inline(st.table, st.tcount, addr, length, write)
    if off >= 0:
        return off
    if st.vq[v, VQ_IOMMU] == 0:
        return np.int64(BUF_BAD)
    if map_acked(st):
        off = translate(st.table, st.tcount, addr, length, write)
        if off >= 0:
            return off
    page = _first_missing_page(st, addr, length, write) & _PAGE_MASK
    if page == st.vq[v, VQ_MISS_ANSWERED]:
        perm = granted_perm(st.table, st.tcount, page)
        need = 2 if write else 1
        if perm & need == need:  # granted since the first look: look again
            off = translate(st.table, st.tcount, addr, length, write)
            if off >= 0:
                return off
        elif perm != 0:
            st.xstats[v, XS_PERM_DENIED] += 1  # asked, answered, still not allowed
            return np.int64(BUF_BAD)
    park_on_miss(st, v, page, write)
    return np.int64(BUF_MISS)


# ---------------------------------------------------------- control thread
class IotlbMisses:
    """The control thread's half: send the MISSes the kernels could not
    send, re-send the unanswered ones, and un-park vrings when the UPDATEs
    the session's Python path maps land.

    Single-threaded: every method runs on the port's control thread."""

    def __init__(self, vq: np.ndarray, granted: Callable[[int], int]) -> None:
        self.vq = vq
        self._granted = granted  # page -> the permission the window grants it with now (0: none)
        self._miss_sent: dict[int, int] = {}  # vring -> when (monotonic ns) the MISS of its park was last sent
        self.asked = np.zeros((ASK_SLOTS, 2), np.int64)  # state.asked: what is asked, kernels and this thread alike
        self.sent = 0  # MISS requests this thread sent
        self.updates = 0  # IOTLB messages from VM1, all sessions
        self.invalidates = 0

    def xstats(self) -> dict[str, int]:
        """The control thread's counters (the MISSes a kernel sent itself are
        its vring's ``iotlb_miss_sent_by_lcore`` and ``iotlb_miss_ahead``)."""
        return {"iotlb_miss_requests": self.sent, "iotlb_updates": self.updates,
                "iotlb_invalidates": self.invalidates}

    def forget(self) -> None:
        """A new front-end: nothing is asked any more."""
        self._miss_sent.clear()
        self.asked[:] = 0

    def invalidated(self, iova: int, size: int) -> None:
        self.invalidates += 1

    def updated(self, iova: int, size: int) -> None:
        """An UPDATE was mapped: vrings parked on an address it covers retry
        (and raise a new miss if they still need one).  Others stay parked:
        clearing them on every update (the pages asked ahead arrive as
        updates too) made each ring re-ask for its own page several times."""
        self.updates += 1
        forget_asked(self.asked, np.uint64(iova & _U64).view(np.int64), np.uint64((iova + size) & _U64).view(np.int64))
        self.unparked(unpark_covered(self.vq, np.uint64(iova), np.uint64(iova + size)))

    def unparked(self, mask: int) -> None:
        """An UPDATE un-parked the vrings in bitmask ``mask`` (its asks are
        forgotten already: ``forget_asked``): their MISSes are answered, a
        later park asks anew."""
        for v in range(len(self.vq)):
            if mask >> v & 1:
                self._miss_sent.pop(v, None)

    def service(self, session: BackendSession) -> None:
        """Send the MISSes the kernels parked on and could not send, and
        re-send stale ones."""
        now = time.monotonic_ns()
        for v in range(len(self.vq)):
            if not self.vq[v, VQ_MISS_PENDING] or not self.vq[v, VQ_READY]:
                continue  # a stopped ring asks for nothing (a migration source after GET_VRING_BASE)
            sent = self._miss_sent.get(v)
            if sent is not None and now - sent < MISS_RESEND_NS:
                continue
            if self.vq[v, VQ_MISS_SENT]:  # the kernel sent it when it parked (and counted it)
                self.vq[v, VQ_MISS_SENT] = 0
            elif not self._ask_parked(session, v, now):
                continue  # answered meanwhile: nothing to re-send
            self._miss_sent[v] = now

    def _ask_parked(self, session: BackendSession, v: int, now: int) -> bool:
        """Ask for the page vring ``v`` is parked on, if it still is; False
        when the park was answered meanwhile.

        The UPDATE may be served while this thread looks (on the lcore, or
        while this thread was preempted): then the kernel uses the page, VM1
        gets it back and unmaps it, and a MISS sent now would fail in QEMU
        (see ``send_miss``).  So the park is read again after its address,
        ``_ask`` looks at the window after the note, and a park that went
        away during the send leaves no note behind."""
        iova = int(self.vq[v, VQ_MISS_IOVA]) & _U64
        write = bool(self.vq[v, VQ_MISS_WRITE])
        if not self._parked_on(v, iova):
            return False
        page = iova & _PAGE_MASK
        sent = self._ask(session, page, IotlbPerm.WO if write else IotlbPerm.RO, now)
        if sent is None:
            return False  # mapped since the park: the kernel finds it on its next burst
        if sent and not self._parked_on(v, iova):
            self._unask(page, now)
        return True

    def _parked_on(self, v: int, iova: int) -> bool:
        # plain loads, in program order on x86 (as ``atomics_py`` assumes for
        # stores): the kernels write the address before they publish the park
        return bool(self.vq[v, VQ_MISS_PENDING]) and int(self.vq[v, VQ_MISS_IOVA]) & _U64 == iova

    def _unask(self, page: int, when: int) -> None:
        """Forget this thread's ask of ``page`` made at ``when`` (if still noted)."""
        row = self.asked[(page >> 12) & (ASK_SLOTS - 1)]
        if int(row[0]) & _U64 & _PAGE_MASK == page and int(row[1]) == when:
            row[0] = row[1] = 0

    def _ask(self, session: BackendSession, page: int, perm: IotlbPerm, now: int) -> bool | None:
        """Send one MISS unless ``page`` was asked for less than MISS_RESEND_S
        ago (by anyone: a second UPDATE of the same page would cost a remap)
        or is granted for ``perm`` by now (None: looked at after the note, as
        ``send_miss`` does); False when it was not sent now (asked already,
        or no room)."""
        key = page | (1 if perm == IotlbPerm.WO else 0)
        key -= (1 << 64) if key >> 63 else 0  # as the kernels store it (int64)
        row = self.asked[(page >> 12) & (ASK_SLOTS - 1)]
        if row[0] == key and now - row[1] < MISS_RESEND_NS:
            return False
        need = 2 if perm == IotlbPerm.WO else 1
        if self._granted(page) & need == need:
            return None
        old = row[0], row[1]
        row[0], row[1] = key, now  # before sending (see send_miss)
        if not session.send_iotlb_miss(page, perm):
            row[0], row[1] = old
            return False
        self.sent += 1
        return True
