"""A fault-injecting HTTP/1.1 proxy to put in front of SeaweedFS (or any S3 endpoint).

Point an S3 URL's ``endpoint=`` at ``proxy.endpoint``; every request is forwarded unchanged (the
test server accepts any signature) unless the seeded RNG picks a fault for it:

``drop_request``   the connection is reset before the request reaches the server
``drop_response``  the server handled the request, the client gets a reset instead of the answer
                   (the ambiguous case: a create-only PUT that landed but whose answer was lost)
``error_500``      500 InternalError, without forwarding
``error_503``      503 SlowDown, without forwarding
``slow``           the answer is delayed by ``slow_seconds``
``stall``          the answer is delayed by ``stall_seconds`` (longer than the client's read timeout)
``truncate``       the server's answer is sent with its full Content-Length but only part of the
                   body, then the connection is reset (a truncated body)

``down = True`` makes the proxy reset every connection (an unreachable endpoint) until cleared.
``counts`` says how many of each fault were injected, ``refused`` how many requests were reset while down.  Loopback only; one thread per connection.
"""

from __future__ import annotations

import collections
import random
import socket
import socketserver
import struct
import threading
import time
from urllib.parse import urlparse

FAULTS = ("drop_request", "drop_response", "error_500", "error_503", "slow", "stall", "truncate")
_ERRORS = {
    "error_500": (500, "Internal Server Error", "InternalError", "injected fault: internal error"),
    "error_503": (503, "Service Unavailable", "SlowDown", "injected fault: please reduce your request rate"),
}


class _Closed(Exception):
    """The peer closed the connection."""


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), like a crashed server or a dropped route."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _read_line(f) -> bytes:
    line = f.readline(65537)
    if not line:
        raise _Closed()
    return line


def _read_head(f) -> tuple[bytes, list[tuple[str, str]]]:
    """Start line and headers (raw start line, [(name, value)])."""
    start = _read_line(f)
    while start in (b"\r\n", b"\n"):  # tolerate stray CRLF between requests
        start = _read_line(f)
    headers = []
    while True:
        line = _read_line(f)
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return start, headers


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name.lower():
            return v
    return None


def _read_body(f, headers: list[tuple[str, str]], until_close: bool) -> bytes:
    """The body exactly as framed on the wire (chunked bodies keep their chunk framing)."""
    if (_header(headers, "Transfer-Encoding") or "").lower().endswith("chunked"):
        out = bytearray()
        while True:
            line = _read_line(f)
            out += line
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    trailer = _read_line(f)
                    out += trailer
                    if trailer in (b"\r\n", b"\n"):
                        return bytes(out)
            data = f.read(size + 2)
            if len(data) != size + 2:
                raise _Closed()
            out += data
    length = _header(headers, "Content-Length")
    if length is not None:
        data = f.read(int(length))
        if len(data) != int(length):
            raise _Closed()
        return data
    return f.read() if until_close else b""


def _head_bytes(start: bytes, headers: list[tuple[str, str]]) -> bytes:
    return start + b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers) + b"\r\n"


class FaultProxy:
    def __init__(self, upstream: str, seed: int = 0, rates: dict[str, float] | None = None,
                 slow_seconds: tuple[float, float] = (0.05, 0.4), stall_seconds: float = 3.0) -> None:
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.rates = {name: 0.0 for name in FAULTS}
        self.set_rates(**(rates or {}))
        self.slow_seconds = slow_seconds
        self.stall_seconds = stall_seconds
        self.down = False
        self.counts: collections.Counter[str] = collections.Counter()
        self.requests = 0
        self.refused = 0  # requests reset while down
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self.endpoint = ""

    def set_rates(self, **rates: float) -> None:
        unknown = set(rates) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}")
        self.rates.update(rates)

    def clear(self) -> None:
        """No more faults (requests still pass through)."""
        self.rates = {name: 0.0 for name in FAULTS}

    def _choose(self) -> str | None:
        with self._lock:
            self.requests += 1
            roll = self._rng.random()
            delay = self._rng.uniform(*self.slow_seconds)
            for name in FAULTS:
                roll -= self.rates[name]
                if roll < 0:
                    self.counts[name] += 1
                    return name if name != "slow" else f"slow:{delay}"
            return None

    # -- server ---------------------------------------------------------------------------------
    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            conns, self._connections = list(self._connections), set()
        for conn in conns:
            _reset(conn)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _connect(self) -> tuple[socket.socket, object]:
        up = socket.create_connection(self.upstream, timeout=60)
        with self._lock:
            self._connections.add(up)
        return up, up.makefile("rb")

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            self._connections.add(client)
        client.settimeout(120)
        rfile = client.makefile("rb")
        up: socket.socket | None = None
        upfile = None
        try:
            while True:
                try:
                    start, headers = _read_head(rfile)
                except (_Closed, OSError):
                    return
                if self.down:
                    with self._lock:
                        self.refused += 1
                    _reset(client)
                    return
                method = start.split(b" ", 1)[0].upper()
                if (_header(headers, "Expect") or "").lower() == "100-continue":
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    headers = [(k, v) for k, v in headers if k.lower() != "expect"]
                body = _read_body(rfile, headers, until_close=False)
                fault = self._choose()
                if fault == "drop_request":
                    _reset(client)
                    return
                if fault in _ERRORS:
                    status, reason, code, message = _ERRORS[fault]
                    xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                           f"<Message>{message}</Message></Error>").encode()
                    client.sendall(
                        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
                        f"Content-Length: {len(xml)}\r\n\r\n".encode() + xml
                    )
                    continue
                if fault and fault.startswith("slow:"):
                    time.sleep(float(fault.split(":", 1)[1]))  # the injected fault itself, not synchronisation
                request = _head_bytes(start, headers) + body
                for attempt in range(2):
                    if up is None:
                        up, upfile = self._connect()
                    try:
                        up.sendall(request)
                        status_line, resp_headers = _read_head(upfile)
                        break
                    except (_Closed, OSError):
                        # The server closed an idle keep-alive connection: reconnect, resend once.
                        _reset(up)
                        up = upfile = None
                        if attempt == 1:
                            _reset(client)
                            return
                parts = status_line.split(b" ", 2)
                status = int(parts[1]) if len(parts) > 1 else 0
                no_body = method == b"HEAD" or status in (204, 304) or 100 <= status < 200
                closing = (_header(resp_headers, "Connection") or "").lower() == "close"
                resp_body = b"" if no_body else _read_body(upfile, resp_headers, until_close=True)
                if fault == "stall":
                    time.sleep(self.stall_seconds)  # the injected fault itself, not synchronisation
                if fault == "drop_response":
                    _reset(client)
                    return
                if fault == "truncate" and resp_body:
                    client.sendall(_head_bytes(status_line, resp_headers) + resp_body[: len(resp_body) // 2])
                    _reset(client)
                    return
                client.sendall(_head_bytes(status_line, resp_headers) + resp_body)
                if closing or (_header(resp_headers, "Content-Length") is None and not no_body
                               and "chunked" not in (_header(resp_headers, "Transfer-Encoding") or "").lower()):
                    _reset(up)
                    up = upfile = None
                    client.close()
                    return
        except (OSError, _Closed):
            return
        finally:
            for sock in (client, up):
                if sock is not None:
                    with self._lock:
                        self._connections.discard(sock)
                    try:
                        sock.close()
                    except OSError:
                        pass
