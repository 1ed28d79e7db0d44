"""A local HTTP file server with per-path fault injection, for download tests.

    with FaultServer() as server:
        url = server.add("/v/abcdefghijk.mp4", Path("clip.mp4"))
        server.fail("/v/abcdefghijk.mp4", Fault.status(429), Fault.ok())   # 429, then success
        ...  # point the downloader at server.url_template("/v/{yid}.mp4")
        assert server.completed_bodies("/v/abcdefghijk.mp4") == 1

It listens on 127.0.0.1 (random port) in a daemon thread, one thread per connection, serves
GET and HEAD with ``Content-Length`` and byte ranges (``206``, so clients can resume), and
logs every request. Faults are queued per path and consumed one per GET request: when a
path's queue is empty it is served normally; a *sticky* fault (``times=None``) applies to
every request. Kinds:

- ``Fault.status(code)``: answer ``code`` with a short body (404, 429, 500, ...);
- ``Fault.drop(after)``: announce the whole body, send ``after`` bytes, close the connection;
- ``Fault.slow(rate)``: send the body at about ``rate`` bytes/s (a kill mid-download);
- ``Fault.stall(seconds, after)``: send ``after`` bytes, then nothing for ``seconds``;
- ``Fault.ok()``: a normal answer (to fault a later request, e.g. the download after a probe).

Any process can be the client (tests run the stage as a subprocess); the server lives in the
test process.
"""

from __future__ import annotations

import contextlib
import mimetypes
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Fault:
    """One injected behaviour for one request (or every request when ``times`` is None)."""

    kind: str  # ok | status | drop | slow | stall
    code: int = 200
    after: int = 0  # bytes sent before a drop or stall
    rate: float = 0.0  # bytes per second (slow)
    seconds: float = 0.0  # stall length
    times: int | None = 1  # None: sticky, every request

    @staticmethod
    def ok() -> Fault:
        return Fault("ok")

    @staticmethod
    def status(code: int, times: int | None = 1) -> Fault:
        return Fault("status", code=code, times=times)

    @staticmethod
    def drop(after: int, times: int | None = 1) -> Fault:
        return Fault("drop", after=after, times=times)

    @staticmethod
    def slow(rate: float, times: int | None = 1) -> Fault:
        return Fault("slow", rate=rate, times=times)

    @staticmethod
    def stall(seconds: float, after: int = 0, times: int | None = 1) -> Fault:
        return Fault("stall", seconds=seconds, after=after, times=times)


@dataclass
class RequestRecord:
    """What the server saw and did for one request."""

    method: str
    path: str
    headers: dict[str, str]
    time: float
    status: int = 0
    fault: str = "ok"
    range: tuple[int, int] | None = None  # served byte range, inclusive
    bytes_sent: int = 0
    complete: bool = False  # the whole requested body was written
    # Set when the handler returns: a client can read the last byte before the server thread
    # records ``complete``, so the counting queries wait for this (see _settled).
    handled: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)


@dataclass
class _Entry:
    data: bytes
    content_type: str
    faults: deque = field(default_factory=deque)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (a killed downloader, a probe that read only the headers)
        are part of the tests, not errors worth a traceback."""


class FaultServer:
    """The server (a context manager); see the module docstring."""

    def __init__(self, host: str = "127.0.0.1"):
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self.requests: list[RequestRecord] = []
        self._httpd = _QuietServer((host, 0), _make_handler(self))
        self._thread: threading.Thread | None = None

    # --------------------------------------------------------------------- setup
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def url_template(self, pattern: str) -> str:
        """``pattern`` (a path with ``{yid}``) as a full URL template."""
        return self.base_url + pattern

    def add(self, path: str, source: Path | bytes, content_type: str | None = None) -> str:
        """Serve ``source`` (a file or bytes) at ``path``; returns its URL."""
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        if content_type is None:
            content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        with self._lock:
            self._entries[path] = _Entry(data, content_type)
        return self.url(path)

    def fail(self, path: str, *faults: Fault) -> None:
        """Queue faults for the next GET requests of ``path`` (in order)."""
        with self._lock:
            self._entries[path].faults.extend(faults)

    def clear_faults(self, path: str) -> None:
        with self._lock:
            self._entries[path].faults.clear()

    def data(self, path: str) -> bytes:
        return self._entries[path].data

    # ------------------------------------------------------------------ queries
    def requests_for(self, path: str, method: str | None = "GET") -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.requests if r.path == path and (method is None or r.method == method)]

    def completed_bodies(self, path: str) -> int:
        """How many GETs of ``path`` were answered with the whole file (status 200, all bytes)."""
        return sum(1 for r in self._settled(path) if r.complete and r.status == 200)

    def bytes_served(self, path: str) -> int:
        return sum(r.bytes_sent for r in self._settled(path))

    def _settled(self, path: str, timeout: float = 10.0) -> list[RequestRecord]:
        """GETs of ``path``, after waiting (bounded) for handlers still finishing their bookkeeping."""
        records = self.requests_for(path)
        deadline = time.monotonic() + timeout
        for record in records:
            record.handled.wait(max(0.0, deadline - time.monotonic()))
        return records

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> FaultServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fault-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- internal
    def _next_fault(self, entry: _Entry) -> Fault:
        with self._lock:
            if not entry.faults:
                return Fault.ok()
            fault = entry.faults[0]
            if fault.times is None:
                return fault
            if fault.times <= 1:
                entry.faults.popleft()
            else:
                entry.faults[0] = replace(fault, times=fault.times - 1)
            return fault

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)


def _make_handler(server: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
            pass  # keep test output clean; the request log is server.requests

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            path = self.path.split("?", 1)[0]
            record = RequestRecord(self.command, path, dict(self.headers.items()), time.time())
            server._record(record)
            try:
                self._answer(record, path, head)
            finally:
                record.handled.set()

        def _answer(self, record: RequestRecord, path: str, head: bool) -> None:
            entry = server._entries.get(path)
            if entry is None:
                self._answer_status(record, 404)
                return
            fault = Fault.ok() if head else server._next_fault(entry)
            record.fault = fault.kind
            if fault.kind == "status":
                self._answer_status(record, fault.code)
                return
            size = len(entry.data)
            start, end = 0, size - 1
            status = 200
            match = _RANGE.match(self.headers.get("Range", "").strip())
            if match and (match.group(1) or match.group(2)):
                if match.group(1):
                    start = int(match.group(1))
                    end = int(match.group(2)) if match.group(2) else size - 1
                else:  # suffix range: the last N bytes
                    start = max(0, size - int(match.group(2)))
                end = min(end, size - 1)
                if start >= size or start > end:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    record.status = 416
                    return
                status = 206
            record.status, record.range = status, (start, end)
            self.send_response(status)
            self.send_header("Content-Type", entry.content_type)
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if head:
                record.complete = True
                return
            body = memoryview(entry.data)[start:end + 1]
            try:
                self._send_body(record, body, fault)
            except OSError:  # the client hung up (BrokenPipe, ConnectionReset, timeouts)
                self.close_connection = True

        def _send_body(self, record: RequestRecord, body: memoryview, fault: Fault) -> None:
            if fault.kind == "drop":
                self._write(record, body[:fault.after])
                self._abort()
                return
            if fault.kind == "stall":
                self._write(record, body[:fault.after])
                time.sleep(fault.seconds)
                self._abort()
                return
            if fault.kind == "slow":
                step = max(1, int(fault.rate / 20))
                for i in range(0, len(body), step):
                    self._write(record, body[i:i + step])
                    time.sleep(step / fault.rate)
            else:
                for i in range(0, len(body), _CHUNK):
                    self._write(record, body[i:i + _CHUNK])
            record.complete = record.bytes_sent == len(body)

        def _write(self, record: RequestRecord, chunk: memoryview) -> None:
            self.wfile.write(chunk)
            self.wfile.flush()
            record.bytes_sent += len(chunk)

        def _abort(self) -> None:
            """Close the connection abruptly, mid-body."""
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

        def _answer_status(self, record: RequestRecord, code: int) -> None:
            body = f"{code} injected by the test server\n".encode()
            record.status = code
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            if code in (429, 503):
                self.send_header("Retry-After", "1")
            self.end_headers()
            if self.command != "HEAD":
                with contextlib.suppress(OSError):
                    self.wfile.write(body)
                    record.bytes_sent = len(body)

    return Handler
