"""net_vf_xdp driver: the VF through AF_XDP.  Devargs ``iface=`` (required),
``queues=`` (one XSK per queue, bound to netdev queues 0..queues-1),
``ring_size=`` (entries of the rx, tx and completion rings per queue; the
fill ring has FILL_RING_FACTOR times as many, all posted), ``xdp_mode=
native|generic``, ``zero_copy=auto|0|1``, ``umem=pool|own`` (the UMEM: the
app's mbuf pool where it can serve, or always a private one the bursts
copy into and out of).

``start`` builds everything or nothing (any failure releases what was made
and raises one PortError naming the interface and the cause): the UMEM
(the app's mbuf pool when it can serve, else a pool of the port's own:
``umem.py``; each XSK registers it once), the XSKs and their mapped rings,
the XSKMAP, the redirect program (pmd/xdp_pmd/bpf.py) and the BPF link
attaching it.  ``stop`` closes the link first (the netdev's traffic goes
back to the kernel stack), then the sockets, then gives the frames the
kernel side held back to the pool.  A process that dies holds nothing: the
kernel drops the link with its last fd.
"""
from __future__ import annotations

import errno
import logging
import os
import time

import numpy as np

from .. import netdev as nd
from ..ethdev import (
    ST_IMISSED,
    PortError,
    int_in_range,
    new_stats,
    register_driver,
)
from ..netdev_port import NetdevPortDriver
from ..mbuf import MbufPool, alloc_bulk
from ..ringarea import RingArea, page_round
from . import bpf, netlink, umem, xsk
from . import layout as L
from .burst import XdpState, xdp_tx_flush

log = logging.getLogger(__name__)
MAX_QUEUES = 16
TX_DRAIN_S = 0.2  # at stop, how long frames still in the tx rings may take to go out
FRAME_SIZES = (2048, 4096)  # UMEM chunk sizes (aligned mode: a power of two up to a page)
XDP_MODES = {"native": L.XDP_FLAGS_DRV_MODE, "generic": L.XDP_FLAGS_SKB_MODE}
ZERO_COPY = {"auto": 0, "1": L.XDP_ZEROCOPY, "0": L.XDP_COPY}
UMEM_CHOICES = ("pool", "own")  # the app's mbuf pool where it can serve (one copy), or always the port's own
NEEDS = "needs root (CAP_NET_RAW, CAP_NET_ADMIN and CAP_BPF or CAP_SYS_ADMIN)"


def _ring_size(text: str) -> int:
    n = int(text, 0)
    if n < 64 or n > 16384 or n & (n - 1):
        raise ValueError(f"ring_size must be a power of two from 64 to 16384, got {n}")
    return n


def _choice(name: str, allowed) -> callable:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {text!r}")
        return text
    return parse


def frame_size_for(max_frame: int) -> int:
    """The smallest UMEM chunk that holds a ``max_frame`` B frame behind the
    kernel's XDP headroom; 0 when none does (no multi-buffer here)."""
    return next((f for f in FRAME_SIZES if max_frame <= f - L.XDP_PACKET_HEADROOM), 0)


@register_driver
class XdpDriver(NetdevPortDriver):
    prefix = "net_vf_xdp"
    devargs = {"iface": nd.iface_devarg, "queues": int_in_range("queues", 1, MAX_QUEUES), "ring_size": _ring_size,
               "xdp_mode": _choice("xdp_mode", XDP_MODES), "zero_copy": _choice("zero_copy", ZERO_COPY),
               "umem": _choice("umem", UMEM_CHOICES)}
    devarg_defaults = {"iface": "", "queues": 1, "ring_size": 2048, "xdp_mode": "native", "zero_copy": "auto",
                       "umem": "pool"}

    def __init__(self, name: str, args: dict) -> None:
        super().__init__(name, args)
        self.nb_rxq = self.nb_txq = args["queues"]
        self._stats = new_stats(args["queues"])
        self._xstats = np.zeros((args["queues"], L.N_X), np.int64)
        self._missed_seen = np.zeros(args["queues"], np.int64)
        self._socks: list = []
        self._areas: list[RingArea] = []
        self._fds: list[int] = []  # map, program (closed last, in reverse)
        self._app_pool: MbufPool | None = None  # use_pool
        self._upool: MbufPool | None = None  # the UMEM while started
        self._own: np.ndarray | None = None
        self._copies = ""  # why the bursts copy (the app's pool is not the UMEM), "" when they do not
        self._link_fd = -1
        self._mtu = 0
        self._zero_copy = False
        self._tx_budget = L.TX_BATCH_DEFAULT
        self._step = ""  # what start is doing (for its error message)

    def configure(self, nb_rxq: int, nb_txq: int) -> None:
        if self._state is not None:
            raise PortError(f"{self.name}: stop the port before configuring it")
        if nb_rxq != nb_txq or not 1 <= nb_rxq <= MAX_QUEUES:
            raise PortError(f"{self.name}: one XSK per queue pair: 1..{MAX_QUEUES} equal rx and tx queues "
                            f"({nb_rxq} rx / {nb_txq} tx asked)")
        super().configure(nb_rxq, nb_txq)
        self._stats = new_stats(nb_rxq)
        self._xstats = np.zeros((nb_rxq, L.N_X), np.int64)
        self._missed_seen = np.zeros(nb_rxq, np.int64)

    def use_pool(self, pool: MbufPool) -> None:
        self._app_pool = pool

    # ---- start / stop ----------------------------------------------------
    def _claim_netdev(self, ifindex: int) -> None:
        """Refuse a netdev another live program owns; remove a program of
        ours that outlived its process (attached without a link)."""
        cur = netlink.xdp_state(ifindex)
        if cur.mode == "none":
            return
        name = bpf.program_name(cur.prog_id) if cur.prog_id else ""
        what = f"XDP program {name or '?'!r} (id {cur.prog_id}, {cur.mode} mode)"
        links = bpf.xdp_links(ifindex)
        if links:
            raise PortError(f"{self.name}: {self.iface} already carries {what} through BPF link {links[0][0]}: "
                            "another port or application is using it")
        if name != bpf.PROG_NAME or cur.mode not in XDP_MODES:
            raise PortError(f"{self.name}: {self.iface} carries {what} attached by another tool; detach it first "
                            f"(ip link set dev {self.iface} xdp off) or use net_vf (AF_PACKET)")
        netlink.set_xdp_fd(ifindex, -1, XDP_MODES[cur.mode])
        log.warning("%s: removed a stale %s from %s (left by a process that is gone)", self.name, what, self.iface)

    def start(self) -> None:
        if self._state is not None:
            return
        self._check_netdev()
        self._mtu = nd.mtu(self.iface)
        max_frame = self._mtu + L.ETH_HLEN
        frame_size = frame_size_for(max_frame)
        if not frame_size:
            raise PortError(f"{self.name}: MTU {self._mtu} of {self.iface} does not fit an AF_XDP frame "
                            f"(at most {FRAME_SIZES[-1] - L.XDP_PACKET_HEADROOM - L.ETH_HLEN}); "
                            "lower the MTU or use net_vf (AF_PACKET)")
        have = nd.rx_queues(self.iface)
        if self.nb_rxq > have:
            raise PortError(f"{self.name}: {self.iface} has {have} rx queue(s), {self.nb_rxq} asked (queues=)")
        filled = self.nb_rxq * self.args["ring_size"] * L.FILL_RING_FACTOR  # frames the fill rings keep
        pool = self._app_pool
        if self.args["umem"] == "own":
            why = "umem=own"
        else:
            why = "no mbuf pool given" if pool is None else umem.unfit(pool, max_frame, filled)
        for _ in range(2):
            if why is not None:  # each queue: its fill ring's worth, as much again for its rx and tx rings
                pool = umem.private_pool(frame_size, 2 * filled)
            self._copies = why or ""
            self._step = "query the netdev"
            try:
                state = self._build(pool, max_frame)
            except OSError as e:
                self._release()
                raise self._start_error(e) from None
            except BaseException:
                self._release()
                raise
            if why is None and self._zero_copy and umem.may_straddle(pool):
                why = (f"its {pool.buf_size} B buffers may span two pages, which a zero-copy netdev refuses "
                       "(a buffer size dividing the page avoids it)")
                self._release()
                continue
            break
        if why is not None and self._app_pool is not None and self.args["umem"] == "pool":
            log.warning("%s: the mbuf pool cannot be the UMEM (%s): frames are copied between the two", self.name, why)
        self._state = state

    def _build(self, pool: MbufPool, max_frame: int) -> XdpState:
        """Everything ``start`` makes, in order; ``self._step`` names the step
        under way for the error message.  Attaching the program comes last:
        the first frame redirected finds its XSK bound and its fill ring full."""
        a, nq, ring = self.args, self.nb_rxq, self.args["ring_size"]
        ifindex = nd.ifindex(self.iface)
        self._claim_netdev(ifindex)
        self._upool, self._own = pool, np.zeros(pool.size, np.uint8)
        self._step = "load the XDP program"
        map_fd = bpf.create_xskmap(nq)
        self._fds.append(map_fd)
        prog_fd = bpf.load_program(map_fd)
        self._fds.append(prog_fd)
        rings: list[RingArea] = []
        for q in range(nq):
            self._step = "create the XSKs"
            sock = xsk.open_socket()
            self._socks.append(sock)
            self._step = "register the UMEM"
            xsk.register_umem(sock, pool.data.ctypes.data, pool.data.nbytes, pool.buf_size)
            self._step = "create the XSKs"
            xsk.set_ring_sizes(sock, ring, ring * L.FILL_RING_FACTOR)
            self._tx_budget = xsk.set_tx_budget(sock, ring)
            off = xsk.mmap_offsets(sock)
            if not rings:  # every queue's rings have the same layout
                rings = [RingArea(nq, page_round(int(off[r, L.OFF_DESC]) + entries * xsk.ENTRY_SIZE[r]))
                         for r, entries in ((L.RX, ring), (L.TX, ring), (L.FILL, ring * L.FILL_RING_FACTOR),
                                            (L.COMP, ring))]
                self._areas += rings
            for r, area in zip((L.RX, L.TX, L.FILL, L.COMP), rings):
                area.map(q, sock.fileno(), xsk.PGOFF[r])
            self._step = f"bind an XSK to queue {q}"
            xsk.bind(sock, ifindex, q, L.XDP_USE_NEED_WAKEUP | ZERO_COPY[a["zero_copy"]])
            self._step = "create the XSKs"
            bpf.xskmap_set(map_fd, q, sock.fileno())
        self._zero_copy = xsk.zero_copy(self._socks[0])
        state = self._kernel_state(rings, off, max_frame)
        self._step = f"attach the XDP program ({a['xdp_mode']} mode)"
        self._link_fd = bpf.attach(prog_fd, ifindex, XDP_MODES[a["xdp_mode"]])
        return state

    def _start_error(self, e: OSError) -> PortError:
        """The one error a failed start reports."""
        step, a = self._step, self.args
        if e.errno == errno.EOPNOTSUPP and step.startswith("attach") and a["xdp_mode"] == "native":
            return PortError(f"{self.name}: {self.iface} has no native XDP support; xdp_mode=generic runs "
                             "the program on skbs (slower), or use net_vf (AF_PACKET)")
        if e.errno == errno.ERANGE and step.startswith("attach"):
            return PortError(f"{self.name}: {self.iface} refuses XDP at its MTU ({self._mtu}; a veth checks its "
                             "peer's MTU, at most about 3500 B without multi-buffer): lower it, or use net_vf "
                             "(AF_PACKET)")
        if e.errno == errno.EOPNOTSUPP and step.startswith("bind") and a["zero_copy"] == "1":
            return PortError(f"{self.name}: {self.iface} does not support AF_XDP zero-copy (zero_copy=1); "
                             "zero_copy=auto falls back to copy mode")
        if e.errno in (errno.EPERM, errno.EACCES):
            return PortError(f"{self.name}: cannot {step} on {self.iface}: permission denied (AF_XDP {NEEDS})")
        if e.errno == errno.EAFNOSUPPORT:
            return PortError(f"{self.name}: this kernel has no AF_XDP sockets (CONFIG_XDP_SOCKETS); use net_vf")
        if not nd.exists(self.iface):
            return PortError(f"{self.name}: interface {self.iface} does not exist")
        return PortError(f"{self.name}: cannot {step} on {self.iface}: {e.strerror or e}")

    def _kernel_state(self, rings: list[RingArea], off: np.ndarray, max_frame: int) -> XdpState:
        ring, nq, pool, own = self.args["ring_size"], self.nb_rxq, self._upool, self._own
        nfill = ring * L.FILL_RING_FACTOR
        rx, tx, fill, comp = (area.array for area in rings)
        # every fill ring full from the start: the first frames find their chunks
        fill32, fill64 = fill.view(np.uint32), fill.view(np.uint64)
        chunks = np.zeros(nfill, np.int32)
        for q in range(nq):
            if not alloc_bulk(pool, chunks, nfill):
                raise PortError(f"{self.name}: the mbuf pool has {pool.available()} free buffers, "
                                f"{nfill} needed for the fill ring of queue {q}: more mbufs or a smaller ring_size")
            own[chunks] = q + 1
            base = int(off[L.FILL, L.OFF_DESC]) >> 3
            fill64[q, base:base + nfill] = chunks.astype(np.uint64) * pool.buf_size
            fill32[q, int(off[L.FILL, L.OFF_PRODUCER]) >> 2] = nfill
        scratch = max(nfill, 512)  # a tx burst's frames or a whole completion ring; a fill ring's top-up
        return XdpState(
            stats=self._stats, xstats=self._xstats, upool=pool, own=own,
            rx_scratch=np.zeros((nq, scratch), np.int32), tx_scratch=np.zeros((nq, scratch), np.int32),
            rx32=rx.view(np.uint32), rx64=rx.view(np.uint64), tx32=tx.view(np.uint32), tx64=tx.view(np.uint64),
            fill32=fill32, fill64=fill64, comp32=comp.view(np.uint32), comp64=comp.view(np.uint64),
            off=off.copy(), fds=np.array([s.fileno() for s in self._socks], np.int64),
            ring_size=ring, max_frame=max_frame, port_id=self.port_id, tx_kick_at=self._tx_kick_at(),
            fill_retry=np.zeros(nq, np.int64), fill_size=nfill)

    def _tx_kick_at(self) -> int:
        """Frames a full tx burst leaves in the ring before it wakes the
        kernel.  Copy mode: one send() costs a syscall and sends at most the
        budget, so full bursts are gathered up to a quarter ring (room left
        for the bursts that come while the kernel sends), within the budget.
        Zero-copy: the driver sends on its own; wake it whenever it asks."""
        if self._zero_copy:
            return 1
        return max(1, min(self._tx_budget, self.args["ring_size"] // 4))

    def _release(self) -> None:
        """Detach the program, send what the tx rings still hold (bounded),
        close every socket and fd, unmap every area, give the frames the
        kernel side held back to the pool (idempotent)."""
        state, self._state = self._state, None
        if self._link_fd >= 0:
            os.close(self._link_fd)  # the program leaves the netdev now
            self._link_fd = -1
        if state is not None:
            self._drain_tx(state)
        self._collect_missed()
        for s in self._socks:
            s.close()
        self._socks = []
        self._missed_seen[:] = 0  # the next sockets count from zero
        for area in self._areas:
            area.close()
        self._areas = []
        if self._own is not None:  # the sockets are closed: the frames they held are the pool's again
            umem.release_held(self._own, self._upool)
        self._upool = self._own = None
        for fd in reversed(self._fds):
            os.close(fd)
        self._fds = []

    def _drain_tx(self, state: XdpState) -> None:
        """Frames the tx rings took before stop go out (copy mode sends a
        batch per wakeup), for up to TX_DRAIN_S; the lcores are stopped."""
        deadline = time.monotonic() + TX_DRAIN_S
        for q in range(self.nb_txq):
            while xdp_tx_flush(state, q, state.upool) and time.monotonic() < deadline:
                time.sleep(0.0005)

    # ---- counters ----------------------------------------------------------
    def _socket_stats(self) -> list[xsk.XskStats]:
        out = []
        for s in self._socks:
            try:
                out.append(xsk.statistics(s))
            except OSError:
                out.append(xsk.XskStats(0, 0, 0, 0, 0, 0))
        return out

    def _collect_missed(self) -> None:
        # imissed: frames the kernel dropped (rx ring full, no fill entry); its
        # counters are cumulative per socket, only this thread writes the column
        for q, st in enumerate(self._socket_stats()):
            missed = st.rx_dropped + st.rx_ring_full
            self._stats[q, ST_IMISSED] += missed - self._missed_seen[q]
            self._missed_seen[q] = missed

    def stats_array(self) -> np.ndarray:
        self._collect_missed()
        return self._stats

    def xstats(self) -> dict[str, int]:
        totals = self._xstats.sum(axis=0)
        out = {name: int(totals[k]) for k, name in enumerate(L.X_NAMES)}
        kernel = self._socket_stats()
        for field in ("rx_ring_full", "rx_fill_ring_empty_descs", "rx_invalid_descs", "tx_invalid_descs"):
            out[field] = sum(getattr(st, field) for st in kernel)
        return out

    def info(self) -> dict:
        a = self.args
        return {"iface": self.iface, "mtu": self._mtu or "?", "xdp mode": a["xdp_mode"],
                "zero-copy": ("yes" if self._zero_copy else "no (copy mode)") if self._state else "?",
                "umem": ("?" if self._state is None else "the mbuf pool (mbufs are frames: no copy in the port)"
                         if not self._copies else f"its own (frames copied to/from mbufs: {self._copies})"),
                "rings": f"{a['ring_size']} entries x 3 per queue (rx, tx, completion), "
                         f"fill ring {a['ring_size'] * L.FILL_RING_FACTOR}",
                "tx per wakeup": "?" if self._state is None else "the driver's (zero-copy)" if self._zero_copy
                else f"gathered to {self._state.tx_kick_at}, up to {self._tx_budget} sent"
                     + ("" if self._tx_budget > L.TX_BATCH_DEFAULT else " (kernel < 6.17: no XDP_MAX_TX_SKB_BUDGET)"),
                "queues": f"0..{self.nb_rxq - 1} of {nd.rx_queues(self.iface)} netdev rx queues "
                          "(frames steered to others go to the kernel stack)"}
