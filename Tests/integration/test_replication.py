"""A primary/backup pair of real tandemd processes: replication, forwarding,
resyncs, a primary killed with SIGKILL under load, and bad wire frames."""

from __future__ import annotations

import hashlib
import signal
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from conftest import ConnectionClosed, RawClient, poll_until, send_then_shut
from nodes import Node, nodes  # noqa: F401  (nodes is a fixture)

pytestmark = pytest.mark.tandemd_only


def start_pair(nodes, tmp_path: Path, primary_args=(), backup_args=()) -> Tuple[Node, Node]:
    primary = nodes(tmp_path / "primary", "--node-name", "P", *primary_args)
    backup = nodes(tmp_path / "backup", "--role", "backup", "--peer", primary.wire_address,
                   "--node-name", "B", *backup_args)
    wait_in_sync(primary, backup)
    return primary, backup


def wait_in_sync(primary: Node, backup: Node, timeout: float = 30) -> None:
    def caught_up() -> bool:
        p, b = primary.stats(), backup.stats()
        return (b["link_state"] == "streaming" and p["link_state"] == "up"
                and p["peer_offset"] == p["replication_offset"] == b["replication_offset"])
    poll_until(caught_up, timeout, what="the backup to catch up with the primary")


def digest(node: Node, keys: List[bytes]) -> Tuple[int, str]:
    """(items present, sha256 over key, flags and value of every present key)."""
    h = hashlib.sha256()
    present = 0
    with node.client() as c:
        for start in range(0, len(keys), 200):
            values = c.get(*keys[start:start + 200])
            for key in keys[start:start + 200]:
                if key in values:
                    present += 1
                    h.update(b"%s %d %d\n" % (key, values[key].flags, len(values[key].data)) + values[key].data)
    return present, h.hexdigest()


def test_writes_flow_both_ways_with_matching_deadlines(nodes, tmp_path: Path):
    primary, backup = start_pair(nodes, tmp_path)
    now = int(time.time())
    with primary.client() as p, backup.client() as b:
        for i in range(300):
            assert p.store(b"set", b"p%d" % i, b"from-primary-%d" % i, flags=i, exptime=[0, 600, now + 3600][i % 3]) == b"STORED"
        # Sync replication: the backup already has every write the primary acknowledged.
        got = b.get(*[b"p%d" % i for i in range(300)])
        assert len(got) == 300 and got[b"p7"].data == b"from-primary-7" and got[b"p7"].flags == 7
        # Writes through the backup land on the primary, and the backup reads its own write at once.
        for i in range(100):
            assert b.store(b"set", b"b%d" % i, b"via-backup-%d" % i, exptime=900) == b"STORED"
            assert b.get(b"b%d" % i)[b"b%d" % i].data == b"via-backup-%d" % i
        assert b.call(b"delete p0") == b"DELETED"
        assert b.call(b"incr missing 1") == b"NOT_FOUND"
        assert b.store(b"add", b"p1", b"x") == b"NOT_STORED"
        assert len(p.get(*[b"b%d" % i for i in range(100)])) == 100
        assert not p.get(b"p0")
        # The same absolute deadlines on both nodes.
        for key in (b"p1", b"p2", b"b5"):
            # The two nodes answer at different moments; the TTLs may differ
            # by the seconds between the two answers and no more (±1: whole
            # seconds on both clocks).
            asked = time.time()
            p.send(b"mg %s t\r\n" % key)
            b.send(b"mg %s t\r\n" % key)
            tp, tb = int(p.readline().split(b"t")[-1]), int(b.readline().split(b"t")[-1])
            answered = time.time()
            assert abs(tp - tb) <= int(answered - asked) + 1, (key, tp, tb, answered - asked)
    ps, bs = primary.stats(), backup.stats()
    assert ps["role"] == "primary" and bs["role"] == "backup"
    assert ps["replication_id"] == bs["replication_id"]
    assert int(bs["forwarded_writes"]) >= 103 and int(ps["forwarded_writes"]) >= 103
    assert ps["replication_state"] == "sync" and ps["link_state"] == "up" and bs["link_state"] == "streaming"
    assert digest(primary, [b"p%d" % i for i in range(300)] + [b"b%d" % i for i in range(100)]) == \
        digest(backup, [b"p%d" % i for i in range(300)] + [b"b%d" % i for i in range(100)])


def test_primary_without_backup_answers_at_once_and_says_so(nodes, tmp_path: Path):
    primary = nodes(tmp_path / "primary")
    with primary.client() as c:
        assert c.store(b"set", b"k", b"v") == b"STORED"
    stats = primary.stats()
    assert stats["replication_state"] == "async_no_backup" and stats["link_state"] == "down"


def test_kill9_of_the_primary_loses_no_acknowledged_write(nodes, tmp_path: Path):
    """Writers store unique values to msm-shaped keys on a sync primary; the
    primary is SIGKILLed mid-load. Every write it acknowledged is on the backup."""
    primary, backup = start_pair(nodes, tmp_path)
    acked: Dict[bytes, int] = {}
    lock = threading.Lock()
    stop = threading.Event()
    counts = []

    def writer(worker: int) -> None:
        sent = 0
        try:
            with primary.client() as c:
                for generation in range(1_000_000):
                    if stop.is_set():
                        break
                    key = b"%032X-n1" % (worker * 1000 + generation % 50)
                    value = b"%d:%d:" % (worker, generation) + b"x" * 200
                    c.send(b"set %s 0 3600 %d\r\n%s\r\n" % (key, len(value), value))
                    if c.readline() != b"STORED":
                        break
                    sent += 1
                    with lock:
                        acked[key] = generation
        except (ConnectionClosed, ConnectionResetError, BrokenPipeError, socket.timeout, OSError):
            pass
        counts.append(sent)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    poll_until(lambda: sum(1 for _ in acked) >= 150 and len(acked) >= 150, 30, what="writes to be acknowledged")
    time.sleep(0.3)  # let the load run for a while before the kill (a load, not a synchronisation)
    primary.kill()
    stop.set()
    for t in threads:
        t.join(timeout=15)
    with lock:
        expected = dict(acked)
    missing = []
    with backup.client() as b:
        keys = list(expected)
        for start in range(0, len(keys), 100):
            got = b.get(*keys[start:start + 100])
            for key in keys[start:start + 100]:
                item = got.get(key)
                generation = int(item.data.split(b":")[1]) if item else -1
                if generation < expected[key]:
                    missing.append((key, expected[key], generation))
    total = sum(counts)
    print(f"kill -9 of a sync primary: {total} writes acknowledged over {len(expected)} keys, {len(missing)} missing on the backup")
    assert not missing, missing[:10]


def test_backup_restart_resumes_with_a_partial_resync(nodes, tmp_path: Path):
    primary, backup = start_pair(nodes, tmp_path)
    with primary.client() as c:
        for i in range(500):
            assert c.store(b"set", b"k%d" % i, b"a%d" % i) == b"STORED"
    wait_in_sync(primary, backup)
    before = primary.stats()
    assert backup.terminate() == 0
    with primary.client() as c:
        for i in range(500, 800):
            assert c.store(b"set", b"k%d" % i, b"b%d" % i) == b"STORED"
        assert c.call(b"delete k3") == b"DELETED"
    backup = nodes(tmp_path / "backup", "--role", "backup", "--peer", primary.wire_address, "--node-name", "B")
    wait_in_sync(primary, backup)
    after = primary.stats()
    assert int(after["partial_resyncs"]) == int(before["partial_resyncs"]) + 1
    assert after["full_resyncs"] == before["full_resyncs"], "a restarted backup within the backlog must not need a full copy"
    keys = [b"k%d" % i for i in range(800)]
    assert digest(primary, keys) == digest(backup, keys)
    assert digest(backup, keys)[0] == 799


def test_backlog_overflow_forces_a_full_resync_and_the_nodes_agree(nodes, tmp_path: Path):
    primary, backup = start_pair(nodes, tmp_path, primary_args=("--backlog-size", "1m"))
    with primary.client() as c:
        for i in range(100):
            assert c.store(b"set", b"k%d" % i, b"first") == b"STORED"
    wait_in_sync(primary, backup)
    before = primary.stats()
    assert backup.terminate() == 0
    with primary.client() as c:
        for i in range(3000):  # ~3 MB of changes: more than the 1 MB backlog
            assert c.store(b"set", b"k%d" % (i % 600), b"second-%d-" % i + b"y" * 1000, flags=i) == b"STORED"
        for i in range(0, 600, 7):
            assert c.call(b"delete k%d" % i) == b"DELETED"
    backup = nodes(tmp_path / "backup", "--role", "backup", "--peer", primary.wire_address, "--node-name", "B")
    wait_in_sync(primary, backup)
    after = primary.stats()
    assert int(after["full_resyncs"]) == int(before["full_resyncs"]) + 1
    keys = [b"k%d" % i for i in range(600)]
    p_digest, b_digest = digest(primary, keys), digest(backup, keys)
    assert p_digest == b_digest and p_digest[0] == 600 - len(range(0, 600, 7))
    assert primary.stats()["curr_items"] == backup.stats()["curr_items"]


def frame(msg_type: int, body: bytes, request_id: int = 1, flags: int = 0) -> bytes:
    return struct.pack(">IHHI", 8 + len(body), msg_type, flags, request_id) + body


def hello(version_min: int = 1, version_max: int = 1, magic: int = 0x544E444D) -> bytes:
    name = b"test"
    nonce = bytes(16)
    body = struct.pack(">IHHB", magic, version_min, version_max, 1) + struct.pack(">I", len(name)) + name \
        + struct.pack(">I", len(nonce)) + nonce + struct.pack(">Q", 0)  # epoch: a client's is 0
    return frame(0x0001, body)


def read_frame(sock: socket.socket) -> Tuple[int, bytes]:
    header = b""
    while len(header) < 12:
        chunk = sock.recv(12 - len(header))
        if not chunk:
            raise ConnectionClosed("closed")
        header += chunk
    length, msg_type, _flags, _rid = struct.unpack(">IHHI", header)
    body = b""
    while len(body) < length - 8:
        chunk = sock.recv(length - 8 - len(body))
        if not chunk:
            raise ConnectionClosed("closed")
        body += chunk
    return msg_type, body


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed the connection (it may send an error frame first)."""
    try:
        for _ in range(10):
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    return False


@pytest.mark.parametrize("bad", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                      # garbage
    struct.pack(">I", 0xFFFFFFF0) + b"\x00" * 8,               # length over the maximum
    struct.pack(">I", 3) + b"\x00" * 8,                        # length under the minimum
    "unknown-type",
    "wrong-version",
    "wrong-magic",
    "truncated",
])
def test_bad_wire_frames_close_only_that_connection(nodes, tmp_path: Path, bad):
    node = nodes(tmp_path / "data")
    good = socket.create_connection(("127.0.0.1", node.wire_port), timeout=5)
    good.sendall(hello())
    assert read_frame(good)[0] == 0x0002  # helloOK
    sock = socket.create_connection(("127.0.0.1", node.wire_port), timeout=5)
    if bad == "unknown-type":
        sock.sendall(hello())
        read_frame(sock)
        sock.sendall(frame(0x7777, b""))
    elif bad == "wrong-version":
        sock.sendall(hello(version_min=9, version_max=12))
    elif bad == "wrong-magic":
        sock.sendall(hello(magic=0x12345678))
    elif bad == "truncated":
        sock.sendall(hello()[:10])
        sock.shutdown(socket.SHUT_WR)
    else:
        sock.sendall(bad)
    assert closed_by_server(sock)
    sock.close()
    # The node and its other connections are unaffected.
    good.sendall(frame(0x0010, struct.pack(">q", 42), request_id=9))
    msg_type, body = read_frame(good)
    assert msg_type == 0x0011 and struct.unpack(">q", body)[0] == 42
    with node.client() as c:
        assert c.store(b"set", b"still", b"fine") == b"STORED"
    # The close can reach the client before the reason is logged (EOF closes first).
    poll_until(lambda: "closing wire connection" in node.log(), 5, what="the logged reason for the close")


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (T: stopped)."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def test_a_frozen_backup_degrades_sync_after_the_timeout_then_recovers(nodes, tmp_path: Path):
    """SIGSTOP the backup: the next write is answered after --sync-timeout (not
    lost, not refused), the primary runs degraded and stops waiting; the dead
    link is noticed within --link-timeout. After SIGCONT the backup reconnects,
    catches up, and writes wait for it again."""
    primary, backup = start_pair(nodes, tmp_path, primary_args=("--sync-timeout", "300", "--link-timeout", "1500"),
                                 backup_args=("--link-timeout", "1500"))
    backup.proc.send_signal(signal.SIGSTOP)
    poll_until(lambda: process_state(backup.proc.pid) == "T", 5, interval=0.005, what="the backup to stop")
    try:
        with primary.client() as c:
            started = time.monotonic()
            assert c.store(b"set", b"during-freeze", b"1") == b"STORED"
            first = time.monotonic() - started
            assert 0.25 <= first < 1.5, f"the first write took {first:.3f}s; expected about the 300 ms sync timeout; primary: {primary.stats()}"
            stats = primary.stats()
            assert stats["replication_state"] == "degraded_async" and int(stats["sync_timeouts"]) >= 1
            started = time.monotonic()
            for i in range(20):
                assert c.store(b"set", b"degraded%d" % i, b"x") == b"STORED"
            assert time.monotonic() - started < 1.0, "degraded writes must not wait for the frozen backup"
        poll_until(lambda: primary.stats()["link_state"] == "down", 5, what="the primary to notice the dead link")
    finally:
        backup.proc.send_signal(signal.SIGCONT)
    wait_in_sync(primary, backup)
    assert primary.stats()["replication_state"] == "sync"
    with backup.client() as b:
        assert len(b.get(b"during-freeze", *[b"degraded%d" % i for i in range(20)])) == 21
    assert "answering writes without waiting" in primary.log()
    assert "writes wait for its acknowledgement again" in primary.log()


def binary_request(opcode: int, key: bytes = b"", extras: bytes = b"", value: bytes = b"", opaque: int = 0) -> bytes:
    return struct.pack(">BBHBBHIIQ", 0x80, opcode, len(key), len(extras), 0, 0,
                       len(extras) + len(key) + len(value), opaque, 0) + extras + key + value


def binary_response(sock: socket.socket) -> Tuple[int, int, int, bytes]:
    """(opcode, status, opaque, value) of one binary response."""
    header = b""
    while len(header) < 24:
        chunk = sock.recv(24 - len(header))
        assert chunk, "connection closed"
        header += chunk
    _magic, opcode, key_len, extras_len, _dt, status, body_len, opaque, _cas = struct.unpack(">BBHBBHIIQ", header)
    body = b""
    while len(body) < body_len:
        body += sock.recv(body_len - len(body))
    return opcode, status, opaque, body[extras_len + key_len:]


def test_binary_writes_through_the_backup_land_on_the_primary(nodes, tmp_path: Path):
    primary, backup = start_pair(nodes, tmp_path)
    sock = socket.create_connection(("127.0.0.1", backup.port), timeout=10)
    sock.sendall(binary_request(0x01, b"bin-key", struct.pack(">II", 7, 600), b"binary value", opaque=41))  # SET
    assert binary_response(sock)[:3] == (0x01, 0, 41)
    sock.sendall(binary_request(0x00, b"bin-key", opaque=42))  # GET on the backup: its own write
    assert binary_response(sock) == (0x00, 0, 42, b"binary value")
    sock.sendall(binary_request(0x02, b"bin-key", struct.pack(">II", 0, 5), b"x", opaque=43))  # ADD on a live key
    assert binary_response(sock)[:3] == (0x02, 0x0002, 43)  # exists
    sock.close()
    with primary.client() as p:
        got = p.get(b"bin-key")[b"bin-key"]
        assert got.data == b"binary value" and got.flags == 7


def test_a_client_that_shuts_its_side_gets_every_reply_from_either_node(nodes, tmp_path: Path):
    """A client may send its requests and shut its side of the connection
    before reading (as `printf ... | nc -N` does): memcached answers them all,
    and so does each node of a sync pair, although the primary's reply waits
    for the backup and the backup's for the primary after the end of input
    was read. Before, the connection closed at the end of input and the
    replies were lost."""
    primary, backup = start_pair(nodes, tmp_path)
    for name, node in (("primary", primary), ("backup", backup)):
        for i in range(10):
            key = b"shut-%s-%d" % (name.encode(), i)
            got = send_then_shut(node.address, b"set %s 0 0 5\r\nhello\r\nget %s\r\n" % (key, key))
            assert got == b"STORED\r\nVALUE %s 0 5\r\nhello\r\nEND\r\n" % key, (name, got)
    # An idle client that shuts its side is closed at once, with nothing sent.
    assert send_then_shut(primary.address, b"") == b""
