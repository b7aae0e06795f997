"""Sessions survive restarts: process-level tests of tandemd's SQLite write-behind.

Real processes stopped with real signals (SIGTERM, SIGKILL), a real SQLite
file, and real storage faults: the data directory is a tmpfs this test mounts,
remounts read-only, and shrinks to make the disk full. Mounting needs root
(CI runs as root); without it these tests fail loudly rather than skip.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import tempfile
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from conftest import RawClient, poll_until, tandemd_binary
from nodes import FLUSH_INTERVAL_MS, Node, nodes  # noqa: F401  (nodes is a fixture)
from test_metrics import http, metrics_port

pytestmark = pytest.mark.tandemd_only

def run_refused(args: List[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Runs a tandemd that must refuse to start; returns its completed process."""
    try:
        return subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"tandemd kept running instead of refusing: {' '.join(args)}") from exc


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def value_for(key: bytes, generation: int, size: int) -> bytes:
    """A value that names its key and generation and carries a checksum, so a
    torn or mixed-up value is detected."""
    body = b"%s:%d:" % (key, generation)
    body += bytes((i * 7 + generation) & 0xFF for i in range(max(0, size - len(body) - 17)))
    return body + b":" + hashlib.sha256(body).hexdigest()[:16].encode()


def value_is_intact(value: bytes) -> bool:
    body, _, digest = value.rpartition(b":")
    return hashlib.sha256(body).hexdigest()[:16].encode() == digest


def mg_ttl(client: RawClient, key: bytes) -> Optional[Tuple[int, int, bytes]]:
    """(ttl seconds, flags, value) of a key via the meta protocol, or None on a miss."""
    client.send(b"mg " + key + b" t f v\r\n")
    line = client.readline()
    if line == b"EN":
        return None
    parts = line.split(b" ")
    assert parts[0] == b"VA", line
    value = client.read_block(int(parts[1]))
    fields = {p[:1]: p[1:] for p in parts[2:]}
    return int(fields[b"t"]), int(fields[b"f"]), value


# ---------------------------------------------------------------------------
# Clean stops and kill -9
# ---------------------------------------------------------------------------


def test_sigterm_keeps_every_session_with_flags_and_deadlines(nodes, tmp_path: Path):
    data = tmp_path / "data"
    node = nodes(data)
    now = int(time.time())
    # key -> (value, flags, exptime as sent); a relative exptime's deadline is
    # the server's clock at the write plus it, so it is bounded by readings of
    # this clock taken before and after the writes.
    expected: Dict[bytes, Tuple[bytes, int, int]] = {}
    with node.client() as c:
        batch = []
        for i in range(3000):
            key = b"%032X-n1" % i
            exptime = [0, 600, 1800 + i, now + 7200][i % 4]
            value = value_for(key, 0, 200 + i % 300)
            expected[key] = (value, i, exptime)
            batch.append(b"set %s %d %d %d\r\n%s\r\n" % (key, i, exptime, len(value), value))
        c.send(b"".join(batch))
        for _ in batch:
            assert c.readline() == b"STORED"
        written_before = now  # `now` was read before the first write was sent
        written_after = time.time()
    assert node.terminate() == 0, node.log()

    node = nodes(data)
    stats = node.stats()
    assert stats["recovered_items"] == "3000"
    assert stats["curr_items"] == "3000"
    assert float(stats["recovery_seconds"]) >= 0
    with node.client() as c:
        for key, (value, flags, exptime) in expected.items():
            read_before = time.time()
            got = mg_ttl(c, key)
            read_after = time.time()
            assert got is not None, f"{key!r} lost across SIGTERM"
            ttl, got_flags, got_value = got
            assert got_value == value and got_flags == flags
            if exptime == 0:
                assert ttl == -1
                continue
            # Deadlines are absolute, so they hold across the restart: the
            # TTL is the deadline less the server's clock while it answered.
            # Bounds, not a tolerance: the clocks count whole seconds, hence ±1.
            if exptime > 2_592_000:
                earliest = latest = exptime
            else:
                earliest, latest = written_before + exptime, written_after + exptime
            low = int(earliest - read_after) - 1
            high = int(latest - read_before) + 1
            assert low <= ttl <= high, (key, ttl, low, high)
    assert node.terminate() == 0


def test_kill9_after_one_flush_interval_loses_nothing(nodes, tmp_path: Path):
    data = tmp_path / "data"
    node = nodes(data)
    with node.client() as c:
        c.send(b"".join(b"set k%d 0 0 %d\r\n%s\r\n" % (i, len(value_for(b"k%d" % i, 1, 100)), value_for(b"k%d" % i, 1, 100))
                        for i in range(5000)))
        for _ in range(5000):
            assert c.readline() == b"STORED"
        assert c.call(b"delete k17") == b"DELETED"
    node.wait_flushed()
    node.kill()

    node = nodes(data)
    with node.client() as c:
        values = c.get(*[b"k%d" % i for i in range(5000)])
    assert len(values) == 4999 and b"k17" not in values
    assert all(values[b"k%d" % i].data == value_for(b"k%d" % i, 1, 100) for i in range(5000) if i != 17)
    assert node.terminate() == 0


def test_kill9_mid_burst_loses_at_most_the_last_interval(nodes, tmp_path: Path):
    """A writer stores ever-new values while the node is SIGKILLed. Afterwards
    every value is intact, and every write acknowledged more than the loss
    window before the kill is there. The loss window is the flush interval
    plus the time one commit takes; 500 ms covers it on a loaded 2-core machine."""
    data = tmp_path / "data"
    node = nodes(data)
    acked: List[Tuple[bytes, int, float]] = []  # (key, generation, time acknowledged)
    stop = threading.Event()
    errors: List[BaseException] = []

    def writer() -> None:
        try:
            with node.client() as c:
                generation = 0
                while not stop.is_set() and generation < 200_000:
                    key = b"burst%d" % (generation % 500)
                    value = value_for(key, generation, 300)
                    c.send(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))
                    if c.readline() != b"STORED":
                        return
                    acked.append((key, generation, time.monotonic()))
                    generation += 1
        except Exception as exc:  # the kill ends the connection
            if not stop.is_set():
                errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    poll_until(lambda: len(acked) >= 3000, 30, what="3000 acknowledged writes")
    killed_at = time.monotonic()
    stop.set()
    node.kill()
    thread.join(timeout=10)
    assert not errors, errors
    window = 0.5
    newest_safe: Dict[bytes, int] = {}
    newest: Dict[bytes, int] = {}
    for key, generation, at in acked:
        newest[key] = generation
        if at < killed_at - window:
            newest_safe[key] = generation

    node = nodes(data)
    lost = 0
    with node.client() as c:
        values = c.get(*newest.keys())
    for key, safe_generation in newest_safe.items():
        item = values.get(key)
        assert item is not None, f"{key!r} acknowledged more than {window}s before the kill is missing"
        assert value_is_intact(item.data), f"{key!r} is corrupted"
        generation = int(item.data.split(b":")[1])
        assert generation >= safe_generation, (key, generation, safe_generation)
        if generation < newest[key]:
            lost += 1
    for item in values.values():
        assert value_is_intact(item.data)
    print(f"kill -9 mid-burst: {len(acked)} writes acknowledged, {lost} keys lost their newest write (all inside the {window}s window)")
    assert node.terminate() == 0


def test_deletes_flush_expiry_and_eviction_are_not_resurrected(nodes, tmp_path: Path):
    data = tmp_path / "data"
    node = nodes(data, "-m", "2")
    with node.client() as c:
        for i in range(50):
            assert c.store(b"set", b"old%d" % i, b"x" * 100) == b"STORED"
        assert c.call(b"flush_all") == b"OK"
        assert c.store(b"set", b"kept", b"v") == b"STORED"
        assert c.store(b"set", b"deleted", b"v") == b"STORED"
        assert c.call(b"delete deleted") == b"DELETED"
        assert c.store(b"set", b"expiring", b"v", exptime=1) == b"STORED"
        # 2 MB of memory and 4 MB of values: the values that are committed
        # leave RAM, and every item stays.
        fill = {b"fill%d" % i: bytes([97 + i % 26]) * 10_000 for i in range(400)}
        for key, value in fill.items():
            assert c.store(b"set", key, value) == b"STORED"
        poll_until(lambda: not c.get(b"expiring"), 5, what="the 1 s item to expire")
        assert {k: v.data for k, v in c.get(*fill).items()} == fill, "values beyond RAM come back from the log"
        stats = {k.decode(): v.decode() for k, v in c.stats()}
        assert int(stats["cold_items"]) > 0 and int(stats["evictions"]) == 0, stats
        # Items are lost only when their headers alone fill the memory: 30,000
        # more keys do, and the least recently used go (reading "kept" now and
        # then keeps it recent).
        for start in range(0, 30_000, 1_000):
            c.send(b"".join(b"set tiny%d 0 0 1 noreply\r\nt\r\n" % i for i in range(start, start + 1_000)))
            assert c.call(b"mn") == b"MN"
            assert c.get(b"kept")
        assert int(dict(c.stats())[b"evictions"]) > 0, "the headers must fill the memory"
        tiny_keys = [b"tiny%d" % i for i in range(30_000)]
        present_tiny = set()
        for start in range(0, 30_000, 1_000):
            present_tiny |= set(c.get(*tiny_keys[start:start + 1_000]))
        present_fill = {k: v.data for k, v in c.get(*fill).items()}
        assert 0 < len(present_tiny) + len(present_fill) < 30_400, "the headers must evict some items"
        assert c.get(b"kept"), "recently used keys survive eviction"
    assert node.terminate() == 0, node.log()

    node = nodes(data, "-m", "64")
    with node.client() as c:
        assert not c.get(*[b"old%d" % i for i in range(50)]), "flush_all resurrected"
        assert not c.get(b"deleted"), "delete resurrected"
        assert not c.get(b"expiring"), "expired item resurrected"
        assert {k: v.data for k, v in c.get(*fill).items()} == present_fill, "evicted items resurrected or values lost"
        after = set()
        for start in range(0, 30_000, 1_000):
            after |= set(c.get(*tiny_keys[start:start + 1_000]))
        assert after == present_tiny, "evicted items resurrected, or kept ones lost"
        assert c.get(b"kept")[b"kept"].data == b"v"
    assert node.terminate() == 0


def test_large_binary_and_many_items(nodes, tmp_path: Path):
    data = tmp_path / "data"
    node = nodes(data)
    megabyte = bytes((i * 131) & 0xFF for i in range(1024 * 1024))
    every_byte = bytes(range(256)) * 4
    with node.client() as c:
        assert c.store(b"set", b"mb", megabyte) == b"STORED"
        assert c.store(b"set", b"bin", every_byte, flags=4294967295) == b"STORED"
        for start in range(0, 100_000, 10_000):
            c.send(b"".join(b"set i%d 0 0 8 noreply\r\n%08d\r\n" % (i, i) for i in range(start, start + 10_000)))
        # mn answers once all 100,000 sets ran: a debug build on two loaded
        # cores has needed about 10 s, the client's usual read timeout.
        c.sock.settimeout(60)
        assert c.call(b"mn") == b"MN"
    assert node.terminate() == 0

    node = nodes(data)
    stats = node.stats()
    assert stats["recovered_items"] == "100002"
    with node.client() as c:
        got = c.get(b"mb", b"bin")
        assert got[b"mb"].data == megabyte
        assert got[b"bin"].data == every_byte and got[b"bin"].flags == 4294967295
        sample = c.get(*[b"i%d" % i for i in range(0, 100_000, 997)])
        assert all(sample[b"i%d" % i].data == b"%08d" % i for i in range(0, 100_000, 997))
    assert node.terminate() == 0


# ---------------------------------------------------------------------------
# Bad data directories at start
# ---------------------------------------------------------------------------


def test_corrupt_database_is_refused_with_its_name_and_left_untouched(nodes, tmp_path: Path):
    data = tmp_path / "data"
    node = nodes(data)
    with node.client() as c:
        for i in range(2000):
            assert c.store(b"set", b"k%d" % i, b"z" * 400) == b"STORED"
    assert node.terminate() == 0
    db = data / "tandem.sqlite3"
    raw = bytearray(db.read_bytes())
    for i in range(100, min(len(raw), 48 * 1024)):
        raw[i] = (i * 7) & 0xFF
    db.write_bytes(bytes(raw))
    before = sha256(db)
    result = run_refused([str(tandemd_binary()), "-p", "0", "--data-dir", str(data)])
    assert result.returncode != 0
    assert str(db).encode() in result.stderr, result.stderr
    assert sha256(db) == before, "the refused file was modified"


def test_not_a_database_is_refused(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    db = data / "tandem.sqlite3"
    db.write_bytes(b"this is not a database\n" * 100)
    before = sha256(db)
    result = run_refused([str(tandemd_binary()), "-p", "0", "--data-dir", str(data)])
    assert result.returncode != 0
    assert b"is not an SQLite database" in result.stderr and str(db).encode() in result.stderr, result.stderr
    assert sha256(db) == before


def test_second_process_on_the_same_directory_refuses(nodes, tmp_path: Path):
    data = tmp_path / "data"
    node = nodes(data)
    result = run_refused([str(tandemd_binary()), "-p", "0", "--data-dir", str(data)])
    assert result.returncode != 0
    assert b"in use by another tandemd" in result.stderr, result.stderr
    with node.client() as c:  # the first one is unaffected
        assert c.call(b"version").startswith(b"VERSION")
    assert node.terminate() == 0


# ---------------------------------------------------------------------------
# Storage faults at run time, on a tmpfs the test controls
# ---------------------------------------------------------------------------


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True)
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for fault injection (these tests need root): "
                    f"{result.stderr.decode(errors='replace')}", pytrace=False)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, capture_output=True)


NOBODY = 65534


def test_read_only_directory_keeps_serving_then_catches_up(nodes, request):
    """The database file is removed and its directory made read-only (for an
    unprivileged tandemd) while the node runs: it cannot recreate the file,
    keeps serving from memory, reports and retries; once the directory is
    writable again it recreates the file from memory and catches up.

    (Linux will not remount a filesystem read-only while a process holds
    files open for writing, so a read-only directory is the fault a running
    node can really meet.)"""
    # pytest's tmp_path is private to root; the unprivileged node needs a path it can reach.
    base = Path(tempfile.mkdtemp(prefix="tandem-readonly-"))
    base.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    data = base / "data"
    data.mkdir()
    os.chown(data, NOBODY, NOBODY)
    node = nodes(data, "--metrics-port", "0", user=NOBODY)
    port = metrics_port(node.log_path)
    with node.client() as c:
        for i in range(100):
            assert c.store(b"set", b"before%d" % i, b"v%d" % i) == b"STORED"
    node.wait_flushed()
    assert http(port, "/health")[0] == 200
    for suffix in ("", "-wal", "-shm"):
        (data / f"tandem.sqlite3{suffix}").unlink(missing_ok=True)
    data.chmod(0o555)
    try:
        with node.client() as c:
            for i in range(500):
                assert c.store(b"set", b"during%d" % i, b"w%d" % i) == b"STORED"
            assert c.call(b"delete before3") == b"DELETED"
        poll_until(lambda: int(node.stats()["persistence_errors"]) > 2, 10, what="persistence errors")
        stats = node.stats()
        assert int(stats["persistence_pending"]) > 0
        assert stats["persistence_last_error"] != "none"
        with node.client() as c:  # still serving from memory
            assert c.get(b"during499")[b"during499"].data == b"w499"
        # Not healthy (a restart would lose what only memory holds, and says
        # so), but alive: liveness probes must not restart it.
        status, _, body = http(port, "/health")
        assert status == 503 and "persistence failing" in body and "do not restart" in body, body
        assert http(port, "/live")[:3:2] == (200, "alive\n")
    finally:
        data.chmod(0o755)
    node.wait_flushed(timeout=20)
    poll_until(lambda: http(port, "/health")[0] == 200, 10, what="/health to be 200 again once storage works")
    log = node.log()
    assert log.count("cannot write to storage") <= 3, "errors must be logged once per interval, not per change"
    assert "storage works again" in log
    node.kill()  # the catch-up must be on disk, not only in memory

    node = nodes(data, user=NOBODY)
    with node.client() as c:
        assert len(c.get(*[b"during%d" % i for i in range(500)])) == 500
        assert not c.get(b"before3")
        assert len(c.get(*[b"before%d" % i for i in range(100)])) == 99
    assert node.terminate() == 0


def test_disk_full_keeps_serving_then_catches_up(nodes, tmp_path: Path):
    with tmpfs(tmp_path / "mnt", "3m") as mount:
        data = mount / "data"
        # No disk budget: this is about a disk that fills, not about eviction.
        node = nodes(data, "--disk-limit", "none")
        with node.client() as c:
            for i in range(200):  # ~ 4 MB of values: more than the disk holds
                assert c.store(b"set", b"big%d" % i, value_for(b"big%d" % i, 0, 20_000)) == b"STORED"
        poll_until(lambda: int(node.stats()["persistence_errors"]) > 0, 10, what="a disk-full error")
        assert int(node.stats()["persistence_pending"]) > 0
        remount(mount, "size=64m")
        node.wait_flushed(timeout=30)
        node.kill()
        node = nodes(data)
        with node.client() as c:
            values = c.get(*[b"big%d" % i for i in range(200)])
        assert len(values) == 200 and all(value_is_intact(v.data) for v in values.values())
        assert node.terminate() == 0


def test_removed_database_file_is_recreated_from_memory(nodes, tmp_path: Path):
    data = tmp_path / "data"
    node = nodes(data)
    with node.client() as c:
        for i in range(300):
            assert c.store(b"set", b"k%d" % i, b"v%d" % i) == b"STORED"
    node.wait_flushed()
    for suffix in ("", "-wal", "-shm"):
        (data / f"tandem.sqlite3{suffix}").unlink(missing_ok=True)
    with node.client() as c:
        assert c.store(b"set", b"after", b"a") == b"STORED"
    poll_until(lambda: (data / "tandem.sqlite3").exists() and node.stats()["persistence_pending"] == "0", 10,
               what="the database file to be recreated")
    node.kill()
    node = nodes(data)
    assert node.stats()["recovered_items"] == "301"
    assert node.terminate() == 0
