"""Tests of the fault-injecting proxy itself, against a local echo server.

Why: the replication tests trust the proxy to produce exactly the fault they
ask for; a proxy that silently passed traffic during a "cut" would make every
partition test vacuous.  Every wait here is bounded; the file runs in seconds.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import List, Tuple

import pytest

from conftest import poll_until
from faultproxy import FaultProxy

#: How long a read waits before we conclude "nothing arrives".
QUIET = 0.3
#: Bound on any read that is expected to succeed.
TIMEOUT = 3.0


class EchoServer:
    """A threaded echo server on 127.0.0.1:0 that records what it received.

    Recording lets a test tell "dropped on the way in" from "dropped on the
    way back"; ``conns`` lets it push bytes from the server side.
    """

    def __init__(self, echo: bool = True, read: bool = True):
        self.echo = echo
        self.read = read
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.address: Tuple[str, int] = self.listener.getsockname()
        self.conns: List[socket.socket] = []
        self.received = bytearray()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: List[threading.Thread] = []
        accept = threading.Thread(target=self._accept_loop, daemon=True)
        accept.start()
        self.threads.append(accept)

    @property
    def accepted(self) -> int:
        with self.lock:
            return len(self.conns)

    def got(self) -> bytes:
        with self.lock:
            return bytes(self.received)

    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(0.1)
            with self.lock:
                self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        while not self.stopping.is_set():
            if not self.read:
                time.sleep(0.05)
                continue
            try:
                data = conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            with self.lock:
                self.received += data
            if self.echo:
                try:
                    conn.sendall(data)
                except OSError:
                    return

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()
        for t in self.threads:
            t.join(2.0)
        for c in self.conns:
            c.close()


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer):
    with FaultProxy(echo.address) as p:
        yield p


def connect(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection(proxy.address, timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exact(sock: socket.socket, n: int, timeout: float = TIMEOUT) -> bytes:
    sock.settimeout(timeout)
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, f"connection closed after {buf!r}"
        buf += chunk
    return buf


def assert_silent(sock: socket.socket, what: str) -> None:
    """Nothing arrives for QUIET seconds, and the connection is still open."""
    sock.settimeout(QUIET)
    try:
        data = sock.recv(65536)
    except socket.timeout:
        return
    raise AssertionError(f"{what}: expected silence, got {data!r}"
                         + (" (connection closed)" if not data else ""))


def assert_closed(sock: socket.socket, timeout: float = TIMEOUT) -> None:
    """The peer closed (EOF) or reset the connection within ``timeout``."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
    except (ConnectionResetError, BrokenPipeError):
        return
    except socket.timeout:
        raise AssertionError("connection still open") from None
    assert data == b"", f"expected close, got {data!r}"


def assert_refused_at_once(proxy: FaultProxy) -> None:
    """A new connection is closed at once.

    The kernel completes the handshake before the proxy sees the connection,
    so the RST can arrive while ``connect()`` is still checking the socket
    (it then raises ECONNRESET) or just after it returned.
    """
    try:
        c = connect(proxy)
    except ConnectionResetError:
        return
    with c:
        assert_closed(c)


def round_trip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    return recv_exact(sock, len(payload))


def test_pass_through_echoes_and_counts(proxy: FaultProxy, echo: EchoServer):
    with connect(proxy) as c:
        assert round_trip(c, b"hello") == b"hello"
        big = bytes(range(256)) * 4096  # 1 MiB, several chunks
        c.sendall(big)
        assert recv_exact(c, len(big)) == big
    # The proxy counts a chunk once it is written, which may be just after the client read it.
    poll_until(lambda: proxy.stats().forwarded_backward == 5 + len(big), TIMEOUT, what="the forwarded counters")
    s = proxy.stats()
    assert s.accepted == 1 and s.refused == 0
    assert s.forwarded_forward == s.forwarded_backward == 5 + len(big)
    assert s.dropped == 0
    assert echo.got() == b"hello" + big
    assert proxy.endpoint == f"127.0.0.1:{proxy.port}"


def test_cut_black_holes_existing_and_new_connections(proxy: FaultProxy, echo: EchoServer):
    with connect(proxy) as c:
        assert round_trip(c, b"before") == b"before"
        proxy.cut()
        c.sendall(b"lost")
        assert_silent(c, "during a cut")
        assert echo.got() == b"before", "a cut let bytes through to the target"
        poll_until(lambda: proxy.stats().dropped_forward >= 4, TIMEOUT, what="the dropped counter")

        # A connection made during the cut is accepted but goes nowhere.
        with connect(proxy) as late:
            late.sendall(b"hello?")
            assert_silent(late, "a connection opened during a cut")
        assert echo.accepted == 1, "a connection opened during a cut reached the target"
        assert proxy.stats().accepted == 2

        proxy.heal()
        assert round_trip(c, b"again") == b"again"
        assert_silent(c, "after heal (the bytes sent during the cut must stay lost)")
        assert echo.got() == b"beforeagain"


def test_one_way_cut_forward_drops_only_client_to_target(proxy: FaultProxy, echo: EchoServer):
    with connect(proxy) as c:
        assert round_trip(c, b"x") == b"x"
        proxy.one_way_cut("forward")
        c.sendall(b"to-target")
        assert_silent(c, "forward cut")
        assert echo.got() == b"x"
        echo.conns[0].sendall(b"pushed")
        assert recv_exact(c, 6) == b"pushed", "a forward cut must not drop target->client"
        s = proxy.stats()
        assert s.dropped_forward == len(b"to-target") and s.dropped_backward == 0


def test_one_way_cut_backward_drops_only_target_to_client(proxy: FaultProxy, echo: EchoServer):
    with connect(proxy) as c:
        assert round_trip(c, b"x") == b"x"
        proxy.one_way_cut("backward")
        c.sendall(b"to-target")
        poll_until(lambda: echo.got() == b"xto-target", TIMEOUT, what="the target to get the bytes")
        assert_silent(c, "backward cut (the echo must be dropped)")
        echo.conns[0].sendall(b"pushed")
        assert_silent(c, "backward cut (a push must be dropped)")
        poll_until(lambda: proxy.stats().dropped_backward == len(b"to-target") + 6, TIMEOUT,
                   what="dropped_backward to count the echo and the push")
        assert proxy.stats().dropped_forward == 0
    with pytest.raises(ValueError):
        proxy.one_way_cut("sideways")


def test_reset_closes_connections_and_refuses_new_ones(proxy: FaultProxy, echo: EchoServer):
    with connect(proxy) as c:
        assert round_trip(c, b"x") == b"x"
        proxy.reset()
        assert_closed(c)
    for _ in range(3):
        assert_refused_at_once(proxy)
    assert echo.accepted == 1
    assert proxy.stats().refused == 3
    proxy.heal()
    with connect(proxy) as c:
        assert round_trip(c, b"back") == b"back"


def test_drop_connections_closes_once_and_keeps_accepting(proxy: FaultProxy, echo: EchoServer):
    with connect(proxy) as c:
        assert round_trip(c, b"x") == b"x"
        proxy.drop_connections()
        assert_closed(c)
    with connect(proxy) as c:
        assert round_trip(c, b"y") == b"y"
    assert proxy.stats().refused == 0


def test_delay_adds_latency_and_keeps_order(proxy: FaultProxy):
    with connect(proxy) as c:
        assert round_trip(c, b"warm") == b"warm"
        proxy.delay(200)
        start = time.monotonic()
        assert round_trip(c, b"slow") == b"slow"
        elapsed = time.monotonic() - start
        # 200 ms each way; assert only a lower bound (upper bounds flake on busy CI).
        assert elapsed >= 0.39, f"round trip took {elapsed * 1000:.0f} ms with delay(200)"
        # Order is kept across many small chunks sent back to back.
        parts = [b"<%03d>" % i for i in range(50)]
        for part in parts:
            c.sendall(part)
        assert recv_exact(c, 5 * len(parts)) == b"".join(parts)
        proxy.heal()
        assert round_trip(c, b"fast") == b"fast"


def test_stall_holds_bytes_without_losing_them(proxy: FaultProxy, echo: EchoServer):
    with connect(proxy) as c:
        assert round_trip(c, b"x") == b"x"
        proxy.stall()
        c.sendall(b"held")
        assert_silent(c, "stall")
        assert echo.got() == b"x"
        proxy.heal()
        assert recv_exact(c, 4) == b"held"
    assert proxy.stats().dropped == 0


def test_set_target_redirects_new_connections_only(proxy: FaultProxy, echo: EchoServer):
    other = EchoServer()
    try:
        with connect(proxy) as old:
            assert round_trip(old, b"one") == b"one"
            proxy.set_target(other.address)
            with connect(proxy) as new:
                assert round_trip(new, b"two") == b"two"
            assert round_trip(old, b"three") == b"three"
        assert echo.got() == b"onethree" and other.got() == b"two"
        with pytest.raises(ValueError):
            proxy.set_target(("10.0.0.1", 80))
    finally:
        other.close()


def test_target_down_resets_the_client(echo: EchoServer):
    # A port nobody listens on: bind, note it, close.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()
    s.close()
    with FaultProxy(dead) as proxy:
        assert_refused_at_once(proxy)
        assert proxy.stats().refused == 1
        proxy.set_target(echo.address)
        with connect(proxy) as c:
            assert round_trip(c, b"up") == b"up"


def test_buffers_are_bounded_when_the_target_does_not_read():
    sink = EchoServer(echo=False, read=False)
    cap = 256 * 1024
    try:
        with FaultProxy(sink.address, max_buffer=cap) as proxy:
            with connect(proxy) as c:
                c.setblocking(False)
                chunk = b"z" * 65536
                sent, limit = 0, 64 * 1024 * 1024
                last_progress = time.monotonic()
                while sent < limit and time.monotonic() - last_progress < 0.5:
                    try:
                        sent += c.send(chunk)
                        last_progress = time.monotonic()
                    except BlockingIOError:
                        time.sleep(0.01)
                s = proxy.stats()
                assert sent < limit, "the client was never blocked: the proxy buffers without bound"
                assert s.buffered_forward <= cap + 65536, s
    finally:
        sink.close()


def test_stop_closes_the_port_and_connections(echo: EchoServer):
    proxy = FaultProxy(echo.address).start()
    port = proxy.port
    thread = proxy._thread
    c = connect(proxy)
    try:
        assert round_trip(c, b"x") == b"x"
        proxy.stop()
        assert_closed(c)
    finally:
        c.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    # This proxy's own thread: other tests' proxies may still be running.
    assert thread is not None and not thread.is_alive()
    proxy.stop()  # idempotent
