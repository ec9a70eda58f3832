"""A loopback reverse proxy: an HTTP(S) front for a plain-HTTP server under test.

Debian's Orthanc 1.10 crashes on its first TLS connection (its web server and OpenSSL 3
disagree), so HTTPS tests put this TLS front, with a certificate of the test PKI, before a
plain Orthanc. With ``static`` it also serves a folder (a built web viewer), forwarding only
the paths under ``forward`` and answering unknown paths with ``index.html``, so a browser sees
one origin. Answers are forwarded as they are, with ``rewrite`` applied to their bodies.
"""

from __future__ import annotations

import http.client
import mimetypes
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host"}
# Asked of the upstream uncompressed, so that answers can be rewritten.
_NOT_FORWARDED = _HOP_BY_HOP | {"accept-encoding"}


class _Handler(BaseHTTPRequestHandler):
    server: _ProxyServer

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests assert on outcomes, not on access logs."""

    def _any(self) -> None:
        proxy = self.server
        path = self.path.split("?", 1)[0]
        if proxy.static is None or path.startswith(proxy.forward):
            self._forward()
        else:
            self._serve(path)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

    def _forward(self) -> None:
        proxy = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_FORWARDED}
        connection = http.client.HTTPConnection(
            proxy.upstream_host, proxy.upstream_port, timeout=60
        )
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            for old, new in proxy.rewrite:
                payload = payload.replace(old, new)
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP | {"content-length"}:
                    self.send_header(key, value)
        finally:
            connection.close()
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _serve(self, path: str) -> None:
        root = self.server.static
        assert root is not None
        target = (root / path.lstrip("/")).resolve()
        if not target.is_file() or root.resolve() not in target.parents:
            target = root / "index.html"
        payload = self.server.overrides.get(path) or target.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", mimetypes.guess_type(target.name)[0] or "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    upstream_host: str
    upstream_port: int
    static: Path | None
    forward: str
    rewrite: list[tuple[bytes, bytes]]
    overrides: dict[str, bytes]


@contextmanager
def reverse_proxy(
    upstream: str,
    *,
    certificate: tuple[Path, Path] | None = None,
    static: Path | None = None,
    forward: str = "/",
    rewrite_upstream: bool = False,
    overrides: Callable[[str], dict[str, bytes]] | None = None,
) -> Iterator[str]:
    """Run the proxy on a free loopback port for a block; yields its base URL.

    ``certificate`` (PEM certificate, key) makes it HTTPS. ``rewrite_upstream`` replaces
    the upstream's own base URL in answers with the proxy's (DICOMweb answers carry
    absolute retrieve URLs). ``overrides`` maps the proxy's base URL to static paths
    answered with given bytes instead of the folder's file (a viewer's configuration).
    """
    parts = urlsplit(upstream)
    server = _ProxyServer(("127.0.0.1", 0), _Handler)
    server.upstream_host, server.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
    server.static, server.forward, server.rewrite, server.overrides = static, forward, [], {}
    scheme = "http"
    if certificate is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(certificate[0]), str(certificate[1]))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    host = "localhost" if certificate is not None else "127.0.0.1"
    base = f"{scheme}://{host}:{server.server_address[1]}"
    if overrides is not None:
        server.overrides = overrides(base)
    if rewrite_upstream:
        server.rewrite.append((upstream.rstrip("/").encode(), base.encode()))
    thread = threading.Thread(target=server.serve_forever, name="test-proxy", daemon=True)
    thread.start()
    try:
        yield base
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
