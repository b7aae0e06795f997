"""The wire port's shared secret with real processes: a pair that shares it
replicates, tandemctl must give it, and tandemd will not listen beyond loopback
without it (unless told --insecure)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import STARTUP_TIMEOUT, poll_until, tandemd_binary
from nodes import nodes  # noqa: F401  (a fixture)
from test_replication import start_pair
from test_tandemctl import tandemctl

pytestmark = pytest.mark.tandemd_only


def secret_file(tmp_path: Path, name: str, secret: bytes, mode: int = 0o600) -> Path:
    """A secret file as an operator makes one: `openssl rand -hex 32 > file; chmod 600 file`."""
    path = tmp_path / name
    # Created with the final mode: the secret is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(secret + b"\n")
    os.chmod(path, mode)  # the umask may have narrowed it
    return path


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, result.stderr.decode()
    return lines[0]


def run_tandemd(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Runs a tandemd that is expected to refuse to start."""
    return subprocess.run([str(tandemd_binary()), "-p", "0", "--wire-port", "0", "--no-persistence", *args],
                          capture_output=True, timeout=STARTUP_TIMEOUT, cwd=tmp_path, stdin=subprocess.DEVNULL)


def test_a_pair_with_the_same_secret_replicates_and_tandemctl_needs_it(nodes, tmp_path: Path):
    primary_secret = secret_file(tmp_path, "primary.secret", b"a3f1c2d4e5b6a7980112233445566778")
    backup_secret = secret_file(tmp_path, "backup.secret", b"a3f1c2d4e5b6a7980112233445566778")
    primary, backup = start_pair(nodes, tmp_path, primary_args=("--secret-file", str(primary_secret)),
                                 backup_args=("--secret-file", str(backup_secret)))
    with primary.client() as p:
        assert p.store(b"set", b"session:1", b"alice", flags=3) == b"STORED"
    with backup.client() as b:
        got = b.get(b"session:1")
        assert got[b"session:1"].data == b"alice" and got[b"session:1"].flags == 3

    # The right secret: exit 0, by flag or by environment.
    ok = tandemctl("status", "--port", str(primary.wire_port), "--secret-file", str(primary_secret), "--json")
    assert ok.returncode == 0, ok.stderr
    status = json.loads(ok.stdout)
    assert status["verdict"] == "healthy" and status["peer_name"] == "B"
    by_env = tandemctl("ping", "--port", str(backup.wire_port), env={"TANDEM_SECRET_FILE": str(backup_secret)})
    assert by_env.returncode == 0, by_env.stderr

    # No secret: exit 4, saying to give one.
    missing = tandemctl("status", "--port", str(primary.wire_port), env={"TANDEM_SECRET_FILE": ""})
    assert missing.returncode == 4
    line = one_line(missing)
    assert "authentication required" in line and "--secret-file" in line

    # A wrong secret: exit 4, naming the file.
    wrong = secret_file(tmp_path, "wrong.secret", b"0000000000000000ffffffffffffffff")
    refused = tandemctl("status", "--port", str(primary.wire_port), "--secret-file", str(wrong))
    assert refused.returncode == 4
    line = one_line(refused)
    assert "authentication failed" in line and str(wrong) in line and "refused the secret" in line

    # A secret file others can read is not used at all.
    loose = secret_file(tmp_path, "loose.secret", b"a3f1c2d4e5b6a7980112233445566778", mode=0o644)
    unusable = tandemctl("status", "--port", str(primary.wire_port), "--secret-file", str(loose))
    assert unusable.returncode == 1
    assert "chmod 600" in one_line(unusable)


def test_a_backup_with_another_secret_does_not_replicate(nodes, tmp_path: Path):
    primary_secret = secret_file(tmp_path, "primary.secret", b"a3f1c2d4e5b6a7980112233445566778")
    backup_secret = secret_file(tmp_path, "backup.secret", b"b3f1c2d4e5b6a7980112233445566778")
    primary = nodes(tmp_path / "primary", "--node-name", "P", "--secret-file", str(primary_secret))
    backup = nodes(tmp_path / "backup", "--role", "backup", "--peer", primary.wire_address, "--node-name", "B",
                   "--secret-file", str(backup_secret))
    poll_until(lambda: "is the secret the same on both nodes?" in backup.log(), 15,
               what="the backup to log that the primary refused its proof")
    assert primary.stats()["replication_state"] == "async_no_backup"
    assert backup.stats()["link_state"] != "streaming"


def test_a_bad_secret_file_stops_tandemd_with_one_line(tmp_path: Path):
    loose = secret_file(tmp_path, "loose.secret", b"a3f1c2d4e5b6a7980112233445566778", mode=0o640)
    result = run_tandemd(tmp_path, "--secret-file", str(loose))
    assert result.returncode != 0
    assert f"chmod 600 {loose}" in result.stderr.decode()

    short = secret_file(tmp_path, "short.secret", b"tooshort")
    result = run_tandemd(tmp_path, "--secret-file", str(short))
    assert result.returncode != 0
    assert str(short) in result.stderr.decode() and "at least 16" in result.stderr.decode()

    result = run_tandemd(tmp_path, "--secret-file", str(tmp_path / "missing"))
    assert result.returncode != 0
    assert f"cannot read the secret file {tmp_path / 'missing'}" in result.stderr.decode()


def test_tandemd_refuses_a_non_loopback_address_without_a_secret(tmp_path: Path):
    result = run_tandemd(tmp_path, "-l", "0.0.0.0")
    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert "refusing to listen on 0.0.0.0 without --secret-file" in stderr
    assert "--insecure" in stderr
    assert "listening on" not in stderr


@pytest.mark.parametrize("address", ["127.0.0.2", "localhost", "::1"])
def test_loopback_addresses_need_no_secret(nodes, tmp_path: Path, address: str):
    node = nodes(tmp_path / "node", "-l", address)
    assert node.proc.poll() is None


def test_insecure_allows_any_address(nodes, tmp_path: Path):
    node = nodes(tmp_path / "node", "-l", "0.0.0.0", "--insecure")
    # Reached only over loopback: 0.0.0.0 includes it.
    with node.client() as c:
        assert c.store(b"set", b"k", b"v") == b"STORED"
    result = tandemctl("ping", "--port", str(node.wire_port))
    assert result.returncode == 0, result.stderr


def test_a_secret_allows_any_address(nodes, tmp_path: Path):
    secret = secret_file(tmp_path, "node.secret", b"a3f1c2d4e5b6a7980112233445566778")
    node = nodes(tmp_path / "node", "-l", "0.0.0.0", "--secret-file", str(secret))
    result = tandemctl("ping", "--port", str(node.wire_port), "--secret-file", str(secret))
    assert result.returncode == 0, result.stderr
