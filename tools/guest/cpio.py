"""Write and read "newc" cpio archives (the initramfs format), without root.

The kernel unpacks every archive of a concatenation, gzip'd or not, so a base
initrd plus a small extra archive (a scenario) is a valid initrd.
"""
from __future__ import annotations

import gzip
import stat
import zlib
from dataclasses import dataclass, field

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


@dataclass
class Entry:
    """One archive member: a directory, regular file, symlink or device node."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    @property
    def kind(self) -> str:
        """"dir", "file", "link", "chr", "blk" or "other"."""
        fmt = stat.S_IFMT(self.mode)
        return {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "link",
                stat.S_IFCHR: "chr", stat.S_IFBLK: "blk"}.get(fmt, "other")


@dataclass
class Archive:
    """An in-memory newc archive; parent directories are added on demand."""

    entries: dict[str, Entry] = field(default_factory=dict)

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self.entries:
                self.entries[d] = Entry(d, stat.S_IFDIR | 0o755)

    @staticmethod
    def _norm(name: str) -> str:
        name = name.strip("/")
        if not name or ".." in name.split("/"):
            raise ValueError(f"bad archive path {name!r}")
        return name

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        """Add a directory (and its parents)."""
        name = self._norm(name)
        self._parents(name)
        self.entries[name] = Entry(name, stat.S_IFDIR | mode)

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Add a regular file (and its parent directories)."""
        name = self._norm(name)
        self._parents(name)
        self.entries[name] = Entry(name, stat.S_IFREG | mode, bytes(data))

    def add_symlink(self, name: str, target: str) -> None:
        """Add a symlink NAME -> TARGET."""
        name = self._norm(name)
        self._parents(name)
        self.entries[name] = Entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        """Add a character device node (no root needed: it is only bytes here)."""
        name = self._norm(name)
        self._parents(name)
        self.entries[name] = Entry(name, stat.S_IFCHR | mode, b"", (major, minor))

    def to_bytes(self) -> bytes:
        """The uncompressed archive, parents before children, with its trailer."""
        out = bytearray()
        ino = 1
        for name in sorted(self.entries, key=lambda n: (n.count("/"), n)):
            out += _header(self.entries[name], ino)
            ino += 1
        out += _header(Entry(TRAILER, 0), 0)
        return bytes(out)

    def to_gzip(self) -> bytes:
        """The archive gzip'd (deterministic: mtime 0)."""
        return gzip.compress(self.to_bytes(), compresslevel=9, mtime=0)


def _header(e: Entry, ino: int) -> bytes:
    name = e.name.encode() + b"\0"
    fields = (ino, e.mode, 0, 0, 2 if e.kind == "dir" else 1, 0, len(e.data),
              0, 0, e.rdev[0], e.rdev[1], len(name), 0)
    head = MAGIC + b"".join(b"%08X" % f for f in fields) + name
    return head + _pad4(len(head)) + e.data + _pad4(len(e.data))


def _plain(blob: bytes) -> bytes:
    """Decompress every gzip member of BLOB, keep uncompressed parts as they are."""
    out = bytearray()
    while blob:
        if blob[:2] == b"\x1f\x8b":
            d = zlib.decompressobj(wbits=31)
            out += d.decompress(blob) + d.flush()
            blob = d.unused_data
        else:
            nxt = blob.find(b"\x1f\x8b\x08")
            # a gzip magic inside an uncompressed archive is only a new member
            # if it follows the archive's trailer
            end = blob.find(TRAILER.encode())
            if nxt < 0 or end < 0 or nxt < end:
                out += blob
                break
            cut = end + len(TRAILER) + 1
            cut += -cut % 4
            while cut < len(blob) and blob[cut:cut + 1] == b"\0":
                cut += 1
            out += blob[:cut]
            blob = blob[cut:]
    return bytes(out)


def read(blob: bytes) -> list[Entry]:
    """Parse an initrd: concatenated gzip'd or plain newc archives.

    Later archives come after earlier ones in the list, as the kernel applies
    them (a later member with the same name replaces the earlier one).
    """
    blob = _plain(blob)
    entries: list[Entry] = []
    pos = 0
    while pos < len(blob):
        if blob[pos:pos + 1] == b"\0":  # padding between archives
            pos += 1
            continue
        if blob[pos:pos + 6] != MAGIC:
            raise ValueError(f"bad cpio magic at offset {pos}: {blob[pos:pos + 6]!r}")
        f = [int(blob[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        npos = pos + 110
        name = blob[npos:npos + namesize - 1].decode()
        dpos = npos + namesize
        dpos += -dpos % 4
        data = blob[dpos:dpos + size]
        pos = dpos + size
        pos += -pos % 4
        if name != TRAILER:
            entries.append(Entry(name, mode, data, (rmaj, rmin)))
    return entries
