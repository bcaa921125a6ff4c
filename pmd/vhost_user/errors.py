"""Exceptions of the vhost-user codec.

Every message names what the peer sent and what the protocol expected, so a
log line is enough to tell which side is wrong.  ``in_sync`` says whether the
byte stream is still at a message boundary: if so, the session may answer
(e.g. a REPLY_ACK failure) and carry on; if not, the connection is unusable
and must be closed.
"""
from __future__ import annotations


class VhostUserError(Exception):
    """Base class: a malformed, unexpected or missing vhost-user message.

    ``request``/``flags``/``size`` are the header fields when a header was
    read (else None); ``in_sync`` is True when the whole message was consumed,
    so the next ``recv_message`` starts at the next header.
    """

    def __init__(
        self,
        message: str,
        *,
        request: int | None = None,
        flags: int | None = None,
        size: int | None = None,
        in_sync: bool = False,
    ) -> None:
        super().__init__(message)
        self.request = request
        self.flags = flags
        self.size = size
        self.in_sync = in_sync


class PeerClosed(VhostUserError):
    """The peer closed the connection (EOF or reset)."""


class ShortHeader(PeerClosed):
    """EOF after part of a 12-byte header."""


class ShortPayload(PeerClosed):
    """EOF after the header, before the whole payload arrived."""


class Timeout(VhostUserError):
    """A message (or the rest of one) did not arrive, or could not be sent, in time."""


class BadVersion(VhostUserError):
    """The header's version bits are not 1."""


class BadFlags(VhostUserError):
    """Reserved header flag bits are set, or REPLY/NEED_REPLY where they cannot be."""


class BadSize(VhostUserError):
    """The payload size does not fit the request's layout, or exceeds the maximum."""


class BadFdCount(VhostUserError):
    """Too many or too few file descriptors came with the message."""


class BadPayload(VhostUserError):
    """The payload has the right size but inconsistent fields."""


class UnknownRequest(VhostUserError):
    """The request code is not one this protocol defines for this channel."""


class BadReply(VhostUserError):
    """A reply was expected but something else arrived (wrong request, no REPLY flag)."""
