"""Framing as data: how a byte stream is cut into records.

Theory of operation. A connection hands each received chunk to its *framer* (one per
connection, built by the framing spec), which returns, in order, one entry per record
that the chunk completed and keeps the partial tail for the next chunk (on a busy
connection almost every chunk ends in the middle of a record). An entry is

* ``bytes``: a complete frame, without its delimiter;
* a ``FrameError``: a record that is rejected by the framing itself (a line longer than
  ``max_frame``, an empty line). It takes a record number like a frame does. A *fatal*
  one (``fatal=True``, always the last entry) means the stream cannot be resynchronised:
  the connection is closed;
* ``None``: a record that is skipped (an empty line under ``Lines(skip_empty=True)``); it
  takes a record number and produces nothing.

Framers are pure state machines (no I/O, no Trio), so a property test can cut a stream at
every byte boundary and compare. The hot path (``Lines`` without oversized, empty or
``\\r``-terminated lines) is one ``bytes.split`` and a few C-level scans per chunk.
"""

from __future__ import annotations

from typing import Protocol, final, runtime_checkable

import attrs

from .._errors import DefinitionTypeError, DefinitionValueError, TrioflowError

#: How much of a rejected record is kept for its dead letter.
RAW_KEPT = 1024


@final
class FrameError(TrioflowError, ValueError):
    """A record rejected by the framing (too long, empty), or, with ``fatal``, a stream that
    cannot be framed any further (a length prefix above ``max_frame``)."""

    def __init__(self, reason: str, *, raw: bytes = b"", fatal: bool = False) -> None:
        super().__init__(reason)
        #: one line, for a reply and a dead letter
        self.reason = reason
        #: the first ``RAW_KEPT`` bytes of the record
        self.raw = raw[:RAW_KEPT]
        #: the connection cannot go on after this record
        self.fatal = fatal


Frame = bytes | FrameError | None


@runtime_checkable
class Framer(Protocol):
    """The per-connection state machine of a framing (see the module docstring)."""

    def feed(self, data: bytes) -> list[Frame]:
        """The records completed by ``data``, in order; keep the partial tail."""
        ...

    def tail(self) -> bytes:
        """The bytes of the partial record held (empty if none)."""
        ...


@runtime_checkable
class Framing(Protocol):
    """A framing spec: builds a fresh ``Framer`` for each connection."""

    def framer(self) -> Framer:
        """A new framer, for one connection."""
        ...


def _check_max_frame(owner: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DefinitionValueError(f"max_frame of {owner} must be an int >= 1, got {value!r}")


@final
@attrs.frozen(kw_only=True)
class Lines:
    """Newline-delimited records (the default framing), e.g. NDJSON.

    * A record ends at ``\\n``; one ``\\r`` before it is removed too (``\\r\\n`` clients).
    * A line longer than ``max_frame`` bytes (without its line end) is rejected as one
      record (``FrameError``, with its first KiB) as soon as it is known to be too long,
      and the rest of it is discarded unread up to the next ``\\n``: the connection goes
      on with the next line. At most ``max_frame + 1`` bytes of a line are ever held.
    * An empty line is a rejected record ("empty line") by default, so that every line a
      client sends gets exactly one outcome; with ``skip_empty=True`` it is skipped
      silently (it still counts in the line numbers).
    """

    max_frame: int = 64 * 1024
    skip_empty: bool = False

    def __attrs_post_init__(self) -> None:
        _check_max_frame("Lines", self.max_frame)
        if not isinstance(self.skip_empty, bool):
            raise DefinitionTypeError(f"skip_empty of Lines must be a bool, got {self.skip_empty!r}")

    def framer(self) -> Framer:
        """A new line framer, for one connection."""
        return _LineFramer(self.max_frame, self.skip_empty)


class _LineFramer:
    __slots__ = ("_buf", "_discarding", "max_frame", "skip_empty")

    def __init__(self, max_frame: int, skip_empty: bool) -> None:
        self.max_frame = max_frame
        self.skip_empty = skip_empty
        self._buf = b""
        #: inside a line already rejected as too long: drop bytes up to the next newline
        self._discarding = False

    def tail(self) -> bytes:
        return self._buf

    def feed(self, data: bytes) -> list[Frame]:
        if self._discarding:
            end = data.find(b"\n")
            if end < 0:
                return []
            self._discarding = False
            data = data[end + 1 :]
        if self._buf:
            data = self._buf + data
        parts: list[bytes] = data.split(b"\n")
        tail = parts.pop()
        # the tail may still lose a "\r", so it is too long only past max_frame + 1
        long_tail = len(tail) > self.max_frame + 1
        self._buf = b"" if long_tail else tail
        if long_tail or (
            parts and (max(map(len, parts)) > self.max_frame or b"" in parts or b"\r" in data)
        ):
            return self._slow(parts, tail if long_tail else None)
        return parts  # type: ignore[return-value]  # list is invariant; bytes are Frames

    def _slow(self, parts: list[bytes], long_tail: bytes | None) -> list[Frame]:
        out: list[Frame] = []
        limit = self.max_frame
        for part in parts:
            if part.endswith(b"\r"):
                part = part[:-1]
            if len(part) > limit:
                out.append(self._too_long(part))
            elif not part:
                out.append(None if self.skip_empty else FrameError("empty line"))
            else:
                out.append(part)
        if long_tail is not None:
            self._discarding = True
            out.append(self._too_long(long_tail))
        return out

    def _too_long(self, part: bytes) -> FrameError:
        return FrameError(f"line longer than max_frame ({self.max_frame} bytes)", raw=part)


@final
@attrs.frozen(kw_only=True)
class LengthPrefixed:
    """Records preceded by their length: an unsigned big-endian integer of ``header``
    bytes (1, 2, 4 or 8), then that many bytes.

    A length above ``max_frame`` cannot be skipped safely (a corrupt header would make the
    reader skip into the middle of later records), so it is a fatal ``FrameError``: the
    connection is closed with that reason. A zero length is an empty record (``b""``).
    """

    header: int = 4
    max_frame: int = 64 * 1024

    def __attrs_post_init__(self) -> None:
        if self.header not in (1, 2, 4, 8) or isinstance(self.header, bool):
            raise DefinitionValueError(f"header of LengthPrefixed must be 1, 2, 4 or 8, got {self.header!r}")
        _check_max_frame("LengthPrefixed", self.max_frame)

    def framer(self) -> Framer:
        """A new length-prefix framer, for one connection."""
        return _PrefixFramer(self.header, self.max_frame)


class _PrefixFramer:
    __slots__ = ("_buf", "_dead", "header", "max_frame")

    def __init__(self, header: int, max_frame: int) -> None:
        self.header = header
        self.max_frame = max_frame
        self._buf = bytearray()
        self._dead = False

    def tail(self) -> bytes:
        return bytes(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        if self._dead:
            return []
        buf = self._buf
        buf += data
        out: list[Frame] = []
        h, pos, n = self.header, 0, len(buf)
        while n - pos >= h:
            size = int.from_bytes(buf[pos : pos + h], "big")
            if size > self.max_frame:
                self._dead = True
                out.append(FrameError(
                    f"length prefix {size} exceeds max_frame ({self.max_frame} bytes); the stream "
                    "cannot be resynchronised", raw=bytes(buf[pos : pos + h]), fatal=True,
                ))
                buf.clear()
                return out
            if n - pos - h < size:
                break
            out.append(bytes(buf[pos + h : pos + h + size]))
            pos += h + size
        del buf[:pos]
        return out
