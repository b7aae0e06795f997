"""SASL PLAIN over the binary protocol (--sasl-users), as msm authenticates."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import read_until_closed, tandemd_binary
from test_replication import binary_request, binary_response
from test_spymemcached import EXPECTED_CHECKS, SPY_JAR, spycheck_classes  # noqa: F401  (a fixture)

pytestmark = pytest.mark.tandemd_only

AUTH_ERROR = 0x0020


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text("# msm's account\nmsm:s3cret\n\nother:pa:ss\n")
    path.chmod(0o600)
    return path


def test_spymemcached_authenticates_with_plain(spycheck_classes, server_factory, users_file):
    server = server_factory("--sasl-users", str(users_file))
    cmd = [shutil.which("java"), "-cp", f"{SPY_JAR}:{spycheck_classes}", "SpyCheck",
           server.host, str(server.port), "binary", "msm", "s3cret"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=180)
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0 and f"SUMMARY {EXPECTED_CHECKS}/{EXPECTED_CHECKS}" in out, out


def test_nothing_is_served_before_authentication_and_a_wrong_password_is_refused(server_factory, users_file):
    server = server_factory("--sasl-users", str(users_file))
    sock = socket.create_connection(server.address, timeout=10)
    sock.sendall(binary_request(0x00, b"k", opaque=1))  # GET before authenticating
    assert binary_response(sock)[:3] == (0x00, AUTH_ERROR, 1)
    sock.sendall(binary_request(0x01, b"k", struct.pack(">II", 0, 0), b"v", opaque=2))  # SET too
    assert binary_response(sock)[:3] == (0x01, AUTH_ERROR, 2)
    sock.sendall(binary_request(0x20, opaque=3))  # SASL_LIST_MECHS
    assert binary_response(sock) == (0x20, 0, 3, b"PLAIN")
    sock.sendall(binary_request(0x21, b"PLAIN", value=b"\0msm\0wrong", opaque=4))
    assert binary_response(sock)[:3] == (0x21, AUTH_ERROR, 4)
    sock.sendall(binary_request(0x00, b"k", opaque=5))
    assert binary_response(sock)[:3] == (0x00, AUTH_ERROR, 5)
    sock.sendall(binary_request(0x21, b"PLAIN", value=b"\0nobody\0s3cret", opaque=6))
    assert binary_response(sock)[:3] == (0x21, AUTH_ERROR, 6)
    # A password may contain ':' (only the first one separates user and password).
    sock.sendall(binary_request(0x21, b"PLAIN", value=b"\0other\0pa:ss", opaque=7))
    assert binary_response(sock)[:3] == (0x21, 0, 7)
    sock.sendall(binary_request(0x00, b"k", opaque=8))
    assert binary_response(sock)[:3] == (0x00, 0x0001, 8)  # authenticated: an ordinary miss
    sock.close()


def test_text_connections_are_refused(server_factory, users_file):
    server = server_factory("--sasl-users", str(users_file))
    sock = socket.create_connection(server.address, timeout=10)
    sock.sendall(b"get k\r\n")
    data = read_until_closed(sock)
    assert data.startswith(b"CLIENT_ERROR unauthenticated"), data
    assert b"VALUE" not in data and b"END" not in data


def test_a_bad_users_file_stops_start_up_naming_the_line(tmp_path: Path):
    bad = tmp_path / "users"
    bad.write_text("msm:s3cret\nno colon here\n")
    result = subprocess.run([str(tandemd_binary()), "-p", "0", "--wire-port", "0", "--no-persistence",
                             "--sasl-users", str(bad)], capture_output=True, timeout=30)
    assert result.returncode != 0
    assert f"{bad}, line 2".encode() in result.stderr, result.stderr
