"""Running the server: `distren serve` (uvicorn on HOST:PORT) and the embedded private server
that `distren render` starts in its own process (on a Unix socket in a private folder)."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import tempfile
import threading
import time
from pathlib import Path

import h11
import httpx
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..client import Client
from ..errors import DistrenError
from .app import create_app
from .config import ServerConfig, parse_listen  # noqa: F401 (parse_listen: here before)

# Limits of the HTTP layer (uvicorn alone keeps stalled connections and huge headers).
MAX_HEADER_BYTES = 16 * 1024
KEEP_ALIVE_SECONDS = 5
MAX_CONNECTIONS = 1000


try:
    from h11._receivebuffer import ReceiveBuffer as _H11ReceiveBuffer
except ImportError:   # another h11: its own buffer
    _H11ReceiveBuffer = None


if _H11ReceiveBuffer is not None:
    class BodyReceiveBuffer(_H11ReceiveBuffer):
        """h11's receive buffer, two copies fewer for request bodies. h11 0.16 copies every
        piece of a body three times in Python (appended; sliced once to see whether anything is
        there and once more to take it); on this project's machine a 1 GB upload spent 1.1 s of
        the event loop's 2 s in those copies. Here taking all that is buffered hands the
        buffer over instead of copying it. Same answers, same state."""

        def maybe_extract_at_most(self, count: int):
            if count <= 0:
                return super().maybe_extract_at_most(count)
            if not self._data:
                return None
            return self._extract(count)

        def _extract(self, count: int) -> bytearray:
            if count >= len(self._data):
                out, self._data = self._data, bytearray()
            else:
                out = self._data[:count]
                del self._data[:count]
            self._next_line_search = 0
            self._multiple_lines_search = 0
            return out
else:
    BodyReceiveBuffer = None


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the request head: a client that connects and
    sends nothing, or sends headers slower than `head_timeout` seconds (slow-loris), is cut
    off. (uvicorn itself waits for ever; its keep-alive timer only runs between requests.)
    Its connection's receive buffer is `BodyReceiveBuffer` (fewer copies of request bodies)."""

    head_timeout = 10.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        buffer = getattr(self.conn, "_receive_buffer", None)
        if BodyReceiveBuffer is not None and type(buffer) is _H11ReceiveBuffer and not buffer:
            self.conn._receive_buffer = BodyReceiveBuffer()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        no_delay(transport.get_extra_info("socket"))
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_expired)

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self.conn.their_state is h11.IDLE:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_expired)
        super().data_received(data)
        if self._head_timer is not None and self.conn.their_state is not h11.IDLE:
            self._head_timer.cancel()  # the head is complete
            self._head_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """uvicorn's, and an idle connection over TLS is dropped, not closed: TLS's close waits
        for the client's close_notify, which a client idle on a kept-alive connection does not
        send (it is not reading), and asyncio waits 30 s for it: the server took that long to
        stop. Between requests nothing is lost by not waiting."""
        idle = self.cycle is None or self.cycle.response_complete
        super().shutdown()
        if idle and self.transport.get_extra_info("sslcontext") is not None:
            self.transport.abort()

    def _head_expired(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def no_delay(sock) -> None:
    """Nagle's algorithm off on a TCP connection: an answer is written as its head and then
    its body, and with Nagle on the body waits for the ACK of the head, which the client
    delays (40 ms on Linux) on a kept-alive connection. asyncio does this itself, but only
    for sockets made with proto IPPROTO_TCP; whatever made the listening socket, every
    connection gets it here."""
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def guarded_protocol(head_timeout: float) -> type[GuardedH11Protocol]:
    return type("GuardedH11", (GuardedH11Protocol,), {"head_timeout": head_timeout})


class DistrenServer(uvicorn.Server):
    """uvicorn's server, which first ends the event streams when it stops: uvicorn waits for
    open responses to finish, and a stream of events never does."""

    async def shutdown(self, sockets=None) -> None:
        events = getattr(getattr(self.config.app, "state", None), "events", None)
        if events is not None:
            events.close()
        await super().shutdown(sockets)


def uvicorn_config(app, head_timeout: float = 10.0, **kw) -> uvicorn.Config:
    kw.setdefault("access_log", False)
    return uvicorn.Config(
        app,
        log_level="warning",
        # h11 (the header-size cap below is h11's; httptools would ignore it), with a deadline
        # for request heads
        http=guarded_protocol(head_timeout),
        lifespan="on",
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        limit_concurrency=MAX_CONNECTIONS,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        **kw,
    )


def serve(config: ServerConfig) -> None:
    """Run the server until it is stopped. What keeps it from starting (a data folder it may not
    use, a database it cannot open, a port it cannot listen on, a missing secret, TLS files that
    do not load) is raised as one DistrenError before anything starts."""
    from .. import logs, tls
    from .app import load_token
    from .core import check_database, prepare_data_folder
    from ..federation.auth import load_secret

    host, port = parse_listen(config.listen)
    prepare_data_folder(Path(config.data))
    check_database(Path(config.data))
    load_token(config.client_token_file)
    if config.federation_secret_file is not None:
        load_secret(config.federation_secret_file)
    elif config.peers:
        raise DistrenError("--peer needs --federation-secret-file")
    ssl_settings = tls.server_ssl(config.tls_cert, config.tls_key)
    tls.client_verify(config.ca_file)   # a CA file that cannot be used: refused now, not at the first peer
    if config.slurm:
        from .slurm import check_slurm, default_url

        url = config.slurm_url or default_url(host, port, tls=bool(ssl_settings))
        config = config.model_copy(update={"slurm_url": url.rstrip("/")})
        check_slurm(config)
    sock = listen_socket(host, port)
    # uvicorn's loggers go through distren's handler (log_config=None), in its format
    server = DistrenServer(uvicorn_config(create_app(config), config.header_timeout, host=host, port=port,
                                          log_config=None, access_log=config.access_log, **ssl_settings))
    logs.configure(config.log_format, config.access_log)
    scheme = "https" if ssl_settings else "http"
    logging.getLogger("distren.server").info("server %s listening on %s://%s:%d", config.name, scheme, host, port)
    try:
        server.run(sockets=[sock])
    except SystemExit:
        # uvicorn exits when the app's start-up fails; it has logged why
        raise DistrenError(f"server {config.name} did not start: the error is logged above") from None
    finally:
        sock.close()
    if not server.started:
        raise DistrenError(f"server {config.name} did not start: the error is logged above")


def listen_socket(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound before anything starts: a port that is taken or an
    address this machine does not have is one line, not a failed start-up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        # IPPROTO_TCP named: asyncio turns Nagle's algorithm off only on sockets whose proto
        # says TCP (an accepted socket inherits it; with 0 every answer on a kept-alive
        # connection waited some 40 ms for the client's delayed ACK)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except OSError as exc:
        raise DistrenError(f"--listen {host}:{port}: cannot make a socket: {exc.strerror}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = "the port is taken (another server listens on it)" if exc.errno == errno.EADDRINUSE \
            else exc.strerror or str(exc)
        raise DistrenError(f"cannot listen on {host}:{port}: {reason}") from None
    except OverflowError as exc:
        sock.close()
        raise DistrenError(f"cannot listen on {host}:{port}: {exc}") from None
    sock.set_inheritable(True)
    return sock


class EmbeddedServer:
    """A private server in this process: temporary data folder, a Unix socket only this
    process knows. Use as a context manager; `client` talks to it."""

    def __init__(self, slots: int, name: str = "local", **settings):
        self._tmp = tempfile.TemporaryDirectory(prefix="distren-render-")
        root = Path(self._tmp.name)
        # the private server takes one package: no intake worker process to start
        settings.setdefault("intake_processes", 0)
        settings.setdefault("output_processes", 0)
        # its one package is taken whatever the free space (no reserve for other users' jobs)
        settings.setdefault("min_free_bytes", 0)
        self.config = ServerConfig(name=name, data=root / "data", slots=slots, **settings)
        self.socket = str(root / "server.sock")
        self._server = DistrenServer(uvicorn_config(create_app(self.config), uds=self.socket))
        self._thread = threading.Thread(target=self._server.run, name="distren-embedded", daemon=True)
        self.client: Client | None = None

    def start(self) -> "EmbeddedServer":
        """Start serving in its thread and return at once (`with` waits until it answers)."""
        if self._thread.ident is None:   # never started
            self._thread.start()
        return self

    def wait(self) -> "EmbeddedServer":
        """Wait until it answers (started by `start`); then `client` talks to it."""
        self.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise DistrenError("the embedded server did not start")
            time.sleep(0.01)
        if self.client is None:
            self.client = Client("http://distren", transport=httpx.HTTPTransport(uds=self.socket))
        return self

    def __enter__(self) -> "EmbeddedServer":
        return self.wait()

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.close()
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._tmp.cleanup()
