"""Replay memcached-session-manager's real binary-protocol traffic.

The binary sections of ``Tests/fixtures/msm/traffic.txt`` (non-sticky and sticky,
memcachedProtocol="binary") are replayed like the text ones: one server per
recorded node, one connection per recorded client port, every request sent in
the recorded order with its recorded opaque, every response read where the
capture shows it and compared: opcode, status, memcached's message for
errors, opaque, and for hits the flags, length and the exact bytes this replay
last stored under that key. CAS values are the server's own and are not
compared.

Expiry: where the capture expects a miss for a key this replay stored with a
short TTL ("idle 6s" steps), the replay waits for the server to expire it
(polling on a separate connection) and checks that happened between TTL-1 s
and TTL+2 s after the set, instead of sleeping.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

BINARY_SECTIONS = ["nonsticky-binary", "sticky-jvmRoute-binary"]
LINE_RE = re.compile(r"^\s*(\d+\.\d+)\s+(n\d+)\s+c(\d+)\s+(->|<-)\s+\[bin\] (.*?)\s*$")
SECTION_RE = re.compile(r"^######## ([\w.-]+): ")
OPCODES = {"GET": 0x00, "SET": 0x01, "ADD": 0x02, "DELETE": 0x04}
STATUSES = {"OK": 0x0000, "KEY_ENOENT": 0x0001, "KEY_EEXISTS": 0x0002}
SECTION_BUDGET = 25.0


@dataclass
class Event:
    lineno: int
    node: str
    conn: str
    outgoing: bool
    op: str
    fields: Dict[str, str]
    key: Optional[str]
    #: For a request: the status its recorded response has.
    expected_status: Optional[int] = None


def parse_line(text: str) -> Tuple[str, Optional[str], Dict[str, str]]:
    """'SET key flags=0 exp=1800 bytes=20 opaque=2' -> ('SET', 'key', {...}); msg='…' kept whole."""
    op, _, rest = text.partition(" ")
    fields: Dict[str, str] = {}
    msg = re.search(r"msg='([^']*)'", rest)
    if msg:
        fields["msg"] = msg.group(1)
        rest = rest[:msg.start()] + rest[msg.end():]
    key = None
    for token in rest.split():
        if "=" in token:
            name, _, value = token.partition("=")
            fields[name] = value
        elif key is None:
            key = token
    return op, key, fields


def parse_sections(path: Path) -> Dict[str, List[Event]]:
    sections: Dict[str, List[Event]] = {}
    current: Optional[List[Event]] = None
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        m = SECTION_RE.match(raw)
        if m and m.group(1) != "columns":
            current = sections.setdefault(m.group(1), [])
            continue
        m = LINE_RE.match(raw)
        if not m or current is None:
            continue
        _t, node, port, direction, text = m.groups()
        op, key, fields = parse_line(text)
        current.append(Event(lineno, node, f"{node}/c{port}", direction == "->", op, fields, key))
    # Responses on a connection come in request order: give each request its recorded status.
    for events in sections.values():
        open_requests: Dict[str, List[Event]] = {}
        for event in events:
            if event.outgoing:
                open_requests.setdefault(event.conn, []).append(event)
            else:
                open_requests[event.conn].pop(0).expected_status = STATUSES[event.fields["status"]]
    return sections


def request_bytes(op: str, key: bytes, opaque: int, value: bytes = b"", flags: int = 0, exptime: int = 0) -> bytes:
    extras = struct.pack(">II", flags, exptime) if op in ("SET", "ADD") else b""
    return struct.pack(">BBHBBHIIQ", 0x80, OPCODES[op], len(key), len(extras), 0, 0,
                       len(extras) + len(key) + len(value), opaque, 0) + extras + key + value


class Connection:
    def __init__(self, address: Tuple[str, int]):
        self.sock = socket.create_connection(address, timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def read_response(self) -> Tuple[int, int, int, int, bytes, bytes]:
        """(opcode, status, opaque, flags, value, error message)."""
        header = self._read(24)
        magic, opcode, key_len, extras_len, _dt, status, body_len, opaque, _cas = struct.unpack(">BBHBBHIIQ", header)
        assert magic == 0x81, f"bad response magic {magic:#x}"
        body = self._read(body_len)
        flags = struct.unpack(">I", body[:4])[0] if extras_len == 4 else 0
        value = body[extras_len + key_len:]
        return opcode, status, opaque, flags, value if status == 0 else b"", value if status != 0 else b""

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "connection closed by the server"
            data += chunk
        return data


@pytest.fixture(scope="module")
def binary_traffic(msm_fixtures: Path) -> Dict[str, List[Event]]:
    path = msm_fixtures / "traffic.txt"
    assert path.is_file(), f"msm traffic capture not found at {path}"
    return parse_sections(path)


@pytest.mark.parametrize("section_name", BINARY_SECTIONS)
def test_replay_msm_binary_traffic(binary_traffic, section_name, server_factory):
    events = binary_traffic[section_name]
    assert len(events) > 40, f"section {section_name} is missing or nearly empty"
    servers = {node: server_factory() for node in sorted({e.node for e in events})}
    conns: Dict[str, Connection] = {}
    # (node, key) -> (value, flags, time the SET was sent, ttl, time it was answered)
    stored: Dict[Tuple[str, str], Tuple[bytes, int, float, int, Optional[float]]] = {}
    pending: Dict[str, List[Event]] = {}
    seq = 0
    started = time.monotonic()
    checked = 0
    for event in events:
        assert time.monotonic() - started < SECTION_BUDGET, "replay took too long"
        conn = conns.get(event.conn) or conns.setdefault(event.conn, Connection(servers[event.node].address))
        if event.outgoing:
            entry = stored.get((event.node, event.key))
            if event.expected_status == 0x0001 and event.op in ("GET", "DELETE") and entry and entry[3] <= 10:
                # The capture expects the key to have expired: check the server expires it in time.
                wait_for_expiry(servers[event.node].address, event.key.encode(), entry)
                stored.pop((event.node, event.key), None)
            key = event.key.encode()
            opaque = int(event.fields["opaque"])
            value = b""
            if event.op in ("SET", "ADD"):
                seq += 1
                length = int(event.fields["bytes"])
                value = (b"%08d" % seq + bytes(range(256)) * (length // 256 + 1))[:length]
                if event.op == "SET":
                    stored[(event.node, event.key)] = (value, int(event.fields["flags"]), time.monotonic(), int(event.fields["exp"]), None)
            conn.sock.sendall(request_bytes(event.op, key, opaque, value, int(event.fields.get("flags", 0)), int(event.fields.get("exp", 0))))
            pending.setdefault(event.conn, []).append(event)
            continue
        request = pending[event.conn].pop(0)
        expected_status = STATUSES[event.fields["status"]]
        entry = stored.get((request.node, request.key))
        opcode, status, opaque, flags, value, message = conn.read_response()
        where = f"line {event.lineno}: {request.op} {request.key}"
        assert opcode == OPCODES[event.op] and opaque == int(event.fields["opaque"]), where
        assert status == expected_status, f"{where}: status {status:#06x}, recorded {event.fields['status']}"
        if "msg" in event.fields:
            assert message.decode() == event.fields["msg"], where
        if request.op == "GET" and status == 0:
            assert entry, f"{where}: a hit on a key this replay never stored"
            assert value == entry[0] and flags == int(event.fields["flags"]) == entry[1], where
            assert len(value) == int(event.fields["bytes"]), where
        if request.op == "SET" and status == 0 and entry:
            stored[(request.node, request.key)] = entry[:4] + (time.monotonic(),)
        if request.op == "DELETE" and status == 0:
            stored.pop((request.node, request.key), None)
        checked += 1
    assert checked > 20 and not any(pending.values())
    for conn in conns.values():
        conn.sock.close()


def wait_for_expiry(address: Tuple[str, int], key: bytes, entry: Tuple[bytes, int, float, int]) -> None:
    # The server's deadline lies between set_at + ttl and answered_at + ttl.
    _value, _flags, set_at, ttl, answered_at = entry
    assert answered_at is not None, f"{key!r}: the SET was never answered (replay bug)"
    probe = Connection(address)
    try:
        deadline = answered_at + ttl + 2.0
        while True:
            probe.sock.sendall(request_bytes("GET", key, 0xFFFF))
            status = probe.read_response()[1]
            if status == 0x0001:
                elapsed = time.monotonic() - set_at
                assert elapsed >= ttl - 1.0, f"{key!r} expired after {elapsed:.2f}s, TTL {ttl}s"
                return
            assert time.monotonic() < deadline, f"{key!r} still present {ttl + 2}s after a SET with TTL {ttl}s was answered"
            time.sleep(0.05)
    finally:
        probe.sock.close()
