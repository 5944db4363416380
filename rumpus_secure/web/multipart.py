"""
An incremental ``multipart/form-data`` parser (RFC 7578, RFC 2046).

Bytes are pushed in with L{MultipartParser.feed} as they arrive from the
network; the parser calls its sink for each part's headers, body data and
end.  It holds at most one header block and one delimiter's length of body
in memory, whatever the size of the upload, so a 2 GiB file streams through
a few kilobytes of buffer.
"""

from __future__ import annotations

import re
from typing import Protocol
from urllib.parse import unquote

MAX_HEADER_BYTES = 16 * 1024
MAX_PARTS = 10_000


class MultipartError(ValueError):
    """The body is not well-formed multipart data; the message is for a person."""


class PartSink(Protocol):
    def part_begin(self, headers: dict[str, str]) -> None: ...
    def part_data(self, data: bytes) -> None: ...
    def part_end(self) -> None: ...


# Browsers do not backslash-escape inside quotes (the HTML standard has
# them percent-encode '"' and line breaks instead), and old ones send
# Windows paths, so a backslash is an ordinary character here.
_PARAM = re.compile(r';\s*([^=\s;]+)\s*=\s*("[^"]*"|[^;]*)')


def parse_header_params(value: str) -> tuple[str, dict[str, str]]:
    """
    Split ``form-data; name="a"; filename="b.txt"`` into the value and its
    parameters (names lower-cased, quotes removed, RFC 5987 ``*`` forms
    decoded and preferred).
    """
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    extended: dict[str, str] = {}
    for match in _PARAM.finditer(";" + rest):
        name = match.group(1).lower()
        raw = match.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = raw[1:-1]
        if name.endswith("*"):
            charset, _, encoded = raw.partition("'")
            _, _, encoded = encoded.partition("'")
            try:
                extended[name[:-1]] = unquote(encoded, encoding=charset or "utf-8",
                                              errors="strict")
            except (LookupError, UnicodeDecodeError):
                continue
        else:
            params[name] = raw
    params.update(extended)
    return main.strip().lower(), params


def boundary_from_content_type(content_type: bytes) -> bytes | None:
    """
    The boundary of a ``multipart/form-data`` content type, or L{None}.
    """
    try:
        text = content_type.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        return None
    kind, params = parse_header_params(text)
    boundary = params.get("boundary", "")
    if kind != "multipart/form-data" or not 1 <= len(boundary) <= 70:
        return None
    return boundary.encode("latin-1")


_PREAMBLE, _BODY, _AFTER_DELIMITER, _HEADERS, _END = range(5)


class MultipartParser:
    """
    Push parser: call L{feed} with each chunk, then L{close}.

    @param boundary: the boundary from the content type, without dashes.
    @param sink: receives C{part_begin(headers)}, C{part_data(bytes)} and
        C{part_end()} in order.
    """

    def __init__(self, boundary: bytes, sink: PartSink) -> None:
        self._delimiter = b"\r\n--" + boundary
        # A leading CRLF lets the first boundary match the same delimiter.
        self._buffer = bytearray(b"\r\n")
        self._state = _PREAMBLE
        self._sink = sink
        self._parts = 0

    @property
    def complete(self) -> bool:
        """Whether the closing boundary has been seen."""
        return self._state == _END

    def feed(self, data: bytes) -> None:
        """
        Parse the next chunk of the body.

        @raises MultipartError: on malformed data; the parser is then dead.
        """
        if self._state == _END:
            return  # the epilogue is ignored
        self._buffer += data
        buffer = self._buffer
        delimiter = self._delimiter
        while True:
            if self._state in (_PREAMBLE, _BODY):
                at = buffer.find(delimiter)
                if at < 0:
                    safe = len(buffer) - (len(delimiter) - 1)
                    if safe > 0:
                        if self._state == _BODY:
                            self._sink.part_data(bytes(buffer[:safe]))
                        del buffer[:safe]
                    return
                if self._state == _BODY:
                    if at:
                        self._sink.part_data(bytes(buffer[:at]))
                    self._sink.part_end()
                del buffer[: at + len(delimiter)]
                self._state = _AFTER_DELIMITER
            elif self._state == _AFTER_DELIMITER:
                if len(buffer) < 2:
                    return
                if buffer[:2] == b"--":
                    self._state = _END
                    buffer.clear()
                    return
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > 1024:
                        raise MultipartError("a part boundary is malformed")
                    return
                if buffer[:end].strip(b" \t"):
                    raise MultipartError("a part boundary is malformed")
                del buffer[: end + 2]
                self._state = _HEADERS
            elif self._state == _HEADERS:
                if buffer[:2] == b"\r\n":
                    block, skip = b"", 2
                else:
                    end = buffer.find(b"\r\n\r\n")
                    if end < 0:
                        if len(buffer) > MAX_HEADER_BYTES:
                            raise MultipartError("a part's headers are too long")
                        return
                    if end > MAX_HEADER_BYTES:  # arrived whole, in one chunk
                        raise MultipartError("a part's headers are too long")
                    block, skip = bytes(buffer[:end]), end + 4
                del buffer[:skip]
                self._parts += 1
                if self._parts > MAX_PARTS:
                    raise MultipartError("too many parts in one upload")
                self._sink.part_begin(_parse_headers(block))
                self._state = _BODY
            else:  # pragma: no cover
                return

    def close(self) -> None:
        """
        The body has ended.

        @raises MultipartError: if the closing boundary never came.
        """
        if self._state != _END:
            raise MultipartError("the upload was cut short (no closing boundary)")


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    text = block.decode("utf-8", "replace")
    for line in text.split("\r\n"):
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise MultipartError("a part header is malformed")
        headers[name.strip().lower()] = value.strip()
    return headers
