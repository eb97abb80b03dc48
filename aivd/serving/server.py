"""`serve`: uvicorn with the limits a service facing untrusted clients needs.

uvicorn closes a connection that idles between requests (`timeout_keep_alive`), but not one that never finishes
sending a request: a slowloris client holding a thousand half-sent requests keeps a thousand sockets forever,
and once the process runs out of file descriptors nobody else can connect, `/healthz` included. So here:
- every request must arrive whole (head and body) within `request_read_timeout_s` of its connection opening or
  of the previous response, or the connection is closed;
- at most `max_connections` connections and requests are served at once (uvicorn's `limit_concurrency`; more
  are answered 503 at once);
- the process's soft open-file limit is raised towards the hard one, so that `max_connections` sockets fit.
With `tls_cert` and `tls_key` it serves HTTPS (uvicorn's ssl_certfile and ssl_keyfile).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from pathlib import Path

import uvicorn
from pydantic import BaseModel, ConfigDict, Field, model_validator
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)
SPARE_FILES = 256  # descriptors beyond the connections: models, logs, databases, uvicorn's own


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_read_timeout_s: float = Field(30.0, gt=0, description="seconds a client has to send one whole request")
    keep_alive_s: float = Field(5.0, gt=0, description="an idle kept-alive connection is closed after this many seconds")
    max_connections: int = Field(4096, ge=16, description="connections and requests at once; more are answered 503")
    tls_cert: Path | None = Field(None, description="PEM certificate (chain) to serve HTTPS with; needs tls_key")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")

    @model_validator(mode="after")
    def _both_or_neither(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("HTTPS needs both a certificate and its key")
        return self

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert is not None else "http"


class ReadDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection whose request has not fully arrived in time."""

    read_timeout_s: float = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm_deadline()

    def on_message_complete(self) -> None:
        self._disarm_deadline()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_deadline()  # the next request on this connection gets the same time

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_deadline()
        super().connection_lost(exc)

    def _arm_deadline(self) -> None:
        self._disarm_deadline()
        if not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.read_timeout_s, self._too_slow)

    def _disarm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def raise_open_file_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE to `wanted` (at most the hard limit); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def server_config(app, host: str, port: int, settings: ServerSettings, log_level: str = "info") -> uvicorn.Config:
    protocol = type("ReadDeadlineProtocol", (ReadDeadlineProtocol,), {"read_timeout_s": settings.request_read_timeout_s})
    return uvicorn.Config(
        app, host=host, port=port, http=protocol, log_level=log_level,
        # uvicorn annotates timeout_keep_alive as int but only hands it to loop.call_later, which takes float seconds.
        limit_concurrency=settings.max_connections, timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key,
    )


def serve(app, host: str, port: int, settings: ServerSettings = ServerSettings(), log_level: str = "info") -> None:
    """Run `app` until interrupted, as `uvicorn.run` would, with the limits above."""
    files = raise_open_file_limit(settings.max_connections + SPARE_FILES)
    if files < settings.max_connections + SPARE_FILES:
        log.warning("only %d open files allowed (hard limit); at most about %d connections will fit",
                    files, max(files - SPARE_FILES, 0))
    uvicorn.Server(server_config(app, host, port, settings, log_level)).run()
