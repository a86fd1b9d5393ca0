"""What one TCP connection may hold: a deadline for a request's head, one for its body, and a cap
on open connections.

uvicorn's h11 protocol waits for ever for a request that arrives a byte at a time (its keep-alive
timer runs only between requests), so a few hundred half-sent requests (slowloris) would hold the
server's sockets indefinitely. `GuardedH11Protocol` is that protocol with two deadlines: the head
(request line and headers) must arrive within `header_timeout` of the connection waiting for it,
and the body within `body_timeout` of the head; past either the connection is closed (a late body
gets a 408 first). A connection over `max_connections` is answered 503 and closed at once.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import socket
from dataclasses import dataclass

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from autarky.console import UserError

BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 37\r\n\r\nthe server has too many connections.\n"
)


@dataclass(frozen=True)
class Limits:
    header_timeout: float = 10.0  # seconds for a request line and headers
    body_timeout: float = 30.0  # seconds for a request body, once its headers are in
    max_connections: int = 512  # open connections; more are answered 503 and closed


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's head and body, and a connection cap."""

    def __init__(self, *args, limits: Limits, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._phase: str | None = None  # "head" or "body": what the connection waits for
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            transport.write(BUSY)
            transport.close()
            return
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_deadline(None)
        super().connection_lost(exc)

    def _watch(self) -> None:
        """Start the deadline of what the connection now waits for, when that has changed."""
        state = self.conn.their_state
        phase = "head" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if phase != self._phase:
            self._set_deadline(phase)

    def _set_deadline(self, phase: str | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase
        if phase is not None:
            seconds = self.limits.header_timeout if phase == "head" else self.limits.body_timeout
            self._deadline = self.loop.call_later(seconds, self._expire)

    def _expire(self) -> None:
        """Close a connection whose request is late; a late body's client is told so (408)."""
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self._phase == "body" and cycle is not None and not cycle.response_started:
            cycle.scope["state"]["timed_out"] = True  # the gate records a 408, not a vanished client
            try:
                headers = [(b"connection", b"close"), (b"content-length", b"0")]
                self.transport.write(self.conn.send(h11.Response(status_code=408, headers=headers)))
                self.transport.write(self.conn.send(h11.EndOfMessage()))
            except h11.LocalProtocolError:
                pass
        self.transport.close()


def server_config(app, host: str, port: int, limits: Limits) -> uvicorn.Config:
    """uvicorn's settings for the app: the guarded h11 protocol (never httptools), quiet logs."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        http=functools.partial(GuardedH11Protocol, limits=limits),
        ws="none",
    )


def check_port(host: str, port: int) -> None:
    """A port that cannot be listened on is one sentence naming it, before the model loads (uvicorn,
    finding it busy after, prints a trace)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise UserError(f"--host {host} is not an address this machine has ({e.strerror})") from e
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(
                    f"port {port} on {host} is in use (another server?); choose one with --port"
                ) from e
            raise UserError(
                f"cannot listen on {host} port {port} ({e.strerror}); choose --host or --port"
            ) from e
