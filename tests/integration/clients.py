"""
Client helpers: ftplib with TLS session reuse and implicit FTPS, and a raw
control-connection reader for the tests that must see exact bytes.
"""

from __future__ import annotations

import ftplib
import hashlib
import socket
import ssl
import time
from pathlib import Path
from typing import Any, Self

TIMEOUT = 10.0


def client_context(cafile: Path | None = None,
                   alpn: list[str] | None = None) -> ssl.SSLContext:
    """
    A client TLS context that trusts the server's own (self-signed) certificate.

    The chain is verified; the host name is not, because the tests connect
    to 127.0.0.1 and the certificate names C{localhost}.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    if cafile is None:
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cafile=str(cafile))
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


class ReusingFTP_TLS(ftplib.FTP_TLS):
    """
    FTP_TLS whose data connections resume the control connection's TLS
    session, as RFC 4217 servers may require (and ours does by default).
    """

    def ntransfercmd(self, cmd: str, rest: Any = None) -> tuple[socket.socket, Any]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(
                conn, server_hostname=self.host, session=self.sock.session,
            )
        return conn, size


class ImplicitFTP_TLS(ReusingFTP_TLS):
    """
    Implicit FTPS: TLS from the first byte, the banner comes inside TLS.
    """

    def connect(self, host: str = "", port: int = 0, timeout: float = -999,
                source_address: Any = None) -> str:
        if host:
            self.host = host
        if port:
            self.port = port
        if timeout != -999:
            self.timeout = timeout
        raw = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self.context.wrap_socket(raw, server_hostname=self.host)
        self.af = self.sock.family
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


def explicit_ftps(port: int, cafile: Path | None = None) -> ReusingFTP_TLS:
    ftp = ReusingFTP_TLS(context=client_context(cafile), timeout=TIMEOUT)
    ftp.connect("127.0.0.1", port)
    return ftp


def implicit_ftps(port: int, cafile: Path | None = None) -> ImplicitFTP_TLS:
    ftp = ImplicitFTP_TLS(context=client_context(cafile), timeout=TIMEOUT)
    ftp.connect("127.0.0.1", port)
    return ftp


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def retrieve(ftp: ftplib.FTP, name: str) -> bytes:
    chunks: list[bytes] = []
    ftp.retrbinary(f"RETR {name}", chunks.append)
    return b"".join(chunks)


class RawControl:
    """
    A plain socket on an FTP control port that reads whole replies.
    """

    def __init__(self, port: int, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def line(self) -> str:
        """
        One line without CRLF; raises EOFError when the server closed.
        """
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise EOFError(f"connection closed; unread {self.buffer!r}")
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def reply(self) -> list[str]:
        """
        One whole reply (all lines of a multi-line reply).
        """
        first = self.line()
        lines = [first]
        if first[3:4] == "-":
            end = first[:3] + " "
            while not lines[-1].startswith(end):
                lines.append(self.line())
        return lines

    def command(self, text: str) -> list[str]:
        self.send(text + "\r\n")
        return self.reply()

    def read_until_closed(self, limit: float = 5.0) -> bytes:
        """
        Everything the server sends until it closes (bounded by C{limit}).

        Raises L{TimeoutError} if the connection is still open at the limit.
        """
        deadline = time.monotonic() + limit
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"still open after {limit}s; got {self.buffer!r}")
            self.sock.settimeout(remaining)
            try:
                if not self._fill():
                    break
            except ConnectionResetError:
                break
        data, self.buffer = self.buffer, b""
        return data
