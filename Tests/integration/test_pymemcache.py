"""pymemcache (a real, widely used Python client) against the server.

Every call passes ``noreply`` explicitly or uses a client built with
``default_noreply=False``: pymemcache's own default is ``noreply=True`` for
storage commands, which would hide the server's answers.
"""

from __future__ import annotations

import os
import re
import time

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError, MemcacheServerError

MAX_U64 = 2**64 - 1


def make_client(server, **kwargs) -> Client:
    kwargs.setdefault("default_noreply", False)
    return Client(server.address, connect_timeout=5, timeout=5, **kwargs)


@pytest.fixture
def client(server):
    c = make_client(server)
    yield c
    c.close()


# --------------------------------------------------------------------------
# storage and retrieval
# --------------------------------------------------------------------------


def test_set_get_and_overwrite(client):
    assert client.get("missing") is None
    assert client.set("k1", b"hello", noreply=False) is True
    assert client.get("k1") == b"hello"
    assert client.set("k1", b"world!", noreply=False) is True
    assert client.get("k1") == b"world!"
    assert client.set("empty", b"", noreply=False) is True
    assert client.get("empty") == b""


def test_flags_round_trip(server, raw):
    for flags in (0, 1, 0xFFFF, 0x10000, 2**32 - 1):
        assert raw.store(b"set", b"f", b"v", flags=flags) == b"STORED"
        got = raw.get(b"f")
        assert got[b"f"].flags == flags and got[b"f"].data == b"v"


def test_get_many_with_many_keys(client):
    # 300 keys of 26 bytes: the single "get" line is ~8 KiB, longer than the
    # 2048-byte limit for other command lines; memcached accepts it.
    keys = [f"multiget:key:{i:013d}" for i in range(300)]
    values = {k: f"value-{i}-".encode() * (i % 7 + 1) for i, k in enumerate(keys)}
    assert client.set_many(values, noreply=False) == []
    missing = [f"multiget:missing:{i}" for i in range(20)]
    got = client.get_many(keys + missing)
    assert got == values

    # gets with many keys: every hit carries a cas token.
    got_cas = client.gets_many(keys[:50] + missing[:5])
    assert set(got_cas) == set(keys[:50])
    for k, (value, cas) in got_cas.items():
        assert value == values[k]
        assert int(cas) > 0


def test_add(client, raw):
    assert client.add("a", b"first", noreply=False) is True
    assert client.get("a") == b"first"
    before = raw.get(b"a", cmd=b"gets")[b"a"]

    # add on a live key: NOT_STORED, and value, flags and cas are untouched.
    assert client.add("a", b"second", noreply=False) is False
    after = raw.get(b"a", cmd=b"gets")[b"a"]
    assert (after.data, after.flags, after.cas) == (before.data, before.flags, before.cas)

    # After a delete, add works again.
    assert client.delete("a", noreply=False) is True
    assert client.add("a", b"third", noreply=False) is True
    assert client.get("a") == b"third"


def test_add_on_live_key_keeps_its_expiry(raw):
    """msm's existence check is ``add <id> 0 5 1``: it must not shorten the
    session's life.  An add with exptime -1 (already expired) would make the
    item vanish at once if the server applied the rejected add's expiry."""
    assert raw.store(b"set", b"session", b"payload", exptime=0) == b"STORED"
    assert raw.store(b"add", b"session", b"x", exptime=-1) == b"NOT_STORED"
    assert raw.store(b"add", b"session", b"x", exptime=5) == b"NOT_STORED"
    got = raw.get(b"session")
    assert b"session" in got, "add on a live key changed the item's expiry"
    assert got[b"session"].data == b"payload"


def test_replace(client):
    assert client.replace("r", b"nope", noreply=False) is False
    assert client.get("r") is None
    assert client.set("r", b"old", noreply=False) is True
    assert client.replace("r", b"new", noreply=False) is True
    assert client.get("r") == b"new"


def test_append_prepend(client):
    assert client.append("ap", b"x", noreply=False) is False
    assert client.prepend("ap", b"x", noreply=False) is False
    assert client.get("ap") is None
    assert client.set("ap", b"middle", noreply=False) is True
    assert client.append("ap", b">>", noreply=False) is True
    assert client.prepend("ap", b"<<", noreply=False) is True
    assert client.get("ap") == b"<<middle>>"


def test_cas(client):
    assert client.cas("c", b"v", 12345, noreply=False) is None  # NOT_FOUND
    assert client.set("c", b"v1", noreply=False) is True
    value, token = client.gets("c")
    assert value == b"v1"
    assert client.cas("c", b"v2", token, noreply=False) is True
    assert client.get("c") == b"v2"
    # The token is stale now: EXISTS, and the value stays.
    assert client.cas("c", b"v3", token, noreply=False) is False
    assert client.get("c") == b"v2"
    value, token2 = client.gets("c")
    assert value == b"v2" and token2 != token
    # Any other write also invalidates the token.
    assert client.set("c", b"v4", noreply=False) is True
    assert client.cas("c", b"v5", token2, noreply=False) is False
    assert client.get("c") == b"v4"


def test_delete(client):
    assert client.delete("d", noreply=False) is False
    assert client.set("d", b"x", noreply=False) is True
    assert client.delete("d", noreply=False) is True
    assert client.get("d") is None
    assert client.delete("d", noreply=False) is False


def test_incr_decr(client):
    assert client.incr("n", 1, noreply=False) is None  # NOT_FOUND
    assert client.decr("n", 1, noreply=False) is None
    assert client.set("n", b"10", noreply=False) is True
    assert client.incr("n", 5, noreply=False) == 15
    assert client.get("n") == b"15"
    assert client.decr("n", 3, noreply=False) == 12
    # decr floors at 0
    assert client.decr("n", 1000, noreply=False) == 0
    assert int(client.get("n")) == 0
    # growing in length
    assert client.set("n", b"99", noreply=False) is True
    assert client.incr("n", 1, noreply=False) == 100
    assert client.get("n") == b"100"
    # Shrinking: memcached rewrites in place and pads with spaces ("9 "),
    # so compare numerically.
    assert client.set("n", b"10", noreply=False) is True
    assert client.decr("n", 1, noreply=False) == 9
    assert client.get("n").rstrip(b" ") == b"9"


def test_incr_wraps_at_2_64(client):
    assert client.set("w", str(MAX_U64).encode(), noreply=False) is True
    assert client.incr("w", 1, noreply=False) == 0
    assert client.set("w", b"1", noreply=False) is True
    assert client.incr("w", MAX_U64, noreply=False) == 0
    assert client.set("w", b"5", noreply=False) is True
    assert client.incr("w", MAX_U64, noreply=False) == 4
    assert client.incr("w", MAX_U64 - 4, noreply=False) == MAX_U64
    assert int(client.get("w")) == MAX_U64


def test_incr_non_numeric_is_client_error(client):
    assert client.set("s", b"not a number", noreply=False) is True
    with pytest.raises(MemcacheClientError, match="cannot increment or decrement non-numeric value"):
        client.incr("s", 1, noreply=False)
    with pytest.raises(MemcacheClientError, match="cannot increment or decrement non-numeric value"):
        client.decr("s", 1, noreply=False)
    # The item is untouched and the connection still works.
    assert client.get("s") == b"not a number"


def test_incr_invalid_delta(raw):
    assert raw.store(b"set", b"n", b"1") == b"STORED"
    assert raw.call(b"incr n abc") == b"CLIENT_ERROR invalid numeric delta argument"
    assert raw.call(b"incr n -1") == b"CLIENT_ERROR invalid numeric delta argument"
    assert raw.call(b"incr n 18446744073709551616") == b"CLIENT_ERROR invalid numeric delta argument"
    assert raw.call(b"incr n 2") == b"3"


def test_touch(client, raw):
    assert client.touch("t", 100, noreply=False) is False
    assert client.set("t", b"v", expire=0, noreply=False) is True
    assert client.touch("t", 3600, noreply=False) is True
    assert client.get("t") == b"v"
    # Touch really sets the expiry: -1 means "already expired".
    assert raw.call(b"touch t -1") == b"TOUCHED"
    assert client.get("t") is None


def test_expiry(client, raw, poll):
    # negative: expired at once
    assert raw.store(b"set", b"neg", b"v", exptime=-1) == b"STORED"
    assert raw.get(b"neg") == {}
    # more than 30 days: an absolute unix time
    now = int(time.time())
    assert raw.store(b"set", b"abs_future", b"v", exptime=now + 3600) == b"STORED"
    assert raw.store(b"set", b"abs_past", b"v", exptime=now - 10) == b"STORED"
    got = raw.get(b"abs_future", b"abs_past")
    assert set(got) == {b"abs_future"}
    # relative: gone after about a second (memcached's clock ticks in whole seconds)
    start = time.monotonic()
    assert client.set("short", b"v", expire=1, noreply=False) is True
    assert client.set("long", b"v", expire=3600, noreply=False) is True
    poll(lambda: client.get("short") is None, timeout=4, what="'short' (ttl 1s) to expire")
    assert time.monotonic() - start <= 4
    assert client.get("long") == b"v"


def test_gat_gats(server, raw):
    assert raw.store(b"set", b"g", b"value", flags=42, exptime=0) == b"STORED"
    got = raw.get(b"g", b"nokey", cmd=b"gat 3600")
    assert set(got) == {b"g"} and got[b"g"].data == b"value" and got[b"g"].flags == 42

    cas = raw.get(b"g", cmd=b"gets")[b"g"].cas
    got = raw.get(b"g", cmd=b"gats 3600")
    assert got[b"g"].cas == cas and got[b"g"].data == b"value"

    assert raw.get(b"nokey", cmd=b"gat 10") == {}
    # gat returns the item and sets its new expiry (-1: already expired)
    got = raw.get(b"g", cmd=b"gat -1")
    assert got[b"g"].data == b"value"
    assert raw.get(b"g") == {}


def test_flush_all(client, raw):
    for i in range(20):
        assert client.set(f"fl{i}", b"v", noreply=False) is True
    assert client.flush_all(noreply=False) is True
    assert client.get_many([f"fl{i}" for i in range(20)]) == {}
    # The store keeps working after a flush.
    assert client.set("after", b"v", noreply=False) is True
    assert client.get("after") == b"v"
    # flush_all noreply: no reply line, and the items are gone.
    raw.send(b"flush_all noreply\r\n")
    assert raw.call(b"version").startswith(b"VERSION ")
    assert client.get("after") is None


def test_noreply_via_pymemcache(server):
    c = make_client(server, default_noreply=True)
    try:
        assert c.set("nr", b"1") is True
        assert c.add("nr", b"ignored") is True  # noreply: the client cannot know
        assert c.get("nr") == b"1"
        assert c.replace("nr", b"2") is True
        assert c.append("nr", b"3") is True
        assert c.prepend("nr", b"0") is True
        assert c.get("nr") == b"023"
        assert c.incr("nr", 1, noreply=True) is None
        assert c.decr("nr", 4, noreply=True) is None
        assert c.get("nr").rstrip(b" ") == b"20"  # shrunk in place: "20 "
        assert c.touch("nr", 3600) is True
        assert c.delete("nr") is True
        assert c.get("nr") is None
        assert c.set("nr2", b"x") is True
        assert c.flush_all() is True
        assert c.get("nr2") is None
    finally:
        c.close()


def test_noreply_sends_nothing_back(raw):
    """After a burst of noreply commands (hits, misses and rejections), the
    very next reply line must be the answer to ``version``."""
    raw.send(
        b"set a 0 0 1 noreply\r\n1\r\n"
        b"add a 0 0 1 noreply\r\n2\r\n"  # NOT_STORED, suppressed
        b"add b 0 0 1 noreply\r\nb\r\n"
        b"replace a 0 0 1 noreply\r\n5\r\n"
        b"replace zz 0 0 1 noreply\r\n5\r\n"  # NOT_STORED, suppressed
        b"append a 0 0 1 noreply\r\n0\r\n"
        b"prepend a 0 0 1 noreply\r\n1\r\n"
        b"incr a 5 noreply\r\n"
        b"decr a 1 noreply\r\n"
        b"incr zz 1 noreply\r\n"  # NOT_FOUND, suppressed
        b"touch a 3600 noreply\r\n"
        b"touch zz 3600 noreply\r\n"
        b"delete b noreply\r\n"
        b"delete zz noreply\r\n"
        b"cas a 0 0 1 1 noreply\r\nx\r\n"  # EXISTS, suppressed
        b"version\r\n"
    )
    line = raw.readline()
    assert line.startswith(b"VERSION "), f"stray reply after noreply commands: {line!r}"
    got = raw.get(b"a", b"b")
    assert set(got) == {b"a"}
    assert got[b"a"].data.rstrip(b" ") == b"154"  # "150" + 5 - 1


@pytest.mark.parametrize("size", [0, 1, 256, 4096, 100_000, 1000 * 1000])
def test_binary_values(client, size):
    pattern = bytes(range(256)) + b"\r\nEND\r\nVALUE x 0 1\r\n\x00"
    value = (pattern * (size // len(pattern) + 1))[:size]
    assert client.set(f"bin{size}", value, noreply=False) is True
    assert client.get(f"bin{size}") == value
    if size >= 256:
        assert set(client.get(f"bin{size}")) == set(range(256))


def test_item_size_limit(server_factory, raw_factory):
    server = server_factory("-I", "2k")
    c = make_client(server)
    try:
        under = os.urandom(2048 - 256)  # leaves room for memcached's per-item header
        assert c.set("big", under, noreply=False) is True
        assert c.get("big") == under
        with pytest.raises(MemcacheServerError, match="object too large for cache"):
            c.set("big", os.urandom(2049), noreply=False)
        # memcached drops the old item when a set fails for size (no stale data).
        assert c.get("big") is None
    finally:
        c.close()

    # The rejected data block is consumed: the next command on the same
    # connection is parsed normally.
    raw = raw_factory(server.address)
    assert raw.store(b"set", b"ok", b"fine") == b"STORED"
    raw.send(b"set huge 0 0 4096\r\n" + b"\r\n" * 2048 + b"\r\nget ok\r\n")
    assert raw.readline() == b"SERVER_ERROR object too large for cache"
    got = raw.read_values()
    assert list(got) == [b"ok"] and got[b"ok"].data == b"fine"
    assert raw.get(b"huge") == {}


# --------------------------------------------------------------------------
# stats
# --------------------------------------------------------------------------

GENERAL_STATS = [
    b"pid", b"uptime", b"time", b"version", b"curr_connections", b"total_connections",
    b"cmd_get", b"cmd_set", b"cmd_touch", b"get_hits", b"get_misses", b"curr_items",
    b"total_items", b"bytes", b"limit_maxbytes", b"evictions", b"threads",
]


def test_version(client, raw):
    version = client.version()
    assert re.fullmatch(rb"\d+\.\d+\.\d+\S*", version), version
    assert client.stats()[b"version"] == version
    assert raw.call(b"version") == b"VERSION " + version


def test_stats_general(server_factory):
    server = server_factory("-m", "8", "-t", "2")
    c = make_client(server)
    try:
        asked = time.time()
        stats = c.stats()
        answered = time.time()
        missing = [k.decode() for k in GENERAL_STATS if k not in stats]
        assert not missing, f"missing stats: {missing}"
        for k in GENERAL_STATS:
            if k != b"version":
                assert isinstance(stats[k], int) and stats[k] >= 0, (k, stats[k])
        assert stats[b"pid"] == server.pid
        assert int(asked) - 1 <= stats[b"time"] <= int(answered) + 1, (stats[b"time"], asked, answered)
        assert 0 <= stats[b"uptime"] <= 120
        assert stats[b"limit_maxbytes"] == 8 * 1024 * 1024
        assert stats[b"threads"] == 2
        assert stats[b"curr_connections"] >= 1
        assert stats[b"total_connections"] >= stats[b"curr_connections"]
        assert stats[b"curr_items"] == 0 and stats[b"evictions"] == 0
    finally:
        c.close()


def test_stats_counters_move(server, client):
    before = client.stats()
    assert client.set("s1", b"x" * 100, noreply=False) is True
    assert client.set("s2", b"y" * 100, noreply=False) is True
    assert client.set("s1", b"z" * 100, noreply=False) is True  # overwrite: not a new item
    assert client.get_many(["s1", "s2", "nope"]) == {"s1": b"z" * 100, "s2": b"y" * 100}
    assert client.get("nope2") is None
    assert client.touch("s2", 100, noreply=False) is True
    assert client.touch("nope", 100, noreply=False) is False
    after = client.stats()

    def delta(name):
        return after[name] - before[name]

    assert delta(b"cmd_set") == 3
    assert delta(b"cmd_get") == 4  # counted per key
    assert delta(b"get_hits") == 2
    assert delta(b"get_misses") == 2
    assert delta(b"cmd_touch") == 2
    assert after[b"curr_items"] == 2
    assert delta(b"total_items") == 3
    assert after[b"bytes"] >= 200
    assert after[b"uptime"] >= before[b"uptime"]

    c2 = make_client(server)
    try:
        assert c2.get("s1") == b"z" * 100
        later = client.stats()
        assert later[b"total_connections"] == after[b"total_connections"] + 1
        assert later[b"curr_connections"] == after[b"curr_connections"] + 1
    finally:
        c2.close()

    assert client.delete("s1", noreply=False) is True
    assert client.stats()[b"curr_items"] == 1


def test_stats_settings(server_factory, raw_factory):
    server = server_factory("-m", "8", "-c", "64", "-I", "512k", "-t", "2")
    c = make_client(server)
    try:
        settings = c.stats("settings")
    finally:
        c.close()
    assert settings[b"maxbytes"] == 8 * 1024 * 1024
    assert settings[b"maxconns"] == 64
    assert settings[b"tcpport"] == server.port
    assert settings[b"item_size_max"] == 512 * 1024
    assert settings[b"num_threads"] == 2
    assert settings[b"evictions"] == b"on"
    # raw framing: every line is "STAT <name> <value>", then END
    lines = raw_factory(server.address).stats(b"settings")
    assert len(lines) >= 6

    server_m = server_factory("-M", "-I", "1m")
    c = make_client(server_m)
    try:
        settings = c.stats("settings")
    finally:
        c.close()
    assert settings[b"evictions"] == b"off"
    assert settings[b"item_size_max"] == 1024 * 1024


def test_stats_items_and_slabs(client, raw):
    # Empty store: well formed (possibly empty) replies.
    raw.stats(b"items")
    raw.stats(b"slabs")
    for i in range(50):
        assert client.set(f"it{i}", b"v" * (10 + 40 * i), noreply=False) is True

    items = raw.stats(b"items")
    assert items, "stats items is empty although items are stored"
    numbers = {}
    for name, value in items:
        m = re.fullmatch(rb"items:(\d+):(\w+)", name)
        assert m, f"malformed stats items name {name!r}"
        assert re.fullmatch(rb"\d+", value), (name, value)
        if m.group(2) == b"number":
            numbers[int(m.group(1))] = int(value)
    assert sum(numbers.values()) == 50

    slabs = dict(raw.stats(b"slabs"))
    for name in slabs:
        assert re.fullmatch(rb"(\d+:\w+|active_slabs|total_malloced)", name), f"malformed stats slabs name {name!r}"
    assert int(slabs[b"active_slabs"]) >= 1
    assert int(slabs[b"total_malloced"]) > 0
