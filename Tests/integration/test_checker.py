"""Tests of the lost-write checker: synthetic histories, then a real run.

Why: a checker that never complains is worse than none, because it turns
every fault-injection test green.  So each rule is shown to *fire* on a
history that breaks it, as well as to stay quiet on one that does not, and
the end-to-end run against a real memcached proves that a write deleted
behind the checker's back is caught.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from checker import (DELETE, FAIL, OK, SET, UNKNOWN, MiniClient, Op, Result, Workload, check,
                     classify_reply, final_reads, node_label)
from conftest import poll_until
from faultproxy import FaultProxy

A, B = "127.0.0.1:1001", "127.0.0.1:1002"
KEY = "0123456789ABCDEF0123456789ABCDEF-n1"


def v(name: str) -> str:
    """A workload-shaped value: a unique token padded with dots."""
    return name.ljust(40, ".")


def op(kind: str, value: Optional[str], start: float, outcome: str, key: str = KEY, node: str = A) -> Op:
    return Op(key, kind, value, node, start, start + 0.5, outcome)


def reads(value: Optional[str], key: str = KEY, other: Optional[str] = "same") -> Dict[str, Dict[str, Optional[str]]]:
    """Final reads with ``value`` on node A and (by default) the same on node B."""
    return {A: {key: value}, B: {key: value if other == "same" else other}}


def kinds(result: Result) -> List[str]:
    return [x.kind for x in result.violations]


# ---------------------------------------------------------------------------
# check() on synthetic histories
# ---------------------------------------------------------------------------


def test_clean_history_passes():
    h = [op(SET, v("w0-1"), 1, OK), op(SET, v("w0-2"), 2, OK)]
    r = check(h, reads(v("w0-2")))
    assert r.ok and r.violations == [] and r.both_identical
    assert (r.ops, r.acknowledged, r.unknown, r.failed, r.keys, r.nodes) == (2, 2, 0, 0, 1, 2)
    r.assert_ok()
    assert r.summary().startswith("OK:")


def test_lost_acknowledged_write_is_reported():
    h = [op(SET, v("w0-1"), 1, OK), op(SET, v("w0-2"), 2, OK)]
    r = check(h, reads(None))
    assert not r.ok and r.lost == 1 and r.unexpected == 0
    assert kinds(r) == ["lost", "lost"]  # one per node
    assert r.violations[0].expected == (v("w0-2"),) and r.violations[0].got is None
    with pytest.raises(AssertionError) as info:
        r.assert_ok()
    assert "lost 1" in str(info.value) and KEY in str(info.value) and "w0-2" in str(info.value)


def test_stale_older_acknowledged_value_is_lost():
    h = [op(SET, v("w0-1"), 1, OK), op(SET, v("w0-2"), 2, OK)]
    r = check(h, reads(v("w0-1")))
    assert r.lost == 1 and r.unexpected == 0 and not r.ok
    assert "older value" in r.violations[0].note


def test_unknown_later_write_explains_a_different_value():
    h = [op(SET, v("w0-1"), 1, OK), op(SET, v("w0-2"), 2, UNKNOWN), op(SET, v("w0-3"), 3, UNKNOWN)]
    for final in (v("w0-1"), v("w0-2"), v("w0-3")):
        assert check(h, reads(final)).ok, final
    # ... but an unknown write does not excuse losing everything.
    r = check(h, reads(None))
    assert r.lost == 1


def test_unknown_write_before_the_last_ack_does_not_explain_it():
    h = [op(SET, v("w0-1"), 1, UNKNOWN), op(SET, v("w0-2"), 2, OK)]
    r = check(h, reads(v("w0-1")))
    assert r.lost == 1 and "late" in r.violations[0].note
    assert check(h, reads(v("w0-1")), allow_late_unknown=True).ok


def test_value_nobody_wrote_is_unexpected():
    other_key = "validity:0123456789ABCDEF0123456789ABCDEF"
    h = [op(SET, v("w0-1"), 1, OK), op(SET, v("w0-9"), 2, OK, key=other_key),
         op(SET, v("w0-5"), 3, FAIL)]
    for bogus in ("garbage", v("w0-9"), v("w0-5")):  # never written / other key's / certainly failed
        r = check(h, {A: {KEY: bogus, other_key: v("w0-9")}})
        assert r.unexpected == 1 and r.lost == 0 and not r.ok, bogus
        assert kinds(r) == ["unexpected"]
    r = check(h, {A: {KEY: v("w0-5"), other_key: v("w0-9")}})
    assert "certainly failed" in r.violations[0].note
    # With no acknowledged op at all, a value nobody wrote is still an error.
    r = check([op(SET, v("w0-1"), 1, UNKNOWN)], reads("garbage"))
    assert r.unexpected == 1
    # A key the history never touched must be absent.
    assert check([], {A: {KEY: "x"}}).unexpected == 1
    assert check([], {A: {KEY: None}}).ok


def test_no_acknowledged_op_allows_any_written_value_or_absent():
    h = [op(SET, v("w0-1"), 1, UNKNOWN), op(SET, v("w0-2"), 2, UNKNOWN), op(SET, v("w0-3"), 3, FAIL)]
    for final in (None, v("w0-1"), v("w0-2")):
        assert check(h, reads(final)).ok, final
    r = check(h, reads(v("w0-3")))
    assert r.unexpected == 1
    assert (r.acknowledged, r.unknown, r.failed) == (0, 2, 1)


def test_deletes():
    set_then_delete = [op(SET, v("w0-1"), 1, OK), op(DELETE, None, 2, OK)]
    assert check(set_then_delete, reads(None)).ok
    r = check(set_then_delete, reads(v("w0-1")))
    assert r.lost == 1 and r.violations[0].expected == (None,)

    unknown_delete = [op(SET, v("w0-1"), 1, OK), op(DELETE, None, 2, UNKNOWN)]
    assert check(unknown_delete, reads(None)).ok
    assert check(unknown_delete, reads(v("w0-1"))).ok

    failed_delete = [op(SET, v("w0-1"), 1, OK), op(DELETE, None, 2, FAIL)]
    assert check(failed_delete, reads(v("w0-1"))).ok
    assert check(failed_delete, reads(None)).lost == 1

    delete_then_set = [op(DELETE, None, 1, OK), op(SET, v("w0-2"), 2, OK)]
    assert check(delete_then_set, reads(None)).lost == 1


def test_nodes_differing_is_reported():
    h = [op(SET, v("w0-1"), 1, OK), op(SET, v("w0-2"), 2, UNKNOWN)]
    r = check(h, reads(v("w0-1"), other=v("w0-2")))  # each value allowed on its own
    assert r.lost == 0 and r.unexpected == 0
    assert r.differing == 1 and not r.both_identical and not r.ok
    assert kinds(r) == ["differ"]
    with pytest.raises(AssertionError, match="differing between nodes 1"):
        r.assert_ok()
    assert check(h, reads(v("w0-1"), other=v("w0-2")), require_identical=False).ok
    # A key one node lacks counts as absent there.
    r = check([op(SET, v("w0-1"), 1, OK)], {A: {KEY: v("w0-1")}, B: {}})
    assert r.lost == 1 and r.differing == 1


def test_assert_ok_lists_at_most_20_violations():
    h = [op(SET, v(f"w0-{i}"), i, OK, key=f"k{i:03d}") for i in range(30)]
    r = check(h, {A: {}})
    assert r.lost == 30
    with pytest.raises(AssertionError) as info:
        r.assert_ok()
    text = str(info.value)
    assert text.count("lost: ") == 20 and "and 10 more" in text


# ---------------------------------------------------------------------------
# The client's outcomes, against a scripted fake server
# ---------------------------------------------------------------------------


class ScriptedServer:
    """Answers each text-protocol command with ``reply(conn_no, cmd_no) -> (delay_s, line)``.

    Why: the outcomes that matter most (errors, late replies) are the ones a
    healthy memcached never produces.
    """

    def __init__(self, reply):
        self.reply = reply
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.address: Tuple[str, int] = self.listener.getsockname()
        self.stopping = threading.Event()
        self.conns: List[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn, len(self.conns) - 1), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket, conn_no: int) -> None:
        conn.settimeout(0.1)
        buf, cmd_no = b"", 0
        while not self.stopping.is_set():
            lines_needed = 2 if buf.startswith(b"set ") else 1
            if buf.count(b"\r\n") >= lines_needed:
                for _ in range(lines_needed):
                    buf = buf[buf.index(b"\r\n") + 2:]
                delay, line = self.reply(conn_no, cmd_no)
                cmd_no += 1
                if self.stopping.wait(delay):
                    return
                try:
                    conn.sendall(line.encode() + b"\r\n")
                except OSError:
                    return
                continue
            try:
                data = conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            buf += data

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()
        for t in self.threads:
            t.join(2.0)
        for c in self.conns:
            c.close()


def test_reply_lines_map_to_outcomes():
    expected = {
        (SET, "STORED"): OK, (SET, "NOT_STORED"): FAIL, (SET, "SERVER_ERROR out of memory"): UNKNOWN,
        (SET, "ERROR"): UNKNOWN, (SET, "CLIENT_ERROR bad data chunk"): UNKNOWN, (SET, "EXISTS"): UNKNOWN,
        (DELETE, "DELETED"): OK, (DELETE, "NOT_FOUND"): OK, (DELETE, "SERVER_ERROR busy"): UNKNOWN,
        (DELETE, "ERROR"): UNKNOWN,
    }
    for (kind, line), outcome in expected.items():
        server = ScriptedServer(lambda c, n, line=line: (0.0, line))
        try:
            with MiniClient(server.address) as client:
                got = client.set("k", "v") if kind == SET else client.delete("k")
            assert got == line
            assert classify_reply(kind, got) == outcome, (kind, line)
        finally:
            server.close()


def test_a_late_reply_is_never_taken_for_the_next_ops_answer():
    """The first command on each connection is answered late with STORED, later ones
    at once with SERVER_ERROR.  A client that kept using a timed-out connection would
    read the late STORED as the answer to its next set and call that set acknowledged."""
    server = ScriptedServer(lambda c, n: (0.3, "STORED") if n == 0 else (0.0, "SERVER_ERROR no"))
    try:
        w = Workload([server.address], keys=2, workers=1, duration_s=1.5, max_ops=6, seed=3, op_timeout=0.2)
        h = w.run()
        assert len(h) == 6
        assert all(o.outcome == UNKNOWN for o in h), [str(o) for o in h]
    finally:
        server.close()


# ---------------------------------------------------------------------------
# A real run against memcached
# ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def memcached(tmp_path: Path) -> Iterator[Tuple[str, int]]:
    """A real memcached on a free loopback port (the checker needs a real server)."""
    binary = shutil.which("memcached")
    if not binary:
        pytest.fail("the checker's end-to-end test needs the memcached binary on PATH: "
                    "apt-get install -y memcached", pytrace=False)
    log = open(tmp_path / "memcached.log", "wb")
    proc: Optional[subprocess.Popen] = None
    try:
        for _attempt in range(5):  # a port picked as free can be taken in between
            port = _free_port()
            args = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0"]
            if os.geteuid() == 0:
                args += ["-u", "root"]  # memcached refuses to run as root otherwise
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.poll() is None and not _accepts(port):
                time.sleep(0.02)
            if proc.poll() is None and _accepts(port):
                break
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)
            proc = None
        if proc is None:
            pytest.fail(f"memcached did not start:\n{(tmp_path / 'memcached.log').read_text()}", pytrace=False)
        yield ("127.0.0.1", port)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        log.close()


def last_acked_sets(history: List[Op]) -> List[Op]:
    """Per key, the last acknowledged op when it is a set with no later unknown op."""
    by_key: Dict[str, List[Op]] = {}
    for o in history:
        by_key.setdefault(o.key, []).append(o)
    out = []
    for ops in by_key.values():
        acked = [o for o in ops if o.outcome == OK]
        if acked and acked[-1].kind == SET and not any(o.outcome == UNKNOWN and o.start > acked[-1].start for o in ops):
            out.append(acked[-1])
    return out


def test_workload_against_memcached_passes_then_catches_a_deleted_write(memcached: Tuple[str, int]):
    nodes = [memcached, memcached]  # one server playing both nodes
    w = Workload(nodes, keys=20, workers=2, duration_s=2.0, max_ops=200_000, seed=20240601,
                 delete_fraction=0.1)
    history = w.run()
    assert len(history) > 200, f"only {len(history)} ops in 2 s against a local memcached"
    # The history has the promised shape.
    assert {o.kind for o in history} == {SET, DELETE}
    assert all(o.start <= o.end for o in history)
    sets = [o for o in history if o.kind == SET]
    assert len({o.value for o in sets}) == len(sets), "values must be unique"
    assert all(len(o.value) == 200 for o in sets)
    ids = {o.key.split("-")[0] for o in history if o.key.endswith("-n1")}
    assert all(len(i) == 32 and i == i.upper() and int(i, 16) >= 0 for i in ids)
    assert {o.key for o in history} <= set(w.all_keys())
    by_worker: Dict[str, set] = {}
    for o in history:
        by_worker.setdefault(o.key, set()).add(o.worker)
    assert all(len(ws) == 1 for ws in by_worker.values()), "each key must belong to one worker"

    reads = w.final_reads()
    result = check(history, reads)
    result.assert_ok()
    assert result.acknowledged > 200 and result.lost == 0

    # Now lose a write behind the checker's back, and plant a value nobody wrote.
    victims = last_acked_sets(history)
    assert len(victims) >= 2
    lost, planted = victims[0], victims[1]
    with MiniClient(memcached) as c:
        assert c.delete(lost.key) == "DELETED"
        assert c.set(planted.key, "planted-by-the-test") == "STORED"
    result = check(history, final_reads(nodes, w.keys_touched()))
    assert not result.ok
    assert result.lost == 1 and result.unexpected == 1, result.summary()
    assert {(x.kind, x.key) for x in result.violations} == {("lost", lost.key), ("unexpected", planted.key)}
    with pytest.raises(AssertionError, match="lost 1"):
        result.assert_ok()


def test_workload_bounds_pause_and_unreachable_nodes(memcached: Tuple[str, int]):
    # A port nobody listens on: its ops fail (certainly not applied).
    dead = ("127.0.0.1", _free_port())
    w = Workload([memcached, dead], keys=6, workers=3, duration_s=30.0, max_ops=100_000, seed=7)
    w.start()
    try:
        poll_until(lambda: sum(o.outcome == OK for o in w.history) >= 20, 10, what="20 acknowledged ops")
        w.pause()  # returns once no op is in flight
        paused_at = len(w.history)
        time.sleep(0.3)  # a quiet window: nothing may start while paused
        assert len(w.history) == paused_at, "ops ran while paused"
        w.resume()
        poll_until(lambda: len(w.history) > paused_at, 5, what="ops after resume")
    finally:
        w.stop()
    h = w.history
    assert any(o.outcome == FAIL and o.node == node_label(dead) for o in h)
    assert all(o.outcome == OK for o in h if o.node == node_label(memcached))
    w.check({node_label(memcached): final_reads([memcached], w.keys_touched())[node_label(memcached)]}).assert_ok()

    # The op budget is exact.
    small = Workload([memcached], keys=4, workers=2, duration_s=30.0, max_ops=50, seed=8)
    assert len(small.run()) == 50


def test_silent_server_gives_unknown_outcomes(memcached: Tuple[str, int]):
    """A server that accepts but never answers: every op times out as unknown."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # the kernel completes handshakes; nobody ever reads
    try:
        w = Workload([silent.getsockname()], keys=2, workers=2, duration_s=0.8, max_ops=100, seed=9,
                     op_timeout=0.2)
        h = w.run()
        assert h and all(o.outcome == UNKNOWN for o in h)
        assert all(o.end - o.start >= 0.19 for o in h)
        # Nothing was applied anywhere: absent is allowed, and so is any written value.
        r = check(h, {"x": {o.key: None for o in h}})
        assert r.ok and r.unknown == len(h)
    finally:
        silent.close()


def test_workload_through_a_cut_proxy_records_unknowns_and_still_checks(memcached: Tuple[str, int]):
    """The two tools together: a cut link turns acknowledged writes into unknown ones.

    memcached behind the proxy is a single copy, so whatever the cut does to
    the outcomes, nothing acknowledged may be lost and the check must pass.
    """
    with FaultProxy(memcached) as proxy:
        w = Workload([proxy.address, memcached], keys=8, workers=4, duration_s=30.0, max_ops=100_000,
                     seed=11, delete_fraction=0.2, node_choice="random", op_timeout=0.3)
        w.start()
        try:
            poll_until(lambda: len(w.history) >= 50, 10, what="50 ops before the cut")
            proxy.cut()
            via = node_label(proxy.address)
            poll_until(lambda: sum(o.outcome == UNKNOWN and o.node == via for o in w.history) >= 4, 10,
                       what="unknown outcomes through the cut proxy")
            assert proxy.stats().dropped_forward > 0
            proxy.heal()
            healed_at = time.monotonic()
            poll_until(lambda: any(o.outcome == OK and o.node == via and o.start > healed_at for o in w.history),
                       10, what="acknowledged ops through the healed proxy")
        finally:
            w.stop()
    r = check(w.history, final_reads([memcached], w.keys_touched()))
    r.assert_ok()
    assert r.unknown >= 4 and r.acknowledged >= 50
