"""Process lifecycle and connection limits.

Tests marked ``tandemd_only`` state tandemd's own contract (its log line, exit
status 0 on SIGTERM/SIGINT even with busy clients); they are deselected when
the suite runs against memcached.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from typing import List, Optional, Tuple

import pytest

from conftest import ConnectionClosed, RawClient

#: How long a server may take to exit after SIGTERM/SIGINT with clients attached.
EXIT_TIMEOUT = 10.0


def open_connection(address) -> Tuple[Optional[RawClient], str]:
    """Open a connection and ask for the version.

    Returns ``(client, "served")`` if the server serves it, ``(None, how)`` if
    it rejected it (refused, closed, reset, or the memcached error line).
    Anything else (silence, another reply) fails the test.
    """
    try:
        conn = RawClient(address, timeout=3.0)
    except ConnectionRefusedError:
        return None, "refused"
    try:
        conn.send(b"version\r\n")
        line = conn.readline()
    except (ConnectionClosed, ConnectionResetError, BrokenPipeError):
        conn.close()
        return None, "closed"
    except socket.timeout:
        conn.close()
        raise AssertionError("server neither served nor rejected a connection within 3s") from None
    if line.startswith(b"VERSION "):
        return conn, "served"
    if line == b"ERROR Too many open connections":
        # memcached then closes the connection.
        try:
            extra = conn.readline()
        except (ConnectionClosed, ConnectionResetError):
            conn.close()
            return None, "error line"
        except socket.timeout:
            conn.close()
            raise AssertionError("server sent 'ERROR Too many open connections' but kept the connection open") from None
        conn.close()
        raise AssertionError(f"unexpected line after the too-many-connections error: {extra!r}")
    conn.close()
    raise AssertionError(f"unexpected reply to version on a new connection: {line!r}")


def roundtrip(conn: RawClient, key: bytes) -> None:
    assert conn.store(b"set", key, b"still here") == b"STORED"
    assert conn.get(key)[key].data == b"still here"


def test_max_connections(server_factory, server_kind, poll):
    if server_kind == "tandemd":
        server = server_factory("-c", "5")
        expected: Optional[int] = 5
    else:
        # memcached cannot start with -c 5 (it counts listeners, pipes and
        # per-thread fds against the limit); with -c 20 -t 1 the number of
        # client connections it serves is measured instead.
        server = server_factory("-c", "20", "-t", "1")
        expected = None

    served: List[RawClient] = []
    rejection = None
    try:
        for _ in range(64):
            conn, how = open_connection(server.address)
            if conn is None:
                rejection = how
                break
            served.append(conn)
        assert rejection is not None, "no connection limit enforced after 64 connections"
        if expected is not None:
            assert len(served) == expected, f"served {len(served)} connections with -c {expected}"
        else:
            assert 1 < len(served) < 20, f"memcached -c 20 served {len(served)} connections"

        # Connections that were already open keep working.
        for i, conn in enumerate(served):
            roundtrip(conn, b"conn%d" % i)

        # Free a slot: a new connection is served once the server has noticed
        # the close (it may notice asynchronously, so poll).
        served.pop(0).close()

        def reconnect():
            conn, _how = open_connection(server.address)
            if conn is not None:
                served.append(conn)
                return True
            return False

        poll(reconnect, timeout=5, interval=0.05, what="a new connection after closing one")
        roundtrip(served[-1], b"reconnected")

        # And the limit still holds.
        conn, how = open_connection(server.address)
        if conn is not None:
            served.append(conn)
        assert conn is None, "connection over the limit was served after a reconnect"
        for i, c in enumerate(served):
            roundtrip(c, b"again%d" % i)
    finally:
        for conn in served:
            conn.close()


@pytest.mark.tandemd_only
def test_listening_line_reports_bound_port(server_factory, raw_factory):
    first = server_factory()
    second = server_factory("-l", "127.0.0.1")
    assert first.port > 0 and second.port > 0 and first.port != second.port
    for srv in (first, second):
        assert raw_factory(srv.address).call(b"version").startswith(b"VERSION ")
        assert f"listening on {srv.host}:{srv.port}" in srv.log()


PIPELINE_CHUNK = 1000
PIPELINE_MAX_CHUNKS = 500


def _pipelined_chunk(chunk: int) -> bytes:
    base = chunk * PIPELINE_CHUNK
    return b"".join(
        b"set pipe%d 0 0 8\r\nvalue%03d\r\nget pipe%d\r\n" % (i % 5000, i % 1000, i % 5000)
        for i in range(base, base + PIPELINE_CHUNK)
    )


def _check_reply_prefix(data: bytes) -> int:
    """The replies received are an in-order prefix of the expected replies.

    Returns the number of commands whose reply arrived completely.
    """
    count = data.count(b"END\r\n") + 1
    expected = b"".join(
        b"STORED\r\nVALUE pipe%d 0 8\r\nvalue%03d\r\nEND\r\n" % (i % 5000, i % 1000) for i in range(count)
    )
    if not expected.startswith(data):
        at = next(i for i, (a, b) in enumerate(zip(data, expected)) if a != b)
        raise AssertionError(f"replies diverge from the expected sequence at byte {at}: {data[at - 40:at + 40]!r}")
    return count - 1


@pytest.mark.tandemd_only
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_while_client_pipelines_exits_0(server_factory, signum):
    """The client keeps a pipeline of set+get going while the signal arrives."""
    server = server_factory()
    conn = RawClient(server.address, timeout=EXIT_TIMEOUT)
    idle = RawClient(server.address, timeout=EXIT_TIMEOUT)  # another client that just stays connected
    assert idle.call(b"version").startswith(b"VERSION ")

    stop = threading.Event()
    sent_chunks = []

    def sender():
        try:
            for chunk in range(PIPELINE_MAX_CHUNKS):
                if stop.is_set():
                    return
                conn.send(_pipelined_chunk(chunk))
                sent_chunks.append(chunk)
        except OSError:  # the server went away mid-stream: expected
            pass

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    received = bytearray()
    try:
        # Wait until the server is demonstrably working through the pipeline.
        deadline = time.monotonic() + EXIT_TIMEOUT
        while received.count(b"END\r\n") < 2 * PIPELINE_CHUNK:
            assert time.monotonic() < deadline, "server did not answer the pipelined requests"
            chunk = conn.sock.recv(65536)
            assert chunk, "server closed the connection before the signal"
            received += chunk
        assert thread.is_alive(), "the client finished sending before the signal; raise PIPELINE_MAX_CHUNKS"

        server.send_signal(signum)
        deadline = time.monotonic() + EXIT_TIMEOUT
        while time.monotonic() < deadline:
            try:
                chunk = conn.sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            received += chunk
        code = server.wait_exit(EXIT_TIMEOUT)
        assert code is not None, f"server still running {EXIT_TIMEOUT}s after {signum!r}\n{server.log()[-3000:]}"
        assert code == 0, f"server exited with {code} after {signum!r}\n{server.log()[-3000:]}"
        done = _check_reply_prefix(bytes(received))
        assert done >= 2 * PIPELINE_CHUNK
        # The idle connection is closed by the exit.
        with pytest.raises((ConnectionClosed, ConnectionResetError)):
            idle.readline()
    finally:
        stop.set()
        conn.close()
        idle.close()
        thread.join(timeout=EXIT_TIMEOUT)
    assert not thread.is_alive(), "sender thread still blocked after the server exited"


@pytest.mark.tandemd_only
def test_sigterm_idle_server_exits_0_quickly(server_factory):
    server = server_factory()
    started = time.monotonic()
    server.send_signal(signal.SIGTERM)
    code = server.wait_exit(EXIT_TIMEOUT)
    assert code == 0, f"exit code {code} after SIGTERM\n{server.log()[-3000:]}"
    assert time.monotonic() - started < 5
