"""Raw text-protocol behaviour on bad or unusual input, checked against the
exact replies memcached 1.6 gives (validated with TANDEM_SERVER=memcached)."""

from __future__ import annotations

import socket
import time

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


# --------------------------------------------------------------------------
# noreply, HTTP requests, long multigets, meta (issue 16 section 2), each
# checked against memcached 1.6.18 with TANDEM_SERVER=memcached.
# --------------------------------------------------------------------------


def read_until_closed(raw, what: str) -> bytes:
    """Everything the server sends until it closes (EOF or reset); fails if it
    stays open past the socket timeout."""
    data = bytes(raw.buf)
    raw.buf.clear()
    while True:
        try:
            chunk = raw.sock.recv(65536)
        except ConnectionResetError:
            return data
        except socket.timeout:
            raise AssertionError(f"connection still open after {what} (sent {data[:200]!r})") from None
        if not chunk:
            return data
        data += chunk


def test_noreply_errors_send_nothing(raw):
    """With noreply memcached sends no error either; the next command is
    answered normally, so its reply is the first line that comes."""
    assert raw.store(b"set", b"s", b"x") == b"STORED"
    silent = [
        b"delete k 10 noreply",              # delete with a hold time
        b"delete k x noreply",
        b"delete " + b"k" * 251 + b" noreply",  # key too long
        b"incr k x noreply",                 # bad delta
        b"decr k -1 noreply",
        b"touch k x noreply",                # bad exptime
        b"flush_all x noreply",
        b"set k 0 0 x noreply",              # bad length: no data block follows
        b"set k 0 0 -1 noreply",
        b"incr s 1 noreply",                 # not numeric
    ]
    for line in silent:
        assert raw.call(line + b"\r\nversion").startswith(b"VERSION "), line
    assert raw.get(b"s")[b"s"].data == b"x"


def test_noreply_value_too_large_sends_nothing(raw):
    big = b"x" * (1024 * 1024 + 1)
    assert raw.store(b"set", b"big", b"old") == b"STORED"
    raw.send(b"set big 0 0 %d noreply\r\n" % len(big) + big + b"\r\n")
    raw.send(b"append big 0 0 %d noreply\r\n" % len(big) + big + b"\r\n")
    assert raw.call(b"version").startswith(b"VERSION ")
    # As for any too-large set, the old value is gone.
    assert raw.get(b"big") == {}


def test_noreply_bad_data_chunk_sends_no_error(raw):
    # One byte declared, two sent: the error is silent; the misplaced CRLF
    # leaves a bare newline, which both servers read as an empty command line.
    raw.send(b"set k 0 0 1 noreply\r\naX\r\n" b"version\r\n")
    leftovers = read_until_version(raw)
    assert leftovers == [b"ERROR"], leftovers
    assert raw.get(b"k") == {}


def test_noreply_does_not_silence_unknown_commands(raw):
    # A wrong token count is no command at all: ERROR, whatever the last token.
    assert raw.call(b"delete k 0 x noreply") == b"ERROR"
    assert raw.call(b"bogus noreply") == b"ERROR"
    # noreply must be the last token.
    assert raw.call(b"delete k noreply 0").startswith(b"CLIENT_ERROR ")


@pytest.mark.parametrize("request_line", [
    b"GET / HTTP/1.0\r\n",
    b"PUT /a/b HTTP/1.1\r\n",
    b"DELETE HTTP/1.1\r\n",
    b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
])
def test_http_request_closes_with_nothing_sent(server, raw_factory, request_line):
    raw = raw_factory(server.address)
    raw.send(request_line)
    assert read_until_closed(raw, request_line) == b""
    # Only that connection: the server still answers others.
    assert raw_factory(server.address).call(b"version").startswith(b"VERSION ")


def test_lines_that_only_look_like_http_are_answered(raw):
    assert raw.call(b"get / HTTP/1.1") == b"END"        # a get, with two keys
    assert raw.call(b"GET / http/1.1") == b"ERROR"      # HTTP/ is case-sensitive
    assert raw.call(b"GET HTTP/1.1 x") == b"ERROR"      # only the last token counts
    assert raw.call(b"gfoo HTTP/1.1") == b"ERROR"       # words like memcached's own commands
    assert raw.call(b"version").startswith(b"VERSION ")


def test_multiget_of_18000_keys(raw):
    keys = [b"session:%d" % i for i in range(18000)]
    hits = keys[::1000]
    for i, key in enumerate(hits):
        assert raw.store(b"set", key, b"v%d" % i, flags=i) == b"STORED"
    line = b" ".join(keys)
    assert len(line) > 180_000
    for cmd in (b"get", b"gets"):
        got = raw.get(*keys, cmd=cmd)
        assert sorted(got) == sorted(hits), cmd
        assert all(got[key].data == b"v%d" % i and got[key].flags == i for i, key in enumerate(hits))
    assert raw.call(b"version").startswith(b"VERSION ")


@pytest.mark.tandemd_only  # memcached 1.6.18 closes on gat/gats lines over 2 KB
def test_gat_multiget_of_18000_keys(raw):
    keys = [b"session:%d" % i for i in range(18000)]
    for key in keys[::1000]:
        assert raw.store(b"set", key, b"v") == b"STORED"
    for cmd in (b"gat 100", b"gats 100"):
        assert sorted(raw.get(*keys, cmd=cmd)) == sorted(keys[::1000]), cmd
    assert raw.call(b"mg session:1000 t") == b"HD t100"


@pytest.mark.tandemd_only  # memcached bounds multigets by memory alone
def test_multiget_over_the_bound_is_answered(raw):
    assert raw.store(b"set", b"k", b"x") == b"STORED"
    # Tandem's bound is 4 MiB (Protocol.md 3.1): past it, CLIENT_ERROR and the
    # rest of the line is dropped; the connection stays in frame.
    keys = b"k " * (2 * 1024 * 1024 + 1000)
    raw.send(b"get " + keys + b"\r\n")
    assert raw.readline() == b"CLIENT_ERROR line too long"
    assert raw.get(b"k")[b"k"].data == b"x"


def meta_cas(raw, key: bytes) -> int:
    reply = raw.call(b"mg " + key + b" c")
    assert reply.startswith(b"HD c"), reply
    return int(reply.split()[1][1:])


def test_meta_set_that_stores_nothing_returns_c0(raw):
    stored = raw.call(b"ms k 1 c T100\r\na")
    cas = meta_cas(raw, b"k")
    assert stored == b"HD c%d" % cas
    assert raw.call(b"ms k 1 c C%d\r\nb" % (cas + 1)) == b"EX c0"
    assert raw.call(b"ms k 1 c C%d q\r\nb" % (cas + 1)) == b"EX c0"
    assert raw.call(b"ms k 1 c k O123 C%d\r\nb" % (cas + 1)) == b"EX c0 kk O123"
    assert raw.call(b"ms nokey 1 c C1\r\nb") == b"NF c0"
    assert raw.call(b"ms k 1 ME k c O1\r\nb") == b"NS kk c0 O1"
    assert raw.call(b"mg k v") == b"VA 1"
    assert raw.readline() == b"a"


def test_meta_set_invalidate_with_older_cas_keeps_item_stale(raw):
    assert raw.call(b"ms k 1 T100\r\na") == b"HD"
    old = meta_cas(raw, b"k")
    assert raw.call(b"md k I T30") == b"HD"
    assert raw.call(b"mg k t v") == b"VA 1 t30 X W"
    assert raw.readline() == b"a"
    # A late fill carrying the CAS from before the invalidation: stored, but
    # the item stays stale, keeps its TTL, and its token is not handed out again.
    assert raw.call(b"ms k 2 I C%d T999\r\nbb" % old) == b"HD"
    assert raw.call(b"mg k t v") == b"VA 2 t30 Z X"
    assert raw.readline() == b"bb"
    # A CAS newer than the item's is refused, I or not.
    assert raw.call(b"ms k 2 I C%d\r\ncc" % (meta_cas(raw, b"k") + 1)) == b"EX"
    # A plain set makes the item fresh again.
    assert raw.call(b"ms k 2 T50\r\ndd") == b"HD"
    assert raw.call(b"mg k t v") == b"VA 2 t50"
    assert raw.readline() == b"dd"


def test_stale_item_hands_out_its_win_token_once(raw):
    assert raw.call(b"ms k 1 T100\r\na") == b"HD"
    assert raw.call(b"md k I") == b"HD"
    # Reads that cannot tell a client it won do not use the token up.
    assert raw.get(b"k")[b"k"].data == b"a"
    assert raw.get(b"k", cmd=b"gets")[b"k"].data == b"a"
    assert raw.call(b"mg k") == b"HD X W"
    assert raw.call(b"mg k") == b"HD Z X"
    assert raw.call(b"mg k s") == b"HD s1 Z X"
    # Set again: fresh, no marks.
    assert raw.store(b"set", b"k", b"b") == b"STORED"
    assert raw.call(b"mg k") == b"HD"


def test_meta_opaque_and_key_limits(raw):
    # memcached bounds the O token at 32 bytes, its letter included.
    assert raw.call(b"mg k O" + b"o" * 31) == b"EN O" + b"o" * 31
    assert raw.call(b"mg k O" + b"o" * 32) == b"CLIENT_ERROR opaque token too long"
    assert raw.call(b"md k O" + b"o" * 32) == b"CLIENT_ERROR opaque token too long"
    assert raw.call(b"ms k 1 O" + b"o" * 32 + b"\r\nx") == b"CLIENT_ERROR opaque token too long"
    # Keys: 250 bytes.
    assert raw.call(b"mg " + b"k" * 250 + b" v") == b"EN"
    assert raw.call(b"mg " + b"k" * 251 + b" v") == b"CLIENT_ERROR bad command line format"
    assert raw.call(b"md " + b"k" * 251) == b"CLIENT_ERROR bad command line format"
    assert raw.call(b"ma " + b"k" * 251) == b"CLIENT_ERROR bad command line format"
    # Base64 keys: the token is bounded before decoding, 250 characters.
    assert raw.call(b"mg " + b"enp6" * 62 + b" b v") == b"EN"
    assert raw.call(b"mg " + b"enp6" * 63 + b" b v") == b"CLIENT_ERROR bad command line format"
    assert raw.call(b"mg !!!! b v") == b"CLIENT_ERROR error decoding key"
    assert raw.call(b"version").startswith(b"VERSION ")


def _resident_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_get_naming_a_large_value_many_times_is_built_as_the_client_reads(server, raw_factory):
    """One 1.5 KB line naming a 1 MB value 300 times asks for 300 MB of
    reply. The server sends all of it, but builds it part by part as the
    client reads: its memory does not grow by the reply's size while the
    client reads nothing (memcached sends from the item itself)."""
    value = b"v" * (1000 * 1024)
    repeats = 300
    raw = raw_factory(server.address, timeout=30)
    raw.send(b"set big 0 0 %d\r\n" % len(value) + value + b"\r\n")
    assert raw.readline() == b"STORED"
    before = _resident_mb(server.pid)
    raw.send(b"get" + b" big" * repeats + b"\r\n")
    # A bounded look at the server's memory while nothing is read (a window
    # to measure in, not a wait for something to happen).
    peak = before
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        peak = max(peak, _resident_mb(server.pid))
        time.sleep(0.02)
    assert peak - before < 120, f"resident memory grew {peak - before:.0f} MB for a reply of {repeats} MB not yet read"
    item = b"VALUE big 0 %d\r\n" % len(value) + value + b"\r\n"
    for index in range(repeats):
        assert raw.read_exact(len(item)) == item, f"value {index}"
    assert raw.readline() == b"END"
    raw.send(b"version\r\n")
    assert raw.readline().startswith(b"VERSION ")
