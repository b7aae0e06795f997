"""tandemctl against real nodes: status (table, JSON, verdict and exit code), stats, ping, errors."""

from __future__ import annotations

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
