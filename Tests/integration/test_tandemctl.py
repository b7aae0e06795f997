"""tandemctl against real nodes: status (table, JSON, verdict and exit code), stats, ping, errors."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import List

import pytest

from conftest import tandemd_binary
from nodes import nodes  # noqa: F401  (a fixture)
from test_replication import start_pair

pytestmark = pytest.mark.tandemd_only


def tandemctl(*args: str, env: dict = None) -> subprocess.CompletedProcess:
    binary = tandemd_binary().parent / "tandemctl"
    assert binary.is_file(), f"{binary} not found: swift build builds it"
    return subprocess.run([str(binary), *args], capture_output=True, timeout=30,
                          env={**os.environ, **(env or {})})


def test_status_of_a_pair_in_sync_is_healthy_on_both_nodes(nodes, tmp_path: Path):
    primary, backup = start_pair(nodes, tmp_path)
    with primary.client() as c:
        assert c.store(b"set", b"k", b"v") == b"STORED"
    result = tandemctl("status", "--port", str(primary.wire_port), "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["verdict"] == "healthy" and status["role"] == "primary" and status["replication_state"] == "sync"
    assert status["curr_items"] == "1" and status["peer_name"] == "B"
    backup_status = json.loads(tandemctl("status", "--port", str(backup.wire_port), "--json").stdout)
    assert backup_status["role"] == "backup" and backup_status["verdict"] == "healthy"
    assert backup_status["replication_id"] == status["replication_id"]
    table = tandemctl("status", env={"TANDEM_PORT": str(primary.wire_port)})
    assert table.returncode == 0 and table.stdout.decode().splitlines()[0].split() == ["verdict", "healthy"]
    stats = json.loads(tandemctl("stats", "--port", str(primary.wire_port), "--json").stdout)
    assert int(stats["cmd_set"]) >= 1 and stats["role"] == "primary"
    ping = tandemctl("ping", "--port", str(backup.wire_port), "--json")
    assert ping.returncode == 0 and json.loads(ping.stdout)["role"] == "backup"


def test_a_primary_without_backup_is_degraded_with_exit_code_6(nodes, tmp_path: Path):
    node = nodes(tmp_path / "solo")
    result = tandemctl("status", "--port", str(node.wire_port), "--json")
    assert result.returncode == 6
    status = json.loads(result.stdout)
    assert status["verdict"] == "degraded" and "no backup" in status["reason"]


def test_an_unreachable_node_is_exit_code_3_with_one_line_that_says_what_to_do():
    result = tandemctl("status", "--port", "1")
    assert result.returncode == 3
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "cannot reach a Tandem node at 127.0.0.1:1" in lines[0] and "--wire-port" in lines[0]


def test_export_writes_values_that_no_single_frame_could_hold(nodes, tmp_path: Path):
    """18 values of 1,000,000 bytes are more than one 16 MiB frame: pages are bounded by bytes."""
    node = nodes(tmp_path / "big", "-I", "1m")
    value = (bytes(range(256)) * 3907)[:1_000_000]
    assert len(value) == 1_000_000
    with node.client() as c:
        for index in range(18):
            assert c.store(b"set", b"big:%d" % index, value) == b"STORED"
    result = tandemctl("sessions", "export", "-", "--port", str(node.wire_port))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert sorted(line["key"] for line in lines) == sorted(f"big:{index}" for index in range(18))
    assert all(base64.b64decode(line["value"]) == value for line in lines)
    assert "exported 18 sessions" in result.stderr.decode()


def test_import_stores_past_rejected_sessions_and_prints_each_reject(nodes, tmp_path: Path):
    node = nodes(tmp_path / "imports", "-I", "1k")
    good = base64.b64encode(b"fine").decode()
    rows = [
        {"key": "ok:1", "value": good, "flags": 3, "deadline": 0},
        {"key": "has space", "value": good, "flags": 0, "deadline": 0},
        {"key": "k" * 251, "value": good, "flags": 0, "deadline": 0},
        {"key": "tab\there", "value": good, "flags": 0, "deadline": 0},
        {"key": "too:big", "value": base64.b64encode(b"x" * 1025).decode(), "flags": 0, "deadline": 0},
        {"key": "ok:2", "value": good, "flags": 4, "deadline": 0},
    ]
    source = tmp_path / "mixed.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))

    result = tandemctl("sessions", "import", str(source), "--port", str(node.wire_port))
    assert result.returncode == 5, result.stderr
    assert result.stdout.decode().strip() == "stored 2, unchanged 0, expired 0, rejected 4"
    errors = result.stderr.decode().splitlines()
    assert any("line 2: has space rejected (invalidKey)" in line for line in errors), errors
    assert any("line 3:" in line and "(invalidKey)" in line for line in errors), errors
    assert any("line 4:" in line and "(invalidKey)" in line for line in errors), errors
    assert any("line 5: too:big rejected (tooLarge)" in line and "1025 bytes" in line for line in errors), errors
    assert "4 sessions rejected" in errors[-1]
    with node.client() as c:
        values = c.get(b"ok:1", b"ok:2")
        assert values[b"ok:1"].data == b"fine" and values[b"ok:2"].data == b"fine"
        # A key with a space is not stored where memcached clients could not reach it.
        listed = tandemctl("sessions", "list", "--json", "--port", str(node.wire_port))
        assert sorted(s["key"] for s in json.loads(listed.stdout)["sessions"]) == ["ok:1", "ok:2"]

    again = tandemctl("sessions", "import", str(source), "--json", "--port", str(node.wire_port))
    assert again.returncode == 5
    report = json.loads(again.stdout)
    assert report["stored"] == 0 and report["unchanged"] == 2
    assert [(r["line"], r["reason"]) for r in report["rejected"]] == [
        (2, "invalidKey"), (3, "invalidKey"), (4, "invalidKey"), (5, "tooLarge")]
