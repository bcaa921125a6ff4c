"""Inflight descriptor tracking for split rings (vhost-user.rst "Inflight I/O
tracking", protocol feature INFLIGHT_SHMFD).

The front-end keeps a shared region that outlives the back-end process; per
vring (``queue_area(queue_size)`` bytes, vring ``v`` at ``v * area``):

    u64 features  u16 version  u16 desc_num  u16 last_batch_head  u16 used_idx
    desc_num x DescStateSplit { u8 inflight; u8 pad[5]; u16 next; u64 counter }

The kernels write it (``take``, ``link``/``unlink`` around the used-idx
publication), ``recover`` reads it back in a restarted back-end:

- taking a head: ``counter`` then ``inflight = 1`` (release: in avail order,
  so the heads in flight are always a prefix of what was taken);
- returning a batch: each head's ``next`` links it to the one before
  (``link``; the first to the old ``last_batch_head``), ``last_batch_head``
  becomes the last (``close_batch``), then used->idx is published, then each
  ``inflight`` is cleared (``unlink``) and ``used_idx`` set to used->idx;
- on restart, ``used_idx != used->idx`` means the crash fell between the
  publication and the clearing: the ``used->idx - used_idx`` heads of the
  last batch (walked from ``last_batch_head``) are done, their flags are
  cleared; every head still in flight is resubmitted in counter order.

Commit record (ours, in the entry's padding; the front-end never reads the
region): a transmit head whose packet the port itself delivers into one of
its receive rings (VM2 looping VM1's packets back, or VM1 to VM1 queues) is
marked ``inflight = 2`` with that ring and the used->idx its publication
will reach (``mark_delivered``), *before* that publication.  The head is
still returned on the transmit ring only by the next burst; a back-end
killed in between would resubmit it and deliver the packet twice.  Recovery
instead compares the receive ring's used->idx at restart with the record:
reached, the packet was delivered and the head is only returned (rolled
forward); not reached, it is resubmitted (rolled back).  To find the head,
``dequeue`` records each mbuf's source (``source``: vring, head, the take's
counter) in the port's ``src`` array by mbuf index; ``mark_delivered``
checks it against the entry, so a recycled mbuf's old word never matches a
head taken since.

All offsets below are bytes from a vring's area.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from numba import njit

from ..atomics import store_release

IF_FEATURES, IF_VERSION, IF_DESC_NUM, IF_LAST_BATCH_HEAD, IF_USED_IDX = 0, 8, 10, 12, 14
IF_HEADER = 16
IF_DESC_SIZE = 16
IF_D_INFLIGHT, IF_D_NEXT, IF_D_COUNTER = 0, 6, 8
IF_D_RX_VRING, IF_D_RX_USED = 1, 2  # commit record, in the padding: u8 receive vring, u16 its used->idx
IF_ALIGN = 64
IF_VERSION_1 = 1
IF_TAKEN, IF_DELIVERED = 1, 2  # values of the inflight byte besides 0
RESUB_DELIVERED = 0x8000  # resubmission list: the head only goes back (its packet was delivered)
SRC_VALID = 1 << 63


def queue_area(queue_size: int) -> int:
    """Bytes of one vring's area (aligned, as the back-end lays out the region)."""
    return -(-(IF_HEADER + IF_DESC_SIZE * queue_size) // IF_ALIGN) * IF_ALIGN


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _entry(base, head):
    return base + IF_HEADER + IF_DESC_SIZE * head


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def take(im, base, head, counter):
    """Head ``head`` leaves the available ring: in flight from now on."""
    e = _entry(base, head)
    im.u64[(e + IF_D_COUNTER) >> 3] = np.uint64(counter)
    store_release(im.u8, e + IF_D_INFLIGHT, np.uint8(1))  # after its counter, after earlier heads


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def link(im, base, head, last):
    """Add ``head`` to the batch about to be published, after ``last`` (the
    head linked before it, or the region's last_batch_head for the first);
    returns ``head``, for the next one."""
    im.u16[(_entry(base, head) + IF_D_NEXT) >> 1] = np.uint16(last)
    return head


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def last_batch_head(im, base):
    return np.int64(im.u16[(base + IF_LAST_BATCH_HEAD) >> 1])


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def close_batch(im, base, last):
    """The batch is linked: record its last head (before used->idx moves;
    the release keeps every ``next`` above it)."""
    store_release(im.u16, (base + IF_LAST_BATCH_HEAD) >> 1, np.uint16(last))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def unlink(im, base, head):
    """``head``'s batch is published: no longer in flight."""
    store_release(im.u8, _entry(base, head) + IF_D_INFLIGHT, np.uint8(0))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def set_inflight_used_idx(im, base, used_idx):
    """Every flag of the published batch is cleared: used_idx catches up."""
    store_release(im.u16, (base + IF_USED_IDX) >> 1, np.uint16(used_idx & 0xFFFF))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def source(v, head, counter):
    """What ``dequeue`` records for an mbuf it filled (the port's ``src``
    array, by mbuf index: dense, unlike a tag in each buffer's headroom):
    valid bit, vring, head, low 32 bits of the take's counter."""
    return (np.uint64(SRC_VALID) | np.uint64(v) << np.uint64(48) | np.uint64(head) << np.uint64(32)
            | np.uint64(counter & 0xFFFFFFFF))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def source_fields(src):
    """``(vring, head, counter_low32)`` of a ``source`` word, vring -1 if none.
    Unchecked: a recycled mbuf keeps an old word (``mark_delivered`` checks)."""
    if not src & np.uint64(SRC_VALID):
        return np.int64(-1), np.int64(0), np.uint64(0)
    return (np.int64((src >> np.uint64(48)) & np.uint64(0x7FFF)), np.int64((src >> np.uint64(32)) & np.uint64(0xFFFF)),
            src & np.uint64(0xFFFFFFFF))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def entry_counter(im, base, head):
    return np.int64(im.u64[(_entry(base, head) + IF_D_COUNTER) >> 3])


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def mark_delivered(im, base, head, counter, rx_vring, rx_used_idx):
    """Commit record: head ``head`` (taken with ``counter``, low 32 bits) is delivered
    once receive vring ``rx_vring``'s used->idx reaches ``rx_used_idx``.
    Must precede that publication; a source word that does not match the entry
    (an old buffer) is ignored."""
    e = _entry(base, head)
    if im.u8[e + IF_D_INFLIGHT] != IF_TAKEN or im.u64[(e + IF_D_COUNTER) >> 3] & np.uint64(0xFFFFFFFF) != counter:
        return
    im.u8[e + IF_D_RX_VRING] = np.uint8(rx_vring)
    im.u16[(e + IF_D_RX_USED) >> 1] = np.uint16(rx_used_idx & 0xFFFF)
    store_release(im.u8, e + IF_D_INFLIGHT, np.uint8(IF_DELIVERED))


def _fields(area: np.ndarray, base: int, num: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inflight u8[num], next u16[num], counter u64[num]) views of a vring's entries."""
    rec = np.dtype([("inflight", "u1"), ("rx_vring", "u1"), ("rx_used", "<u2"), ("pad", "u1", 2), ("next", "<u2"),
                    ("counter", "<u8")])
    d = area[base + IF_HEADER: base + IF_HEADER + IF_DESC_SIZE * num].view(rec)
    return d


def _u16(area: np.ndarray, off: int) -> int:
    return int(area[off:off + 2].view(np.uint16)[0])


def _set_u16(area: np.ndarray, off: int, value: int) -> None:
    area[off:off + 2].view(np.uint16)[0] = value & 0xFFFF


def recover(area: np.ndarray, base: int, num: int, ring_used_idx: int, features: int, resubmit: bool,
            rx_used_idx: Callable[[int], int | None] = lambda v: None) -> tuple[list[int], int, int]:
    """Bring vring area ``base`` (u8 ``area``) in line with the used ring
    (used->idx is ``ring_used_idx``) before the ring starts.

    Returns ``(heads, repaired, next_counter)``: the heads to resubmit in
    counter order, each ``| RESUB_DELIVERED`` if its commit record shows the
    packet was delivered (``rx_used_idx(vring)``: that receive ring's
    used->idx as the killed back-end left it, None if unknown: resubmitted);
    none if ``not resubmit`` (a receive ring's buffers are simply filled
    again, their flags cleared); how many flags an interrupted publication
    left set; the counter to continue from.  A never-used area (desc_num 0)
    or one of another ring size is (re)initialised: nothing in it names a
    head of this ring.
    """
    d = _fields(area, base, num)
    flags = d["inflight"]
    if _u16(area, base + IF_DESC_NUM) != num:
        area[base: base + IF_HEADER + IF_DESC_SIZE * num] = 0
        area[base: base + 8].view(np.uint64)[0] = features
        _set_u16(area, base + IF_VERSION, IF_VERSION_1)
        _set_u16(area, base + IF_DESC_NUM, num)
        _set_u16(area, base + IF_USED_IDX, ring_used_idx)
        return [], 0, 0
    repaired = 0
    used_idx = _u16(area, base + IF_USED_IDX)
    if used_idx != ring_used_idx & 0xFFFF:
        # the last batch was published but its flags not cleared (spec step 1)
        h = _u16(area, base + IF_LAST_BATCH_HEAD)
        for _ in range(min((ring_used_idx - used_idx) & 0xFFFF, num)):
            if h >= num:
                break
            repaired += int(flags[h] != 0)
            flags[h] = 0
            h = int(d["next"][h])
        _set_u16(area, base + IF_USED_IDX, ring_used_idx)
    counter = d["counter"]
    next_counter = int(counter.max()) + 1 if num else 0
    if not resubmit:
        flags[:] = 0
        return [], repaired, next_counter
    live = np.flatnonzero(flags != 0)
    heads = []
    for h in live[np.argsort(counter[live], kind="stable")]:
        h = int(h)
        if flags[h] == IF_DELIVERED:
            rx_used = rx_used_idx(int(d["rx_vring"][h]))
            target = int(d["rx_used"][h])
            # reached: used->idx is at or past the record (mod 2**16; the
            # head is returned within a burst, long before a wrap)
            if rx_used is not None and (rx_used - target) & 0xFFFF < 0x8000:
                heads.append(h | RESUB_DELIVERED)
                continue
            flags[h] = IF_TAKEN  # not published: the packet goes again
        heads.append(h)
    return heads, repaired, next_counter
