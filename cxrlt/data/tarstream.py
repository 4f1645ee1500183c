"""Reading shard tars: members straight from the 512-byte ustar headers, grouped by webdataset.

Why not `tarfile` (what webdataset's tarfile_samples uses): its per-member header parsing costs
~50 us in Python, about a tenth of decoding a small stored image, which kept the readers below 0.9x a
plain decode loop. The shards are written by cxrlt (ustar, regular files, names under 100 bytes), so a
header is a name, a size and a type; pax / GNU long-name records from other writers are still
honoured. Grouping members into samples is webdataset's `group_by_keys`.

Skipping without reading: members whose name the caller's `lazy` predicate accepts are not read; the
reader jumps over their bytes and yields a `MemberRef` (file, offset, size) to read later, if ever.
The training reader resuming mid-epoch uses it for the images of the samples it skips, so a resume
reads their headers and json, not their pixels. The file is read through a 1 MiB read-ahead buffer,
but the read right after a jump fetches one small block, or jumping would read the bytes anyway.

Damage (a truncated tar, a header that does not parse) ends the shard. By default that is a warning
(the caller compares the samples it got with the index's count, see cxrlt.data.readers); with
`strict=True` it is an InputError naming the shard and the member at fault.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from webdataset.tariterators import group_by_keys

from cxrlt.errors import InputError

LOG = logging.getLogger("cxrlt.data")
BLOCK = 512
READ_AHEAD = 1 << 20
AFTER_JUMP = 1 << 14  # a header, a json member and the next header, in one read


@dataclass(frozen=True)
class MemberRef:
    """A tar member left unread (`tar_members`' `lazy`): where its bytes are."""

    path: str
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.path, "rb", buffering=0) as f:
            data = os.pread(f.fileno(), self.size, self.offset)
        if len(data) < self.size:
            raise OSError(f"{self.path}: member at byte {self.offset} truncated ({len(data)} of {self.size} bytes)")
        return data


class _Blocks:
    """Front-to-back reads of an open file through a read-ahead buffer; `jump` moves forward without
    reading, and the next read then fetches AFTER_JUMP bytes instead of READ_AHEAD."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = 0
        self.buffer = b""
        self.start = 0
        self.ahead = READ_AHEAD

    def read(self, n: int) -> bytes:
        offset = self.pos - self.start
        if offset + n > len(self.buffer):
            if n >= self.ahead:  # a large member goes straight to the caller, copied once
                data = os.pread(self.fd, n, self.pos)
                self.pos += len(data)
                return data
            self.buffer, self.start, offset = os.pread(self.fd, self.ahead, self.pos), self.pos, 0
        self.ahead = READ_AHEAD
        data = self.buffer[offset : offset + n]
        self.pos += len(data)
        return data

    def jump(self, n: int) -> None:
        self.pos += n
        if self.pos > self.start + len(self.buffer):
            self.ahead = AFTER_JUMP


def _field(header: bytes, start: int, end: int) -> str:
    return header[start:end].split(b"\0", 1)[0].decode("utf-8")


def _pax_path(data: bytes) -> str | None:
    for record in data.decode("utf-8").splitlines():
        _, _, entry = record.partition(" ")
        key, _, value = entry.partition("=")
        if key == "path":
            return value
    return None


def _damaged(path: str, what: str, strict: bool) -> None:
    if strict:
        raise InputError(f"{path}: {what}; the shard is damaged (rewrite it with `cxrlt shard`)")
    LOG.warning("%s: %s; rest of shard skipped", path, what)


def tar_members(path: str, strict: bool = False, lazy: Callable[[str], bool] | None = None) -> Iterator[dict[str, Any]]:
    """{fname, data, __url__} per regular file of a tar; `data` is the member's bytes, or a MemberRef
    when `lazy(fname)` is true (its bytes are not read). A truncated or damaged tar ends with a warning,
    or with strict=True raises an InputError naming the shard and the member."""
    long_name: str | None = None
    last = None  # the last complete member, to say where damage starts
    after = lambda: f" (after member {last})" if last else " (no complete member)"  # noqa: E731
    with open(path, "rb", buffering=0) as f:
        end = os.fstat(f.fileno()).st_size
        blocks = _Blocks(f.fileno())
        while True:
            offset = blocks.pos
            header = blocks.read(BLOCK)
            if len(header) < BLOCK or header == bytes(BLOCK):
                if 0 < len(header) < BLOCK:
                    _damaged(path, f"truncated tar header at byte {offset}{after()}", strict)
                return
            try:
                size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
                name = _field(header, 0, 100)
                prefix = _field(header, 345, 500) if header[257:262] == b"ustar" else ""
            except (ValueError, UnicodeDecodeError):
                _damaged(path, f"damaged tar header at byte {offset}{after()}", strict)
                return
            kind = header[156:157]
            start = blocks.pos
            if start + size > end:
                _damaged(path, f"member {name} truncated ({max(0, end - start)} of {size} bytes)", strict)
                return
            if kind in (b"x", b"L"):
                data = blocks.read(size)
                blocks.jump(-size % BLOCK)
                long_name = _pax_path(data) if kind == b"x" else data.rstrip(b"\0").decode("utf-8")
                last = name
                continue
            if kind not in (b"0", b"\0"):
                blocks.jump(size + -size % BLOCK)
                long_name = None
                last = name
                continue
            fname = long_name or (f"{prefix}/{name}" if prefix else name)
            long_name = None
            if lazy is not None and lazy(fname):
                blocks.jump(size + -size % BLOCK)
                value: bytes | MemberRef = MemberRef(path, start, size)
            else:
                value = blocks.read(size)
                blocks.jump(-size % BLOCK)
            last = name
            yield {"fname": fname, "data": value, "__url__": path}


def tar_samples(path: str, strict: bool = False, lazy: Callable[[str], bool] | None = None) -> Iterator[dict[str, Any]]:
    """Samples ({__key__, __url__, suffix: bytes | MemberRef, ...}) of one shard, in tar order; see
    `tar_members` for `lazy`."""
    return group_by_keys(tar_members(path, strict, lazy))
