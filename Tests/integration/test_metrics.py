"""``--metrics-port``: /metrics scraped over HTTP and parsed as the Prometheus
text format, /health on a standalone node and on a backup whose primary is
killed and comes back, and the refusals of the HTTP listener."""

from __future__ import annotations

import math
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Tuple

import pytest

from conftest import RawClient, poll_until, tandemd_binary
from nodes import Node, nodes  # noqa: F401  (nodes is a fixture)

pytestmark = pytest.mark.tandemd_only

try:  # the reference parser, when pip could install it (scripts/test tries)
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # pragma: no cover - exercised only without prometheus-client
    text_string_to_metric_families = None

METRICS_RE = re.compile(rb"metrics on (\S+):(\d+)")
HTTP_TIMEOUT = 10.0

SampleKey = Tuple[str, FrozenSet[Tuple[str, str]]]


def metrics_port(log_path: Path, timeout: float = 30.0) -> int:
    """The port of the node's last ``metrics on HOST:PORT`` log line."""
    def found() -> Optional[int]:
        matches = METRICS_RE.findall(log_path.read_bytes()) if log_path.exists() else []
        return int(matches[-1][1]) if matches else None
    return poll_until(found, timeout, what=f"'metrics on HOST:PORT' in {log_path}")


def http(port: int, path: str, method: str = "GET", data: Optional[bytes] = None) -> Tuple[int, Dict[str, str], str]:
    """(status, lowercased headers, body) of one request; error statuses are answers too."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=data)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read().decode()


def raw_http(port: int, request: bytes) -> bytes:
    """Sends raw bytes and reads until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------
# The text format, read strictly (every line), and by prometheus_client
# --------------------------------------------------------------------------

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE_RE = re.compile(rf"^({NAME})(?:\{{((?:{LABEL})(?:,{LABEL})*)?,?\}})? (\S+)(?: (-?\d+))?$")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
VALUE_RE = re.compile(r"^(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]Inf|NaN)$")


def parse_strict(text: str) -> Tuple[Dict[str, str], Dict[SampleKey, float]]:
    """(family -> type, (sample name, labels) -> value); AssertionError on any bad line."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    types: Dict[str, str] = {}
    helps: Dict[str, str] = {}
    samples: Dict[SampleKey, float] = {}
    current = None
    closed = set()
    for line in text.split("\n")[:-1]:
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            kind, name, rest = line[2:6], *line[7:].split(" ", 1)
            assert re.fullmatch(NAME, name), line
            if kind == "HELP":
                assert name not in helps, f"second HELP: {line}"
                helps[name] = rest
            else:
                assert rest in ("counter", "gauge", "histogram", "summary", "untyped"), line
                assert name not in types, f"second TYPE: {line}"
                types[name] = rest
                if current:
                    closed.add(current)
                current = name
            continue
        if line.startswith("#"):
            continue
        match = SAMPLE_RE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.group(1), match.group(2) or "", match.group(3)
        assert VALUE_RE.match(value), f"bad value in {line!r}"
        family = name if name in types else re.sub(r"_(bucket|sum|count)$", "", name)
        assert family in types, f"no TYPE before {line!r}"
        assert family == current and family not in closed, f"{family} is interleaved with another family"
        key = (name, frozenset(LABEL_RE.findall(labels)))
        assert key not in samples, f"duplicate series {line!r}"
        samples[key] = float(value)
    for name in types:
        if name.startswith("tandem_"):
            assert helps.get(name), f"{name} has no HELP"
    for name, kind in types.items():
        # OpenMetrics names a counter without its _total: x_total and a family x would clash.
        if kind == "counter" and name.endswith("_total"):
            assert name[:-len("_total")] not in types, f"{name} clashes with {name[:-len('_total')]}"
    for name, kind in types.items():
        if kind != "histogram":
            continue
        series: Dict[FrozenSet, List[Tuple[float, float]]] = {}
        for (sample, labels), value in samples.items():
            if sample == name + "_bucket":
                le = dict(labels)["le"]
                rest = frozenset(item for item in labels if item[0] != "le")
                series.setdefault(rest, []).append((math.inf if le == "+Inf" else float(le), value))
        assert series, f"{name} has no buckets"
        for labels, buckets in series.items():
            buckets.sort()
            assert buckets[-1][0] == math.inf, f"{name} has no +Inf bucket"
            counts = [count for _, count in buckets]
            assert counts == sorted(counts), f"{name} buckets are not cumulative"
            assert samples[(name + "_count", labels)] == counts[-1], f"{name}: _count differs from +Inf"
            assert (name + "_sum", labels) in samples
    return types, samples


def scrape(port: int) -> Tuple[Dict[str, str], Dict[SampleKey, float]]:
    status, headers, body = http(port, "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4"), headers
    types, samples = parse_strict(body)
    if text_string_to_metric_families is not None:
        # The reference parser agrees on every family's type and every value.
        seen = 0
        for family in text_string_to_metric_families(body):
            counter = family.type == "counter" and family.name + "_total" in types
            expected = types[family.name + "_total"] if counter else types.get(family.name)
            assert expected == family.type, (family.name, family.type, expected)
            for sample in family.samples:
                value = samples[(sample.name, frozenset(sample.labels.items()))]
                assert value == sample.value or (math.isnan(value) and math.isnan(sample.value))
                seen += 1
        assert seen == len(samples)
    return types, samples


def value(samples: Dict[SampleKey, float], name: str, **labels: str) -> Optional[float]:
    return samples.get((name, frozenset(labels.items())))


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


def test_metrics_after_traffic(server_factory):
    server = server_factory("--metrics-port", "0")
    port = metrics_port(server.log_path)
    _, before = scrape(port)
    assert value(before, "tandem_healthy") == 1
    with RawClient(server.address) as c:
        for i in range(30):
            assert c.store(b"set", b"k%d" % i, b"v" * 100) == b"STORED"
        assert c.store(b"add", b"k0", b"x") == b"NOT_STORED"
        assert len(c.get(*[b"k%d" % i for i in range(30)], b"nope")) == 30
        assert c.call(b"delete k1") == b"DELETED"
        assert c.call(b"delete k1") == b"NOT_FOUND"
        assert c.call(b"touch k2 100") == b"TOUCHED"
        assert c.call(b"incr k3 1") == b"CLIENT_ERROR cannot increment or decrement non-numeric value"
        types, after = scrape(port)
        assert value(after, "tandem_open_connections") == 1
    assert types["tandem_commands_total"] == "counter"
    assert types["tandem_request_duration_seconds"] == "histogram"
    assert types["tandem_items"] == "gauge"
    assert types["tandem_role"] == "gauge"
    assert value(after, "tandem_commands_total", command="get", result="hit") == 30
    assert value(after, "tandem_commands_total", command="get", result="miss") == 1
    assert value(after, "tandem_commands_total", command="store", result="stored") == 30
    assert value(after, "tandem_commands_total", command="store", result="not_stored") == 1
    assert value(after, "tandem_commands_total", command="delete", result="hit") == 1
    assert value(after, "tandem_commands_total", command="delete", result="miss") == 1
    assert value(after, "tandem_commands_total", command="touch", result="hit") == 1
    assert value(after, "tandem_items") == 29
    assert value(after, "tandem_item_bytes") > 29 * 100
    assert value(after, "tandem_connections_total") >= 1
    assert value(after, "tandem_persistence_enabled") == 0
    assert value(after, "tandem_role", role="primary") == 1
    assert value(after, "tandem_role", role="backup") == 0
    assert value(after, "tandem_epoch") is not None
    assert value(after, "tandem_uptime_seconds") >= 0
    writes = value(after, "tandem_request_duration_seconds_count", kind="write")
    reads = value(after, "tandem_request_duration_seconds_count", kind="read")
    assert writes >= 35 and reads >= 1, (writes, reads)
    assert value(after, "tandem_received_bytes_total") > value(before, "tandem_received_bytes_total")


def test_health_and_what_the_listener_refuses(server_factory):
    server = server_factory("--metrics-port", "0")
    port = metrics_port(server.log_path)
    status, headers, body = http(port, "/health")
    assert status == 200 and body.startswith("ok primary epoch "), body
    assert http(port, "/nope")[0] == 404
    status, headers, _ = http(port, "/metrics", method="POST", data=b"")
    assert status == 405 and headers.get("allow") == "GET, HEAD"
    assert http(port, "/health", method="PUT", data=b"hello")[0] == 413
    assert raw_http(port, b"\x16\x03\x01 not http at all\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw_http(port, b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")[:12] in (b"HTTP/1.1 400", b"HTTP/1.1 431")
    # Many idle connections: the listener caps them, and neither it nor the node suffers.
    idle = [socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT) for _ in range(40)]
    try:
        with RawClient(server.address) as c:
            assert c.store(b"set", b"still", b"here") == b"STORED"
    finally:
        for sock in idle:
            sock.close()
    def answers() -> bool:
        try:
            return http(port, "/health")[0] == 200
        except OSError:  # refused while the closed connections' slots are being released
            return False
    poll_until(answers, 15, what="/health to answer again after the idle connections")


def test_persistence_metrics(nodes, tmp_path: Path):
    node = nodes(tmp_path / "data", "--metrics-port", "0")
    port = metrics_port(node.log_path)
    with node.client() as c:
        for i in range(200):
            assert c.store(b"set", b"p%d" % i, b"x" * 500) == b"STORED"
    node.wait_flushed()

    def flushed():
        _, samples = scrape(port)
        return samples if (value(samples, "tandem_persistence_flush_duration_seconds_count") or 0) >= 1 else None
    samples = poll_until(flushed, 10, what="a commit in tandem_persistence_flush_duration_seconds")
    assert value(samples, "tandem_persistence_enabled") == 1
    assert value(samples, "tandem_persistence_pending_changes") == 0
    assert value(samples, "tandem_persistence_errors_total") == 0
    assert value(samples, "tandem_persistence_failing") == 0
    assert value(samples, "tandem_persistence_flushes_total") >= 1
    assert value(samples, "tandem_persistence_flush_duration_seconds_sum") > 0
    assert node.terminate() == 0


def test_health_of_a_backup_without_failover_follows_its_primary(nodes, tmp_path: Path):
    primary = nodes(tmp_path / "primary", "--node-name", "P", "--metrics-port", "0")
    backup = nodes(tmp_path / "backup", "--role", "backup", "--peer", primary.wire_address, "--node-name", "B",
                   "--failover-after", "0", "--metrics-port", "0")
    primary_metrics, backup_metrics = metrics_port(primary.log_path), metrics_port(backup.log_path)

    def health(port: int) -> Tuple[int, str]:
        status, _, body = http(port, "/health")
        return status, body

    poll_until(lambda: health(backup_metrics)[0] == 200, 30, what="the backup to report healthy")
    assert health(backup_metrics)[1].startswith(f"ok backup following {primary.wire_address}")
    poll_until(lambda: value(scrape(primary_metrics)[1], "tandem_replication_state", state="sync") == 1, 30,
               what="the primary to report sync")
    _, samples = scrape(backup_metrics)
    assert value(samples, "tandem_role", role="backup") == 1
    assert value(samples, "tandem_replication_link_up") == 1

    # The primary dies: a backup that may not fail over cannot take writes.
    ports = (primary.port, primary.wire_port)
    primary.kill()
    poll_until(lambda: health(backup_metrics)[0] == 503, 15, what="/health on the backup to turn 503")
    status, body = health(backup_metrics)
    assert "failover is off" in body, body
    _, samples = scrape(backup_metrics)
    assert value(samples, "tandem_healthy") == 0
    assert value(samples, "tandem_replication_link_up") == 0
    assert value(samples, "tandem_role", role="backup") == 1

    # It comes back on the same ports: the backup follows it again.
    primary = nodes(tmp_path / "primary", "--node-name", "P", "--metrics-port", "0",
                    "-p", str(ports[0]), "--wire-port", str(ports[1]))
    poll_until(lambda: health(backup_metrics)[0] == 200, 30, what="/health on the backup to turn 200 again")
    _, samples = scrape(backup_metrics)
    assert value(samples, "tandem_healthy") == 1
    assert value(samples, "tandem_replication_link_state", state="streaming") == 1
    assert health(metrics_port(primary.log_path))[0] == 200
    assert backup.terminate() == 0
    assert primary.terminate() == 0


def test_health_while_joining_then_failing_over(tmp_path: Path):
    """A backup whose peer never answers: 503 while it compares (joining), 200
    while it waits to fail over, then 200 as the primary it became."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    log_path = tmp_path / "joining.log"
    args = [str(tandemd_binary()), "-p", "0", "--wire-port", "0", "--no-persistence", "--metrics-port", "0",
            "--role", "backup", "--peer", f"127.0.0.1:{dead_port}", "--failover-after", "3000"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        port = metrics_port(log_path)
        # The memcached port is not open yet: the node is still looking for its peer.
        status, _, body = http(port, "/health")
        if b"listening on" not in log_path.read_bytes():
            assert status == 503 and body.startswith("joining"), (status, body)
        poll_until(lambda: b"listening on" in log_path.read_bytes(), 30, what="the memcached port to open")
        poll_until(lambda: http(port, "/health")[2].startswith("ok primary epoch "), 30,
                   what="the backup to fail over and say so")
        _, samples = scrape(port)
        assert value(samples, "tandem_role", role="primary") == 1
        assert value(samples, "tandem_failovers_total") == 1 or value(samples, "tandem_promotions_total") >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log_path.read_text(errors="replace")[-3000:]
