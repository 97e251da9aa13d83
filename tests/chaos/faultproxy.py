"""A fault-injecting HTTP proxy between the S3 clients and the moto server (tests only).

It listens on 127.0.0.1, forwards each request to the upstream server and, for requests
that match a :class:`Fault` rule, does one of:

* ``"500"`` / ``"503"``: answers with that status and an S3 error body, not forwarded;
* ``"slow"``: answers nothing for ``delay`` seconds (past the client's timeout), then
  drops the connection; not forwarded;
* ``"reset"``: resets the connection (TCP RST) before forwarding;
* ``"lost"``: forwards the request (it lands), then resets the connection instead of
  answering: the client cannot know that its PUT succeeded.

A rule matches on the HTTP method, a regular expression searched in the path and query,
and optionally a header (``If-None-Match`` marks a conditional PUT); it fires ``times``
times, then lets requests through. Every request is logged (method, target, what
happened), so tests can assert what the clients did.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlparse

KINDS = ("500", "503", "slow", "reset", "lost")


@dataclass
class Fault:
    """Inject ``kind`` into the next ``times`` requests matching ``method`` and ``path``."""

    kind: str
    method: str
    path: str = ""
    times: int = 1
    header: str | None = None  # only requests carrying this header (case-insensitive)
    delay: float = 3.0
    fired: int = 0

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind

    def matches(self, method: str, target: str, headers: dict[str, str]) -> bool:
        if self.fired >= self.times or method != self.method:
            return False
        if self.header is not None and self.header.lower() not in headers:
            return False
        return re.search(self.path, target) is not None


@dataclass
class Logged:
    method: str
    target: str
    action: str  # "ok" or the fault kind


@dataclass
class FaultProxy:
    """The proxy: ``endpoint`` is its URL; add rules with :meth:`inject`."""

    upstream: str
    rules: list[Fault] = field(default_factory=list)
    log: list[Logged] = field(default_factory=list)

    def __post_init__(self) -> None:
        up = urlparse(self.upstream)
        self._up_host, self._up_port = up.hostname or "127.0.0.1", up.port or 80
        self._lock = threading.Lock()
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.endpoint = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    # ---- rules ---------------------------------------------------------------------
    def inject(self, kind: str, method: str, path: str = "", times: int = 1, **kw: object) -> Fault:
        rule = Fault(kind, method, path, times, **kw)  # type: ignore[arg-type]
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.log.clear()

    def faults(self) -> list[Logged]:
        with self._lock:
            return [e for e in self.log if e.action != "ok"]

    def _pick(self, method: str, target: str, headers: dict[str, str]) -> Fault | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, target, headers):
                    rule.fired += 1
                    return rule
            return None

    def _record(self, method: str, target: str, action: str) -> None:
        with self._lock:
            self.log.append(Logged(method, target, action))

    # ---- serving -------------------------------------------------------------------
    def close(self) -> None:
        self._stop.set()
        self._server.close()
        self._accept.join(timeout=5)
        with self._lock:
            open_conns = list(self._conns)
        for conn in open_conns:  # idle keep-alive connections: wake their threads
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=5)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            t = threading.Thread(target=self._connection, args=(conn,), daemon=True)
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
            t.start()

    def _connection(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)
        reader = conn.makefile("rb")
        try:
            while not self._stop.is_set():
                request = _read_request(reader, conn)
                if request is None:
                    return
                method, target, _version, headers, raw_headers, body = request
                rule = self._pick(method, target, headers)
                action = "ok" if rule is None else rule.kind
                self._record(method, target, action)
                if rule is not None and rule.kind in ("500", "503"):
                    conn.sendall(_error_response(int(rule.kind)))
                    continue
                if rule is not None and rule.kind == "slow":
                    self._stop.wait(rule.delay)
                    return
                if rule is not None and rule.kind == "reset":
                    _reset(conn)
                    return
                response = self._forward(method, target, raw_headers, body)
                if rule is not None and rule.kind == "lost":
                    _reset(conn)
                    return
                conn.sendall(response)
                if headers.get("connection", "").lower() == "close":
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            reader.close()
            conn.close()

    def _forward(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> bytes:
        up = http.client.HTTPConnection(self._up_host, self._up_port, timeout=30)
        try:
            up.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() in ("transfer-encoding", "content-length", "expect"):
                    continue
                up.putheader(name, value)
            up.putheader("Content-Length", str(len(body)))
            up.endheaders(body)
            resp = up.getresponse()
            data = resp.read()
            lines = [f"HTTP/1.1 {resp.status} {resp.reason}"]
            # A HEAD answer has no body but the Content-Length of the object: keep it.
            dropped = ("transfer-encoding", "connection")
            if method != "HEAD":
                dropped += ("content-length",)
                lines.append(f"Content-Length: {len(data)}")
            for name, value in resp.getheaders():
                if name.lower() not in dropped:
                    lines.append(f"{name}: {value}")
            return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data
        finally:
            up.close()


def _read_request(
    reader: object, conn: socket.socket
) -> tuple[str, str, str, dict[str, str], list[tuple[str, str]], bytes] | None:
    line = reader.readline()  # type: ignore[attr-defined]
    if not line:
        return None
    method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    raw: list[tuple[str, str]] = []
    while True:
        h = reader.readline().decode("latin-1").rstrip("\r\n")  # type: ignore[attr-defined]
        if not h:
            break
        name, _, value = h.partition(":")
        raw.append((name.strip(), value.strip()))
    headers = {k.lower(): v for k, v in raw}
    if headers.get("expect", "").lower() == "100-continue":
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            line = reader.readline()  # type: ignore[attr-defined]
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:  # the last chunk, then optional trailers and a blank line
                while reader.readline() not in (b"\r\n", b""):  # type: ignore[attr-defined]
                    pass
                break
            body += reader.read(size + 2)[:size]  # type: ignore[attr-defined]
    else:
        body = reader.read(int(headers.get("content-length", "0") or 0))  # type: ignore[attr-defined]
    return method, target, version, headers, raw, body


def _error_response(status: int) -> bytes:
    code, reason = {500: ("InternalError", "Internal Server Error"),
                    503: ("SlowDown", "Service Unavailable")}[status]
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>injected</Message></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _reset(conn: socket.socket) -> None:
    # SO_LINGER with a zero timeout: close() sends a TCP RST, not a FIN.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


@contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()
