"""Raw text-protocol behaviour on bad or unusual input, checked against the
exact replies memcached 1.6 gives (validated with TANDEM_SERVER=memcached)."""

from __future__ import annotations

import socket

import pytest

from conftest import ConnectionClosed


def read_until_version(raw, limit: int = 5):
    """Lines before the reply to a ``version`` sent after them (bounded)."""
    lines = []
    for _ in range(limit):
        line = raw.readline()
        if line.startswith(b"VERSION "):
            return lines
        lines.append(line)
    raise AssertionError(f"no VERSION reply within {limit} lines: {lines}")


def assert_closed(raw, what: str) -> None:
    try:
        data = raw.sock.recv(65536)
    except ConnectionResetError:
        return
    except socket.timeout:
        raise AssertionError(f"connection still open after {what}") from None
    # Allow one error line before the close.
    if data:
        assert data.startswith((b"CLIENT_ERROR", b"SERVER_ERROR", b"ERROR")), data[:200]
        try:
            more = raw.sock.recv(65536)
        except ConnectionResetError:
            return
        except socket.timeout:
            raise AssertionError(f"connection still open after {what} (sent {data!r})") from None
        assert more == b"", more[:200]


def test_unknown_command_and_empty_line(raw):
    assert raw.call(b"bogus") == b"ERROR"
    assert raw.call(b"") == b"ERROR"
    assert raw.call(b"GET x") == b"ERROR"  # commands are case-sensitive
    assert raw.call(b"get") == b"ERROR"
    assert raw.call(b"version").startswith(b"VERSION ")


def test_key_length_limit(raw):
    key250 = b"k" * 250
    assert raw.store(b"set", key250, b"v") == b"STORED"
    assert raw.get(key250)[key250].data == b"v"
    assert raw.call(b"get " + b"k" * 251) == b"CLIENT_ERROR bad command line format"
    assert raw.call(b"version").startswith(b"VERSION ")


def test_bad_command_line_format(raw):
    assert raw.call(b"set a 0 0 abc") == b"CLIENT_ERROR bad command line format"
    assert raw.call(b"set a 0 0 -1") == b"CLIENT_ERROR bad command line format"
    assert raw.call(b"version").startswith(b"VERSION ")


def test_bad_data_chunk(raw):
    assert raw.store(b"set", b"a", b"old") == b"STORED"
    # Declared 3 bytes, sent 5: the block is not followed by CRLF.
    raw.send(b"set a 0 0 3\r\nabcde\r\nversion\r\n")
    assert raw.readline() == b"CLIENT_ERROR bad data chunk"
    leftovers = read_until_version(raw)
    assert all(line == b"ERROR" for line in leftovers), leftovers
    got = raw.get(b"a")
    assert got[b"a"].data == b"old", "a rejected set changed the item"


def test_value_over_default_limit(raw):
    assert raw.store(b"set", b"big", b"x" * (1024 * 1024 + 1)) == b"SERVER_ERROR object too large for cache"
    assert raw.call(b"version").startswith(b"VERSION ")
    assert raw.get(b"big") == {}


def test_line_too_long_closes_connection(server, raw_factory):
    raw = raw_factory(server.address, timeout=5)
    raw.send(b"x" * 4096)  # no newline
    assert_closed(raw, "a 4096-byte line without newline")
    # The server itself is fine.
    assert raw_factory(server.address).call(b"version").startswith(b"VERSION ")


def test_client_vanishing_mid_command(server, raw_factory):
    half = raw_factory(server.address)
    half.send(b"set partial 0 0 100\r\n" + b"x" * 10)
    half.close()
    half2 = raw_factory(server.address)
    half2.send(b"get a b c")  # no newline
    half2.close()
    raw = raw_factory(server.address)
    assert raw.get(b"partial") == {}
    assert raw.store(b"set", b"ok", b"1") == b"STORED"


def test_byte_by_byte_and_one_packet(raw):
    script = (b"set k1 5 0 6\r\nab\r\ncd\r\n" b"get k1 nokey\r\n" b"append k1 0 0 2\r\n!!\r\n"
              b"gets k1\r\n" b"delete k1\r\n" b"get k1\r\n" b"incr nokey 1\r\n")
    expected_prefix = b"STORED\r\nVALUE k1 5 6\r\nab\r\ncd\r\nEND\r\nSTORED\r\nVALUE k1 5 8 "
    expected_suffix = b"\r\nab\r\ncd!!\r\nEND\r\nDELETED\r\nEND\r\nNOT_FOUND\r\n"
    for mode in ("bytes", "packet"):
        if mode == "bytes":
            for i in range(len(script)):
                raw.send(script[i:i + 1])
        else:
            raw.send(script)
        out = b""
        for _ in range(1000):
            if out.endswith(b"NOT_FOUND\r\n"):
                break
            out += raw.sock.recv(65536)
        assert out.startswith(expected_prefix) and out.endswith(expected_suffix), (mode, out)


def test_verbosity_and_quit(raw):
    assert raw.call(b"verbosity 1") == b"OK"
    raw.send(b"verbosity 0 noreply\r\n")
    assert raw.call(b"version").startswith(b"VERSION ")
    raw.send(b"quit\r\n")
    with pytest.raises((ConnectionClosed, ConnectionResetError)):
        raw.readline()
