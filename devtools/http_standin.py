"""The common part of the loopback stand-ins for cloud key services (``gcp_kms_standin``,
``azure_kv_standin``): a threaded HTTP(S) server on a free loopback port, JSON in and out, and a
log of the requests it served.

A stand-in is not the service: it answers the documented REST API for the few calls the
providers make, checks what the real service requires of those requests, and keeps its state
(keys, their states) in memory until it stops.
"""

from __future__ import annotations

import json
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from typing import Self

__all__ = ["HttpError", "Request", "StandIn", "json_body"]


class HttpError(Exception):
    """An error answer: status, JSON body, extra headers."""

    def __init__(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


@dataclass
class Request:
    """One request as served: what the tests check of it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    body: bytes
    status: int = 0
    operation: str = ""  # set by the stand-in: "encrypt", "unwrapkey", ...
    json: Any = field(default=None)


class StandIn:
    """Serves ``handle(request) -> (status, json body)`` on 127.0.0.1, in a daemon thread."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.log: list[Request] = []
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the stand-in is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def handle(self, request: Request) -> tuple[int, Any]:
        raise NotImplementedError

    def requests(self, operation: str | None = None) -> list[Request]:
        """The requests served (of one operation), oldest first."""
        with self.lock:
            return [r for r in self.log if operation is None or r.operation == operation]

    def reset_requests(self) -> None:
        with self.lock:
            self.log.clear()

    def start(self) -> Self:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: pytest shows the tests' own output

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Request(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                headers: dict[str, str] = {}
                try:
                    status, answer = standin.handle(request)
                except HttpError as exc:
                    status, answer, headers = exc.status, exc.body, exc.headers
                request.status = status
                with standin.lock:
                    standin.log.append(request)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        if self.ssl_context is not None:
            server.socket = self.ssl_context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def json_body(request: Request, error: HttpError) -> dict[str, Any]:
    """The request's JSON object body, or ``error``."""
    try:
        doc = json.loads(request.body or b"null")
    except ValueError:
        raise error from None
    if not isinstance(doc, dict):
        raise error
    request.json = doc
    return doc
