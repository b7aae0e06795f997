"""Replay memcached-session-manager's real text-protocol traffic.

``Tests/fixtures/msm/traffic.txt`` (recorded data: Tests/fixtures/msm/README.md)
is a decoded capture of two Tomcats running msm against two memcached nodes.
For every text-protocol section this test starts one server per recorded node,
opens one connection per recorded client port, sends every recorded request in
the recorded order (pipelined exactly as recorded: a request is sent as soon
as it appears, its reply is read where the reply appears), and compares every
reply line with the recorded one.

Data blocks are not in the capture, only their lengths, so each storage
command sends fresh bytes of the recorded length (binary, unique per command).
``VALUE`` lines are compared on key, flags and length, and the data that
follows must be exactly the bytes this replay last stored under that key on
that node.

Expiry.  The capture contains "idle 6s" steps: msm set a session with a 1-4 s
TTL and a later request expects it gone.  The replay does not sleep 6 s.  When
a recorded reply is a miss (``END`` / ``NOT_FOUND``) for a key this replay
stored with a TTL, it first waits for the server to expire that key, polling a
separate connection with ``get``, and asserts that this happened no earlier
than TTL-1 s (memcached's clock ticks in whole seconds) and no later than
TTL+2 s after the ``set`` was sent.  A key that never expires fails the test.
"""

from __future__ import annotations

import random
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Deque, Dict, List, Optional, Tuple

import pytest

TEXT_SECTIONS = ["nonsticky-text", "sticky-jvmRoute-text", "nonsticky-lockingMode-all-text"]

LINE_RE = re.compile(r"^\s*(\d+\.\d+)\s+(n\d+)\s+c(\d+)\s+(->|<-)\s+\[txt\] (.*?)\s*$")
DATA_RE = re.compile(r"^(.*?)\s+\(data (\d+) bytes\)$")
SECTION_RE = re.compile(r"^######## ([\w.-]+): ")

STORAGE = ("set", "add", "replace", "append", "prepend")
#: Slack around a TTL when waiting for a key to expire (see module docstring).
EXPIRY_EARLY_SLACK = 1.0
EXPIRY_LATE_SLACK = 2.0
#: Only TTLs up to this are waited for; a recorded miss on a key with a longer
#: TTL is compared as is (and fails if the server still has the key).
MAX_WAITED_TTL = 10
#: A whole section must replay within this many seconds.
SECTION_BUDGET = 20.0


@dataclass
class Request:
    lineno: int
    node: str
    conn: str
    line: str
    data_len: Optional[int]
    expected: List[str] = field(default_factory=list)
    complete: bool = False

    @property
    def cmd(self) -> str:
        return self.line.split()[0]

    @property
    def key(self) -> str:
        return self.line.split()[1]


@dataclass
class Reply:
    lineno: int
    conn: str
    line: str


@dataclass
class Section:
    name: str
    events: List[object]
    requests: List[Request]


def traffic_path(msm_fixtures: Path) -> Path:
    return msm_fixtures / "traffic.txt"


def parse_sections(path: Path) -> Dict[str, Section]:
    sections: Dict[str, Section] = {}
    current: Optional[Section] = None
    open_requests: Dict[str, Deque[Request]] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        m = SECTION_RE.match(raw)
        if m and m.group(1) != "columns":
            current = Section(m.group(1), [], [])
            sections[current.name] = current
            open_requests = {}
            continue
        m = LINE_RE.match(raw)
        if not m or current is None:
            continue
        _t, node, port, direction, text = m.groups()
        conn = f"{node}/c{port}"
        if direction == "->":
            data_len = None
            dm = DATA_RE.match(text)
            if dm:
                text, data_len = dm.group(1), int(dm.group(2))
            req = Request(lineno, node, conn, text, data_len)
            current.events.append(req)
            current.requests.append(req)
            open_requests.setdefault(conn, deque()).append(req)
        else:
            queue = open_requests.get(conn)
            assert queue, f"{path}:{lineno}: reply on {conn} without an open request"
            head = queue[0]
            head.expected.append(text)
            if head.cmd != "get" or text == "END":
                head.complete = True
                queue.popleft()
            current.events.append(Reply(lineno, conn, text))
    return sections


def block_for(seq: int, length: int) -> bytes:
    """Binary data of the recorded length, unique per command (for length >= 4)."""
    body = seq.to_bytes(4, "big") + random.Random(seq).randbytes(max(0, length - 4))
    return body[:length]


@dataclass
class Stored:
    """What the replay stored, with its TTL bracketed by this clock's readings
    before the request was sent and after its reply arrived: the server's
    deadline lies between ``sent_at + ttl`` and ``answered_at + ttl``."""
    data: bytes
    ttl: int
    sent_at: float
    answered_at: float


@pytest.fixture(scope="module")
def traffic(msm_fixtures: Path) -> Dict[str, Section]:
    path = traffic_path(msm_fixtures)
    if not path.is_file():
        pytest.fail(f"msm traffic capture not found at {path}", pytrace=False)
    return parse_sections(path)


def test_traffic_has_the_text_sections(traffic):
    for name in TEXT_SECTIONS:
        assert name in traffic, f"section {name!r} missing from traffic.txt (has {sorted(traffic)})"
        section = traffic[name]
        assert len(section.requests) >= 15, f"section {name} has only {len(section.requests)} requests"
        dangling = [r for r in section.requests if not r.complete]
        assert not dangling, f"requests without a complete recorded reply: {dangling}"
    # The binary sections are not replayed here (no binary protocol yet); make
    # sure no other text section has been added that this test would miss.
    other_text = [n for n in traffic if n.endswith("-text") and n not in TEXT_SECTIONS]
    assert not other_text, f"new text sections to replay: {other_text}"


@pytest.mark.parametrize("section_name", TEXT_SECTIONS)
def test_replay_msm_text_traffic(traffic, section_name, server_factory, raw_factory):
    section = traffic.get(section_name)
    assert section is not None, f"section {section_name!r} missing from traffic.txt"
    assert len(section.requests) >= 15, f"section {section_name} parsed to only {len(section.requests)} requests"
    started = time.monotonic()

    nodes = sorted({r.node for r in section.requests})
    servers = {node: server_factory() for node in nodes}
    probes = {node: raw_factory(servers[node].address) for node in nodes}
    conns = {}
    pending: Dict[str, Deque[Tuple[Request, Optional[bytes], float]]] = {}
    model: Dict[str, Dict[str, Stored]] = {node: {} for node in nodes}
    expiry_log: List[str] = []
    compared = 0
    recorded_replies = sum(1 for e in section.events if isinstance(e, Reply))

    def where(lineno: int) -> str:
        return f"{section_name}, traffic.txt line {lineno}"

    def wait_for_expiry(req: Request, entry: Stored) -> None:
        probe = probes[req.node]
        deadline = entry.answered_at + entry.ttl + EXPIRY_LATE_SLACK
        for _ in range(10000):
            if req.key.encode() not in probe.get(req.key.encode()):
                break
            assert time.monotonic() < deadline, (
                f"{where(req.lineno)}: msm expects {req.key} (ttl {entry.ttl}s) gone, but it is still "
                f"there {time.monotonic() - entry.answered_at:.1f}s after it was stored")
            time.sleep(0.05)
        elapsed = time.monotonic() - entry.sent_at
        assert elapsed >= entry.ttl - EXPIRY_EARLY_SLACK, (
            f"{where(req.lineno)}: {req.key} (ttl {entry.ttl}s) expired after only {elapsed:.2f}s")
        expiry_log.append(f"{req.key} ttl {entry.ttl}s expired after {elapsed:.2f}s")

    seq = 0
    for event in section.events:
        if isinstance(event, Request):
            req = event
            conn = conns.get(req.conn)
            if conn is None:
                conn = conns[req.conn] = raw_factory(servers[req.node].address)
            entry = model[req.node].get(req.key)
            expects_miss = (req.cmd == "get" and req.expected == ["END"]) or \
                           (req.cmd == "delete" and req.expected == ["NOT_FOUND"])
            if expects_miss and entry is not None and 0 < entry.ttl <= MAX_WAITED_TTL:
                wait_for_expiry(req, entry)
                del model[req.node][req.key]
            data = None
            if req.data_len is not None:
                seq += 1
                data = block_for(seq, req.data_len)
                tokens = req.line.split()
                assert tokens[0] in STORAGE and int(tokens[4]) == req.data_len, where(req.lineno)
                conn.send(req.line.encode() + b"\r\n" + data + b"\r\n")
            else:
                conn.send(req.line.encode() + b"\r\n")
            pending.setdefault(req.conn, deque()).append((req, data, time.monotonic()))
            continue

        reply: Reply = event
        conn = conns[reply.conn]
        req, data, sent_at = pending[reply.conn][0]
        actual = conn.readline().decode(errors="replace")
        compared += 1
        if reply.line.startswith("VALUE "):
            _, key, flags, length = reply.line.split()
            parts = actual.split()
            assert parts[:1] == ["VALUE"] and parts[1:] == [key, flags, length], (
                f"{where(reply.lineno)}: {req.line!r} -> expected {reply.line!r}, got {actual!r}")
            value = conn.read_block(int(length))
            stored = model[req.node].get(key)
            assert stored is not None, f"{where(reply.lineno)}: replay never stored {key} (replay bug)"
            assert value == stored.data, (
                f"{where(reply.lineno)}: {req.line!r} returned {len(value)} bytes that differ from "
                f"the last value stored under {key}")
        else:
            assert actual == reply.line, (
                f"{where(reply.lineno)}: {req.line!r} -> expected {reply.line!r}, got {actual!r}")

        done = req.cmd != "get" or reply.line == "END"
        if not done:
            continue
        pending[reply.conn].popleft()
        if req.cmd in ("set", "add") and actual == "STORED":
            ttl = int(req.line.split()[3])
            assert 0 <= ttl <= 30 * 24 * 3600, f"{where(req.lineno)}: unexpected exptime {ttl}"
            model[req.node][req.key] = Stored(data, ttl, sent_at, time.monotonic())
        elif req.cmd == "delete" and actual == "DELETED":
            del model[req.node][req.key]

    assert all(not q for q in pending.values()), f"requests left without a reply: {pending}"
    assert compared == recorded_replies

    # Everything the replay believes is live must read back byte for byte;
    # whatever is clearly past its TTL must be gone.
    checked = 0
    for node, items in model.items():
        for key, stored in items.items():
            asked = time.monotonic()
            got = probes[node].get(key.encode())
            youngest = asked - stored.answered_at  # the least the item can have aged
            oldest = time.monotonic() - stored.sent_at  # the most
            if stored.ttl == 0 or oldest < stored.ttl - EXPIRY_EARLY_SLACK:
                assert key.encode() in got, f"{section_name}: {key} on {node} is missing at the end of the replay"
                assert got[key.encode()].data == stored.data and got[key.encode()].flags == 0, \
                    f"{section_name}: {key} on {node} has the wrong value at the end of the replay"
                checked += 1
            elif youngest > stored.ttl + EXPIRY_LATE_SLACK:
                assert key.encode() not in got, f"{section_name}: {key} (ttl {stored.ttl}s) still there after {youngest:.1f}s"
    assert checked >= 1, f"{section_name}: no live items at the end of the replay"

    # Every section ends with a request after an expiry: the wait must have happened.
    assert expiry_log, f"{section_name}: no expiry-dependent step found; the replay parser is broken"
    elapsed = time.monotonic() - started
    assert elapsed < SECTION_BUDGET, f"replay took {elapsed:.1f}s; expiry waits: {expiry_log}"
