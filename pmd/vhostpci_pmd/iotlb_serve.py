"""VM1's IOTLB messages handled by a compiled kernel, without Python.

A strict vIOMMU sends an UPDATE for every buffer it maps and an INVALIDATE
(need_reply) for every one it unmaps: thousands a second, each one a round
trip VM1's vCPU or main thread waits for.  Through the Python session each
cost ~130 us; ``serve`` takes them straight off the socket instead, on the
lcore polling queue 0 while the control thread lends it the socket
(``lcore_serve``, ``iotlb_lend.py``), else on the control thread:

1. peek at the next message (and whether another is queued behind it:
   if not, the call ends after this one, without a read that would find
   nothing); anything but a well-formed IOTLB UPDATE or INVALIDATE, or one
   not complete yet, is left unread for the session's Python path (which
   owns every other request and every error message);
2. UPDATE: ``iotlb_ops.iotlb_map`` (the plain case; anything else -- a
   re-grant, a grant across regions or beyond the window -- goes to Python
   unread), then the vrings parked on a page it covers retry
   (``iotlb.unpark_covered``).  On the control thread, while the lcore of
   queue 0 polls on a CPU of its own, the mmap and what follows it are that
   lcore's (``iotlb_maps.py``): the control thread checks the grant, records
   it and acks;
3. INVALIDATE: rows out (``iotlb_drop``), a grace period over the port's
   vrings (``wait_sections``: only the bursts inside the window when the rows
   went out, ``pmd/grace.py``), pages revoked (``revoke_gone``), and only then
   the ack: isolation is exactly the Python path's.  On the control thread,
   while the lcore of queue 0 polls on a CPU of its own (``iotlb_revoke=auto``),
   the grace period and the revocation are that lcore's, between two of its
   bursts (``lcore_serve``), handed over through the port's stand-in process
   (``pmd/standin.py``): the revocation then flushes only the lcore's TLB,
   where from the control thread it interrupts the lcore's CPU to flush it.
   The stand-in also sends that INVALIDATE's reply once the pages are
   revoked, and the control thread goes back to waiting for the next
   message (``serve_wait``) without being woken for it: it learns the
   outcome before it reads on (``_settle``), and sends the reply itself
   when the stand-in did not (it gave the job back, or does not hold the
   socket);
4. the reply (u64 0) when the protocol asks for one: the replies of a
   run of messages queued back to back go in one send after the run.

It stops after ``MAX_BATCH`` messages so the thread's other duties run.
What it did is told in ``io`` (counters, and the vrings its UPDATEs
un-parked, for the miss bookkeeping of ``IotlbMisses.service``).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
from numba import njit

from ..atomics import fence
from ..grace import wait_sections
from ..guestmem.grants import insert_grant
from ..guestmem.iotlb_ops import NOT_PLAIN, grant_gpa, iotlb_drop, iotlb_map, plain_grant, revoke_ranges
from ..guestmem.vmem import PAGE_SIZE
from ..guestmem.window import Window
from ..placement import CONTROL_NICE
from ..standin import (
    S_ASKED, S_BACK, S_DONE_FAILED, S_SENT, S_UNSENT, W_BACK_FD, W_REPLY_LEN, W_SENT, W_SENT_NS,
    StandIn, finish_job, hand_over_settle, hand_over_start, mark_failed, take_job,
)
from ..iotlb_wire import (
    FRONTEND_IOTLB_MSG, HEADER_SIZE, MSG_SIZE, OFF_FLAGS, OFF_IOVA, OFF_LEN, OFF_PERM, OFF_TYPE, OFF_UADDR, REPLY_SIZE, get_u32, get_u64,
    is_iotlb_msg, put_ack,
)
from ..syscalls import (
    MSG_DONTWAIT, MSG_NOSIGNAL, MSG_PEEK, WAIT_OTHER, WAIT_TIMEOUT, monotonic_ns, others_fired, socket_recv_into,
    socket_send_from, wait_first,
)
from ..vhost_user.messages import FLAG_NEED_REPLY, IotlbType
from .iotlb import IotlbMisses
from .iotlb_answer import forget_asked, unpark_covered
from .iotlb_maps import (
    W_ASK_WAIT_NS, W_ASKS, W_BY_LCORE, W_FAILED, W_MAP_NS, drain_maps, lcore_maps, map_queue, maps_pending, push_map,
)
from .iotlb_lend import BEAT_STALE_NS, LEND_STALE, TICK_NS, LendPolicy, beat_stale, lend_wait, may_serve, served
from .state import (
    PORT_IOTLB_BEAT, PORT_IOTLB_FD, PORT_IOTLB_GONE_N, PORT_IOTLB_QUIESCE_NS, PORT_IOTLB_REPLY, VQ_READER, IotlbBufs,
)

log = logging.getLogger("vhostpci.iotlb")


MAX_BATCH = 256
# a peek takes up to two messages' bytes: more than one message's says another is queued
PEEK_SIZE = 2 * MSG_SIZE
_UPDATE, _INVALIDATE = int(IotlbType.UPDATE), int(IotlbType.INVALIDATE)
_PAGE_MASK = np.uint64(~(PAGE_SIZE - 1) & ((1 << 64) - 1))
_U64_MAX = np.uint64((1 << 64) - 1)

# io: what serve did: totals (updated before each reply), the errors and the
# UPDATE log since the last drain, why it stopped
# the profile: ns spent serving each kind (from its peek to its ack), and the
# asks (MISS) its UPDATEs answered with the ns they waited for an answer; of
# those ns, the UPDATEs' mapping (mmap and publish), the INVALIDATEs' grace
# periods and revocations (mmap); how many grace periods took over
# GRACE_SLOW_NS (a burst was preempted, or long) and the longest one; the
# INVALIDATEs' rows out and republish, and every reply's send
IO_UPDATES, IO_INVALIDATES, IO_QUIESCE_TIMEOUTS, IO_REVOKE_FAILED, IO_UNPARKED, IO_NEXT, IO_UPDATE_NS, \
    IO_INVALIDATE_NS, IO_ASKS_ANSWERED, IO_ASK_WAIT_NS, IO_MAP_NS, IO_GRACE_NS, IO_REVOKE_NS, \
    IO_GRACE_SLOW, IO_GRACE_MAX_NS, IO_DROP_NS, IO_REPLY_NS, IO_BY_LCORE, IO_RUNS, IO_HANDED, IO_PENDING, \
    IO_PENDING_T0, IO_UNSENT, IO_ACKED_BY_STANDIN, IO_QUEUED = range(25)
# IO_UNPARKED: bitmask of the vrings un-parked since the last drain; IO_BY_LCORE: the lcore's messages;
# IO_RUNS: the calls that took messages (a run: what the front-end had queued back to back);
# IO_HANDED: the control thread's INVALIDATEs whose revocation the lcore made (the stand-in);
# IO_PENDING, IO_PENDING_T0: an INVALIDATE handed over, not settled yet, and when it was peeked;
# IO_UNSENT: the stand-in's replies that fell short since the last drain; IO_ACKED_BY_STANDIN: its replies;
# IO_QUEUED: the UPDATEs whose mmap the control thread queued for the lcore (``iotlb_maps.py``)
N_IO = 25
_STATUS_AT = HEADER_SIZE  # a reply's u64 status (little-endian): its low byte
GRACE_SLOW_NS = 10_000
# an INVALIDATE's revocation goes to the lcore (the stand-in) up to this size
HAND_MAX_BYTES = 64 * 1024
# IO_NEXT after a call: nothing left to read, a message the Python path must
# read, or (serve_wait watching the stamp) the lcore polls again: lend it
NEXT_NONE, NEXT_PYTHON, NEXT_LEND = 0, 1, 2
# reply: REPLY_ALWAYS, or only on NEED_REPLY (REPLY_ACK negotiated), or never
REPLY_NEVER, REPLY_ON_NEED, REPLY_ALWAYS = 0, 1, 2


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _few_pages(gone, n):
    """At most HAND_MAX_BYTES in ``gone[:n]``: a revocation worth handing to
    the lcore (a lazy guest's flush of hundreds of grants takes milliseconds
    to unmap wherever it is done; the lcore would stop polling meanwhile)."""
    total = np.uint64(0)
    for k in range(n):
        total += gone[k, 1]
        if total > np.uint64(HAND_MAX_BYTES):
            return False
    return True


@njit(nogil=True, cache=True)
def revoke_gone(ws, vq, n, timeout_ns, io):
    """An INVALIDATE's last steps: a grace period over the port's vrings,
    then ``ws.gone[:n]`` revoked; False if a revocation failed (nack)."""
    t1 = monotonic_ns()
    if wait_sections(vq, VQ_READER, timeout_ns) != 0:
        io[IO_QUIESCE_TIMEOUTS] += 1  # as the Python path: logged, and on
    t2 = monotonic_ns()
    io[IO_GRACE_NS] += t2 - t1
    io[IO_GRACE_MAX_NS] = max(io[IO_GRACE_MAX_NS], t2 - t1)
    if t2 - t1 > GRACE_SLOW_NS:
        io[IO_GRACE_SLOW] += 1
    ok = revoke_ranges(ws, ws.gone, n)
    if not ok:
        io[IO_REVOKE_FAILED] += 1  # still mapped: nacked, never acked
    io[IO_REVOKE_NS] += monotonic_ns() - t2
    return ok


@njit(nogil=True, cache=True)
def _settle(fd, ws, vq, timeout_ns, io, ctl, hand):
    """The outcome of the INVALIDATE handed over (``IO_PENDING``), before
    anything else is read or sent on ``fd``: the revocation made (by the
    lcore, or here if it came back) and the reply sent (by the stand-in, or
    here).  False if this reply could not be sent (the Python path finds out)."""
    if io[IO_PENDING] == 0:
        return True
    io[IO_PENDING] = 0
    w = hand.words
    s = hand_over_settle(hand)
    n = w[W_REPLY_LEN]
    if s == S_SENT:
        io[IO_HANDED] += 1
        io[IO_ACKED_BY_STANDIN] += 1
        io[IO_INVALIDATE_NS] += w[W_SENT_NS] - io[IO_PENDING_T0]
        return True
    sent = 0
    if s == S_BACK:
        if not revoke_gone(ws, vq, ctl[PORT_IOTLB_GONE_N], timeout_ns, io):
            mark_failed(w, hand.reply)  # still mapped: nacked
    else:
        io[IO_HANDED] += 1
        if s == S_UNSENT:  # (the status byte is set already)
            if w[W_SENT] >= 0:
                io[IO_UNSENT] += 1  # it holds a socket it cannot send on: given again
                sent = w[W_SENT]
        elif s == S_DONE_FAILED:
            mark_failed(w, hand.reply)
    io[IO_INVALIDATE_NS] += monotonic_ns() - io[IO_PENDING_T0]
    if n > sent:
        t1 = monotonic_ns()
        ok = socket_send_from(fd, hand.reply[sent:], n - sent, MSG_DONTWAIT | MSG_NOSIGNAL) == n - sent
        io[IO_REPLY_NS] += monotonic_ns() - t1
        return ok
    return True


@njit(nogil=True, cache=True)
def serve(fd, ws, vq, asked, timeout_ns, reply, buf, out, io, ctl, hand, mq, handing, leave=False):
    """Handle the IOTLB messages at the head of socket ``fd`` (see the module
    docstring); returns how many.  ``io[IO_NEXT]`` says why it stopped.
    With ``handing`` (the control thread), an INVALIDATE's revocation goes
    to the polling lcore through the stand-in ``hand`` while the lcore
    stamps ``ctl``, and its reply with it, and an UPDATE's mmap to the same
    lcore through the queue ``mq``; with ``leave`` (``serve_wait``)
    the last one may still be on its way when it returns (``IO_PENDING``:
    ``_settle`` before anything else touches the socket)."""
    handled = 0
    acks = 0  # replies written into ``out``, not sent yet
    io[IO_NEXT] = NEXT_NONE
    while handled < MAX_BATCH:
        t0 = monotonic_ns()
        got = socket_recv_into(fd, buf, PEEK_SIZE, MSG_PEEK | MSG_DONTWAIT)
        if got < 0:
            break  # nothing there (EAGAIN), or an error the Python read reports
        # a front-end that waits for each reply (QEMU) has queued nothing behind this message:
        # the call ends after it, where another peek would only find nothing (a syscall saved
        # a message; what comes later wakes the caller's poll)
        more = got > MSG_SIZE
        io[IO_NEXT] = NEXT_PYTHON
        if not _settle(fd, ws, vq, timeout_ns, io, ctl, hand):
            break  # (its reply goes before anything that comes after it)
        if not is_iotlb_msg(buf, got, FRONTEND_IOTLB_MSG):
            break
        flags = get_u32(buf, OFF_FLAGS)
        iova = get_u64(buf, OFF_IOVA)
        length = get_u64(buf, OFF_LEN)
        uaddr = get_u64(buf, OFF_UADDR)
        perm = np.int64(buf[OFF_PERM])
        kind = np.int64(buf[OFF_TYPE])
        due = reply == REPLY_ALWAYS or (reply == REPLY_ON_NEED and flags & FLAG_NEED_REPLY != 0)
        ok = True
        queued = False
        if kind == _UPDATE:
            t1 = monotonic_ns()
            if handing and not beat_stale(ctl, t1):
                r = plain_grant(ws, iova, length, uaddr, perm)
                if r == NOT_PLAIN:
                    break  # Python maps it (or says why not), once the queue is done
                if r >= 0:
                    insert_grant(ws.grants, ws.gcount, iova, iova + (length - np.uint64(1)), iova, np.uint64(perm),
                                 grant_gpa(ws, r, uaddr))
                if not push_map(mq, iova, length, uaddr, perm, max(r, np.int64(-1))):
                    io[IO_UNPARKED] |= drain_maps(ws, vq, asked, mq)  # full: done here, then queued
                    push_map(mq, iova, length, uaddr, perm, max(r, np.int64(-1)))
                fence()  # pairs with the lcore's before it sleeps (notify.py): it sees the job, or we its
                if beat_stale(ctl, monotonic_ns()):  # stamp gone, and map it here
                    io[IO_UNPARKED] |= drain_maps(ws, vq, asked, mq)
                queued = True
            else:
                if maps_pending(mq):  # (queued while the lcore polled: mapped first)
                    io[IO_UNPARKED] |= drain_maps(ws, vq, asked, mq)
                if iotlb_map(ws, iova, length, uaddr, perm) < 0:
                    break  # not the plain case: Python maps it (or says why not)
                io[IO_MAP_NS] += monotonic_ns() - t1
        elif kind == _INVALIDATE:
            if length == 0:
                break  # nothing to drop: the Python path answers it
            last = iova + (length - np.uint64(1))  # a guest IOMMU's flush runs to 2**64
            if last < iova:
                last = _U64_MAX  # past 2**64: clamped, as the Python path rounds it
            start = iova & _PAGE_MASK
            last |= ~_PAGE_MASK
            if handing and due and acks > 0:
                # the replies before this one go first (the stand-in may send this one)
                if socket_send_from(fd, out, acks * REPLY_SIZE, MSG_DONTWAIT | MSG_NOSIGNAL) != acks * REPLY_SIZE:
                    acks = 0
                    break  # the socket is full or gone: the Python path finds out
                acks = 0
            if maps_pending(mq):  # the UPDATEs before it are mapped first
                io[IO_UNPARKED] |= drain_maps(ws, vq, asked, mq)
            t1 = monotonic_ns()
            n = iotlb_drop(ws, start, last, ws.gone)
            if n < 0:
                break
            if n > 0:
                io[IO_DROP_NS] += monotonic_ns() - t1
                got = S_BACK
                if handing and _few_pages(ws.gone, n) and not beat_stale(ctl, monotonic_ns()):
                    ctl[PORT_IOTLB_GONE_N] = n  # read by the lcore once the job is posted
                    if due:
                        put_ack(hand.reply, 0, FRONTEND_IOTLB_MSG, flags, True)
                    got = hand_over_start(hand, REPLY_SIZE if due else 0, _STATUS_AT)
                if got == S_BACK:
                    ok = revoke_gone(ws, vq, n, timeout_ns, io)
                else:
                    io[IO_PENDING] = 1  # on its way: its reply too, if one is due
                    io[IO_PENDING_T0] = t0
        else:
            break
        socket_recv_into(fd, buf, MSG_SIZE, MSG_DONTWAIT)  # consume it (all there: peeked)
        io[IO_NEXT] = NEXT_NONE
        handled += 1
        if kind == _UPDATE:
            io[IO_UPDATES] += 1
            if queued:
                io[IO_QUEUED] += 1  # un-parked and forgotten by the lcore, after its mmap
            else:
                io[IO_UNPARKED] |= unpark_covered(vq, iova, iova + length)
                n_asks, waited = forget_asked(asked, np.int64(iova), np.int64(iova + length))
                io[IO_ASKS_ANSWERED] += n_asks
                io[IO_ASK_WAIT_NS] += waited
        else:
            io[IO_INVALIDATES] += 1
        if io[IO_PENDING] == 0:  # (else its reply and its time are ``_settle``'s)
            if due:
                put_ack(out, acks * REPLY_SIZE, FRONTEND_IOTLB_MSG, flags, ok)
                acks += 1
            io[IO_UPDATE_NS if kind == _UPDATE else IO_INVALIDATE_NS] += monotonic_ns() - t0
        if not more:
            break
    if handled > 0:
        io[IO_RUNS] += 1
    if acks > 0:
        # every reply in one send, once nothing more is queued behind them: a
        # front-end that waits for each one gets it at once, one that sends a
        # run and then reads the replies is woken once for the run
        t1 = monotonic_ns()
        if socket_send_from(fd, out, acks * REPLY_SIZE, MSG_DONTWAIT | MSG_NOSIGNAL) != acks * REPLY_SIZE:
            io[IO_NEXT] = NEXT_PYTHON  # the socket is full or gone: the Python path finds out
        io[IO_REPLY_NS] += monotonic_ns() - t1
    if not leave and not _settle(fd, ws, vq, timeout_ns, io, ctl, hand):
        io[IO_NEXT] = NEXT_PYTHON
    return handled


@njit(nogil=True, cache=True)
def serve_wait(pfds, nfds, wait_ns, ctl, watch, fd, ws, vq, asked, timeout_ns, reply, buf, out, io, hand, mq, handing):
    """``serve``, then wait in ``poll`` for the next messages and serve
    them too, for up to ``wait_ns``: the control thread stays here, out of
    Python, while VM1's IOTLB traffic is all there is.  ``pfds`` rows are
    ``struct pollfd``s (``syscalls.poll_fds``): row 0 the session's socket
    ``fd``, rows 1..nfds-1 what else the control thread waits on (listener,
    wake fd, other sessions), and one more row free (the stand-in's wake-up
    while an INVALIDATE it took is on its way).  Returns how many messages
    it took; ``io[IO_NEXT]`` is NEXT_PYTHON when it stopped for Python: a
    message it does not take at the head, another fd readable, the socket
    in error.  With ``watch`` it also looks at the lcore's stamp (``ctl``)
    every TICK_NS and stops with NEXT_LEND once it is fresh: an idle port's
    control thread wakes only in here while its lcore sleeps."""
    handled = 0
    deadline = monotonic_ns() + wait_ns
    while True:
        handled += serve(fd, ws, vq, asked, timeout_ns, reply, buf, out, io, ctl, hand, mq, handing, True)
        if io[IO_NEXT] == NEXT_PYTHON:
            break
        now = monotonic_ns()
        if watch and not beat_stale(ctl, now):
            io[IO_NEXT] = NEXT_LEND
            break
        k = nfds
        if io[IO_PENDING] != 0:
            pfds[nfds, 0] = hand.words[W_BACK_FD]  # the stand-in needs us: settle now
            k = nfds + 1
        w = wait_first(pfds, k, min(deadline, now + TICK_NS) if watch else deadline)
        if w == WAIT_OTHER:
            if k > nfds and pfds[nfds, 1] >> 16 != 0 and not others_fired(pfds, nfds):
                if not _settle(fd, ws, vq, timeout_ns, io, ctl, hand):
                    io[IO_NEXT] = NEXT_PYTHON
                    return handled
                continue
            io[IO_NEXT] = NEXT_PYTHON  # another fd, or the session's read finds out what happened
            break
        if w == WAIT_TIMEOUT and monotonic_ns() >= deadline:
            break
    if not _settle(fd, ws, vq, timeout_ns, io, ctl, hand):
        io[IO_NEXT] = NEXT_PYTHON
    return handled


@njit(nogil=True, cache=True, _nrt=False)
def lcore_serve(st, idle):
    """Between two bursts of the port's queue 0 (``idle``: the last one
    found nothing): serve what is at the head of VM1's socket if the control
    thread lent it (``iotlb_lend.py``).  Called outside every read section."""
    ctl = st.ctl
    b = st.iotlb
    lcore_maps(b.ws, st.vq, st.asked, b.maps)  # UPDATEs the control thread acked (iotlb_maps.py)
    if take_job(b.hand.words):  # a revocation handed over: flushes only this CPU's TLB
        finish_job(b.hand.words, revoke_gone(b.ws, st.vq, ctl[PORT_IOTLB_GONE_N], ctl[PORT_IOTLB_QUIESCE_NS], b.io))
    if not may_serve(ctl, idle):
        return
    n = serve(ctl[PORT_IOTLB_FD], b.ws, st.vq, st.asked, ctl[PORT_IOTLB_QUIESCE_NS], ctl[PORT_IOTLB_REPLY],
              b.buf, b.out, b.io, ctl, b.hand, b.maps, False, False)
    b.io[IO_BY_LCORE] += n
    served(ctl, n, b.io[IO_NEXT] == NEXT_PYTHON)


_REPLY_MODES = {"never": REPLY_NEVER, "on_need": REPLY_ON_NEED, "always": REPLY_ALWAYS}


class IotlbServer:
    """The port's compiled IOTLB path: ``serve``'s buffers and counters,
    and the bookkeeping it leaves to Python (``IotlbMisses``: which asks
    were answered, the message counts).  Control thread only."""

    def __init__(self, window: Window, vq: np.ndarray, misses: IotlbMisses, timeout_s: float,
                 ctl: np.ndarray, policy: LendPolicy, revoke: str = "auto", name: str = "") -> None:
        self.window = window
        # "auto": an INVALIDATE the control thread serves is revoked by the polling lcore (when one
        # stamps, on CPUs of its own), through the stand-in; "control": by the control thread
        self.revoke = revoke
        self.standin = StandIn(name or "port")
        self.ctl = ctl  # the port's control words: the socket lent to its lcore
        self.policy = policy  # when it is lent
        self.vq = vq
        self.misses = misses
        self.timeout_ns = int(timeout_s * 1e9)
        self.buf = np.zeros(PEEK_SIZE, np.uint8)
        self.out = np.zeros(MAX_BATCH * REPLY_SIZE, np.uint8)
        self.io = np.zeros(N_IO, np.int64)
        self.maps = map_queue()  # UPDATEs acked, for the lcore to map
        self._map_failed = 0  # of them, dropped: logged
        self.unsent = 0  # the stand-in's replies that fell short (the control thread sent them)
        self._pfds = np.zeros((5, 2), np.int32)  # (one row more than the fds waited on: serve_wait's)

    def bufs(self) -> IotlbBufs:
        """What an lcore serving the lent socket works on (the port's kernel state)."""
        return IotlbBufs(self.window.kstate, self.buf, self.out, self.io, self.standin.hand, self.maps)

    def warm(self) -> None:
        """Compile (or load) the kernels now, not on the first message."""
        self.serve(-1, "always")  # fd -1: recv fails at once
        self.serve(-1, "always", (), 1e-6)
        if self.policy.mode:
            lend_wait(self._pfds, 1, 0, np.zeros(len(self.ctl), np.int64))  # a stale stamp: returns at once

    def serve(self, fd: int, reply: str, wait_fds: Sequence[int] = (), wait_s: float = 0.0) -> int:
        """Run the kernel on socket ``fd``.  With ``wait_s`` > 0 it also
        waits that long for more, returning early when one of ``wait_fds``
        is readable or a message needs Python: lending the socket to the
        polling lcore while it stamps (``iotlb_lend.py``), else serving
        it here (``serve_wait``, which stops when the stamp is fresh again).
        Returns how many messages were taken."""
        args = (fd, self.window.kstate, self.vq, self.misses.asked, self.timeout_ns, _REPLY_MODES[reply],
                self.buf, self.out, self.io, self.ctl, self.standin.hand, self.maps, self._handing(fd))
        n = serve(*args) if wait_s <= 0 else self._wait(args, wait_fds, time.monotonic() + wait_s)
        self._drain()  # (the queue first: the Python path may touch the window next)
        return n

    def _wait(self, args: tuple, wait_fds: Sequence[int], deadline: float) -> int:
        fd = args[0]
        nfds = 1 + len(wait_fds)
        if len(self._pfds) < nfds + 1:
            self._pfds = np.zeros((nfds + 1, 2), np.int32)
        self._pfds[1:nfds, 0] = wait_fds
        reply = args[5]
        lend = fd >= 0 and self.policy.now(self.served, int(self.io[IO_RUNS]))
        n = 0
        while True:
            if lend:
                left = deadline - time.monotonic()
                if left <= 0:
                    return n + serve(*args)
                lent, stale = self._lend(fd, reply, nfds, left)
                n += lent
                if not stale:
                    # what ended the lend is the caller's; at the head, what the lcore
                    # left for Python or what came after its last look
                    return n + serve(*args)
            self._pfds[0, 0] = fd
            left_ns = max(0, int((deadline - time.monotonic()) * 1e9))
            n += serve_wait(self._pfds, nfds, left_ns, self.ctl, lend, *args[:9], *args[10:])
            if self.io[IO_NEXT] != NEXT_LEND:
                return n

    def _handing(self, fd: int) -> bool:
        """Hand INVALIDATEs' revocations to the lcore now?  Names the socket
        so the lcore of queue 0 stamps, and starts the stand-in once it
        does (it is ready a moment later)."""
        if self.revoke != "auto" or fd < 0 or self.policy.shares_pollers():
            return False
        ctl = self.ctl
        ctl[PORT_IOTLB_QUIESCE_NS] = self.timeout_ns
        ctl[PORT_IOTLB_FD] = fd
        if time.monotonic_ns() - int(ctl[PORT_IOTLB_BEAT]) <= BEAT_STALE_NS:
            self.standin.start(CONTROL_NICE)
        if not self.standin.ready:
            return False
        self.standin.give_socket(fd)  # (once per socket) its INVALIDATEs' replies go from there
        return True

    def session_ended(self) -> None:
        """The front-end's session is gone: the stand-in's dup of its socket
        is not the next session's, even if that one gets the same fd number."""
        self._drain()
        self.standin.forget_socket()

    def close(self) -> None:
        """Stop the stand-in (the port's kernels have stopped)."""
        self.standin.close()

    def _lend(self, fd: int, reply: int, nfds: int, wait_s: float) -> tuple[int, bool]:
        """Lend socket ``fd`` to the lcore for up to ``wait_s`` (``lend_wait``);
        returns the messages the lcore served, and True when it did not
        (or stopped) stamping: the control thread serves meanwhile."""
        ctl = self.ctl
        ctl[PORT_IOTLB_REPLY] = reply
        ctl[PORT_IOTLB_QUIESCE_NS] = self.timeout_ns
        ctl[PORT_IOTLB_FD] = fd  # the lcore stamps from now on; all three stored before the lend's release
        before = int(self.io[IO_BY_LCORE])
        self._pfds[0, 0] = -1
        why = lend_wait(self._pfds, nfds, int(wait_s * 1e9), ctl)
        return int(self.io[IO_BY_LCORE]) - before, why == LEND_STALE

    @property
    def updates(self) -> int:
        """UPDATEs the kernel handled (all sessions; counted before each ack)."""
        return int(self.io[IO_UPDATES])

    @property
    def invalidates(self) -> int:
        return int(self.io[IO_INVALIDATES])

    def profile(self) -> dict[str, int]:
        """ns the kernel spent serving UPDATEs and INVALIDATEs (each from its
        peek to its ack: map and publish; drop, grace period and revoke) with
        the parts spent mapping, in grace periods and revoking (with the grace
        periods over GRACE_SLOW_NS and the longest, and the rows' drop), the
        replies' sends, the runs the messages came in (``LendPolicy``), and
        the MISSes its UPDATEs answered with the ns VM1 took to answer them;
        the UPDATEs the lcore mapped after the ack (``iotlb_maps.py``), the ns
        that took there, and those whose mmap failed."""
        io = self.io
        mw = self.maps.words
        return {"iotlb_update_ns": int(io[IO_UPDATE_NS]), "iotlb_invalidate_ns": int(io[IO_INVALIDATE_NS]),
                "iotlb_map_ns": int(io[IO_MAP_NS]), "iotlb_grace_ns": int(io[IO_GRACE_NS]),
                "iotlb_revoke_ns": int(io[IO_REVOKE_NS]), "iotlb_grace_slow": int(io[IO_GRACE_SLOW]),
                "iotlb_grace_max_ns": int(io[IO_GRACE_MAX_NS]), "iotlb_drop_ns": int(io[IO_DROP_NS]),
                "iotlb_reply_ns": int(io[IO_REPLY_NS]), "iotlb_served_by_lcore": int(io[IO_BY_LCORE]),
                "iotlb_runs": int(io[IO_RUNS]), "iotlb_revoked_by_lcore": int(io[IO_HANDED]),
                "iotlb_acked_by_standin": int(io[IO_ACKED_BY_STANDIN]), "iotlb_standin_unsent": self.unsent,
                "iotlb_asks_answered": int(io[IO_ASKS_ANSWERED] + mw[W_ASKS]),
                "iotlb_ask_wait_ns": int(io[IO_ASK_WAIT_NS] + mw[W_ASK_WAIT_NS]),
                "iotlb_mapped_after_ack": int(io[IO_QUEUED]), "iotlb_mapped_by_lcore": int(mw[W_BY_LCORE]),
                "iotlb_after_ack_map_ns": int(mw[W_MAP_NS]), "iotlb_map_failed": int(mw[W_FAILED])}

    @property
    def served(self) -> int:
        """Messages the kernel handled."""
        return self.updates + self.invalidates

    def _drain(self) -> None:
        io = self.io
        io[IO_UNPARKED] |= drain_maps(self.window.kstate, self.vq, self.misses.asked, self.maps)
        failed = int(self.maps.words[W_FAILED])
        if failed > self._map_failed:
            log.error("IOTLB update: %d grant(s) acked but not mapped (mmap failed twice); VM1 asks again on a "
                      "miss", failed - self._map_failed)
            self._map_failed = failed
        self.misses.unparked(int(io[IO_UNPARKED]))
        if io[IO_QUIESCE_TIMEOUTS]:
            log.error("IOTLB invalidate: %d grace period(s) timed out (a burst stayed in the port's memory "
                      "over %.1f s); pages revoked anyway", int(io[IO_QUIESCE_TIMEOUTS]), self.timeout_ns / 1e9)
        if io[IO_REVOKE_FAILED]:
            log.error("IOTLB invalidate: %d revocation(s) failed (mmap); nacked", int(io[IO_REVOKE_FAILED]))
        if io[IO_UNSENT]:
            self.unsent += int(io[IO_UNSENT])
            self.standin.forget_socket()  # (its socket is full or gone) given again with the next call
        io[IO_QUIESCE_TIMEOUTS] = io[IO_REVOKE_FAILED] = io[IO_UNPARKED] = io[IO_UNSENT] = 0
