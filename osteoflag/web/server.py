"""The web server's lifecycle: uvicorn on a thread of the daemon, on a socket bound up front.

Binding the socket ourselves (rather than letting uvicorn do it) makes a port clash an
ordinary error in ``Daemon.start`` instead of a ``SystemExit`` inside a thread, and tells
us the real port when the config asked for port 0.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Final

import uvicorn
from starlette.types import ASGIApp

from osteoflag.config import WebSettings
from osteoflag.errors import ConfigError, OsteoflagError

logger = logging.getLogger(__name__)

START_TIMEOUT_SECONDS: Final = 30.0


class WebServer:
    """Serve one ASGI app on ``[web] host:port`` until :meth:`stop`."""

    def __init__(self, app: ASGIApp, settings: WebSettings) -> None:
        self._app = app
        self._settings = settings
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when the config asked for port 0)."""
        if self._socket is None:
            return self._settings.port
        return int(self._socket.getsockname()[1])

    @property
    def running(self) -> bool:
        """True while the server thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _bind(self) -> socket.socket:
        host, port = self._settings.host, self._settings.port
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"web: cannot listen on web.host {host} port {port}: {exc}") from exc
        return sock

    def start(self) -> None:
        """Bind, start uvicorn on a thread and wait until it accepts connections."""
        if self._thread is not None:
            raise RuntimeError("web server already started")
        self._socket = self._bind()
        config = uvicorn.Config(
            self._app,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        sockets = [self._socket]
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": sockets}, name="osteoflag-web", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OsteoflagError(f"web: server on port {self.port} did not start")
            self._thread.join(0.02)
        logger.info(
            "web page listening",
            extra={"action": "web_listen", "host": self._settings.host, "port": self.port},
        )

    def stop(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Stop accepting, let in-flight requests finish (5 s at most), join the thread."""
        server, thread, sock = self._server, self._thread, self._socket
        self._server = self._thread = self._socket = None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if sock is not None:
            sock.close()
