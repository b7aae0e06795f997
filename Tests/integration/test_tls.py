"""TLS on the memcached and wire ports, with real processes and real clients.

A throwaway CA, node and client certificates are made with the ``openssl``
CLI (the commands deploy/README.md gives operators), plus a second, unrelated
CA: pymemcache and raw sockets over TLS (text and binary protocol), a
plaintext client refused without disturbing anyone else, a pair replicating
over mutual TLS and one whose backup holds a certificate of the other CA,
tandemctl with and without the right TLS options, bad files, and SIGHUP
reloading a renewed certificate.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import pytest
from pymemcache.client.base import Client

from conftest import SOCKET_TIMEOUT, STARTUP_TIMEOUT, ConnectionClosed, RawClient, poll_until, tandemd_binary
from nodes import Node, nodes  # noqa: F401  (a fixture)
from test_metrics import metrics_port
from test_replication import start_pair, wait_in_sync
from test_tandemctl import tandemctl

pytestmark = pytest.mark.tandemd_only


# ---------------------------------------------------------------- certificates


def openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    assert binary, "the openssl CLI is needed (Debian: openssl; scripts/test installs it)"
    result = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"openssl {' '.join(args)}: {result.stderr}"


@dataclass(frozen=True)
class Pair:
    """A certificate and its private key (PEM files)."""

    cert: Path
    key: Path

    def flags(self) -> Tuple[str, ...]:
        return ("--tls-cert", str(self.cert), "--tls-key", str(self.key))


def make_ca(directory: Path, name: str, subject: str) -> Pair:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={subject}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=directory)
    (directory / f"{name}.key").chmod(0o600)
    return Pair(directory / f"{name}.pem", directory / f"{name}.key")


def make_certificate(directory: Path, name: str, ca: Pair, subject: str) -> Pair:
    """A certificate for a node (server and client of the wire port) signed by ``ca``."""
    (directory / f"{name}.ext").write_text(
        "basicConstraints = CA:FALSE\n"
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n"
        "extendedKeyUsage = serverAuth, clientAuth\n")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={subject}", cwd=directory)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
            "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=directory)
    (directory / f"{name}.key").chmod(0o600)
    return Pair(directory / f"{name}.pem", directory / f"{name}.key")


@dataclass(frozen=True)
class PKI:
    ca: Pair
    a: Pair          # node a (and the node of the single-node tests)
    b: Pair          # node b
    admin: Pair      # tandemctl's client certificate
    other_ca: Pair   # a CA nobody trusts
    rogue: Pair      # a node certificate signed by other_ca

    def context(self, ca: Path = None) -> ssl.SSLContext:
        """What a memcached client verifies the node with (hostname/IP checked)."""
        return ssl.create_default_context(cafile=str(ca or self.ca.cert))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "ca", "Tandem test CA")
    other_ca = make_ca(directory, "other-ca", "Some other CA")
    return PKI(
        ca=ca,
        a=make_certificate(directory, "a", ca, "tandem-a"),
        b=make_certificate(directory, "b", ca, "tandem-b"),
        admin=make_certificate(directory, "admin", ca, "admin"),
        other_ca=other_ca,
        rogue=make_certificate(directory, "rogue", other_ca, "tandem-rogue"),
    )


# ---------------------------------------------------------------- clients


class TLSRawClient(RawClient):
    """RawClient over TLS: the memcached text protocol inside a verified TLS connection."""

    def __init__(self, address: Tuple[str, int], context: ssl.SSLContext, timeout: float = SOCKET_TIMEOUT):
        raw = socket.create_connection(address, timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(raw, server_hostname=address[0])
        self.buf = bytearray()


def tls_stats(address: Tuple[str, int], context: ssl.SSLContext) -> Dict[str, str]:
    with TLSRawClient(address, context) as c:
        return {k.decode(): v.decode() for k, v in c.stats()}


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the other side sends before it closes (each read bounded by the socket timeout)."""
    data = b""
    for _ in range(1000):
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the server kept sending: {data[:100]!r}")


def count(text: str, needle: str) -> int:
    return text.count(needle)


# ---------------------------------------------------------------- the memcached port


def test_pymemcache_sets_and_gets_over_tls(server_factory, pki: PKI):
    server = server_factory(*pki.a.flags())
    client = Client(server.address, tls_context=pki.context(), connect_timeout=5, timeout=5)
    try:
        assert client.set("session:1", b"alice", expire=600) is True
        assert client.get("session:1") == b"alice"
        # Larger than a TLS record (16 KB): the value crosses several.
        big = bytes(range(256)) * 400
        assert client.set("big", big) is True
        assert client.get("big") == big
        assert client.get_many(["session:1", "big", "missing"]) == {"session:1": b"alice", "big": big}
        assert client.delete("session:1") is True
        assert client.get("session:1") is None
    finally:
        client.close()
    stats = tls_stats(server.address, pki.context())
    assert stats["tls_ports"] == "wire,memcached"
    assert stats["tls_mutual"] == "0"
    assert stats["tls_handshake_errors"] == "0"

    # The client checks the node: one that trusts another CA refuses it.
    with pytest.raises(ssl.SSLCertVerificationError):
        TLSRawClient(server.address, pki.context(pki.other_ca.cert))


def binary_request(opcode: int, key: bytes, value: bytes = b"", extras: bytes = b"", opaque: int = 0) -> bytes:
    body = extras + key + value
    return struct.pack(">BBHBBHIIQ", 0x80, opcode, len(key), len(extras), 0, 0, len(body), opaque, 0) + body


def binary_response(sock: ssl.SSLSocket) -> Tuple[int, int, bytes, bytes]:
    """(opcode, status, extras, value) of one response."""
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionClosed(f"closed after {data!r}")
            data += chunk
        return data
    magic, opcode, key_length, extras_length, _, status, body_length, _, _ = struct.unpack(">BBHBBHIIQ", exactly(24))
    assert magic == 0x81, f"not a binary response: magic {magic:#x}"
    body = exactly(body_length)
    return opcode, status, body[:extras_length], body[extras_length + key_length:]


def test_the_binary_protocol_works_behind_tls(server_factory, pki: PKI):
    """The first decrypted byte (0x80) still selects the binary protocol."""
    server = server_factory(*pki.a.flags(), "--tls-ports", "memcached")
    raw = socket.create_connection(server.address, timeout=SOCKET_TIMEOUT)
    with pki.context().wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(binary_request(0x01, b"bin:key", b"binary value", extras=struct.pack(">II", 0xCAFE, 0), opaque=7))
        opcode, status, _, _ = binary_response(sock)
        assert (opcode, status) == (0x01, 0)
        sock.sendall(binary_request(0x00, b"bin:key", opaque=8))
        opcode, status, extras, value = binary_response(sock)
        assert (opcode, status, value) == (0x00, 0, b"binary value")
        assert struct.unpack(">I", extras) == (0xCAFE,)
    # The same item over the text protocol, on another TLS connection.
    with TLSRawClient(server.address, pki.context()) as c:
        assert c.get(b"bin:key")[b"bin:key"].data == b"binary value"


def test_a_plaintext_client_is_closed_and_the_node_serves_on(server_factory, pki: PKI):
    server = server_factory(*pki.a.flags(), "--metrics-port", "0")
    with TLSRawClient(server.address, pki.context()) as before:
        assert before.store(b"set", b"k", b"v") == b"STORED"
        with socket.create_connection(server.address, timeout=SOCKET_TIMEOUT) as plain:
            plain.sendall(b"set k 0 0 5\r\nplain\r\n")
            answer = read_until_closed(plain)
        # Closed with at most a TLS alert: nothing of the memcached protocol.
        assert b"STORED" not in answer and b"ERROR" not in answer
        assert answer == b"" or answer[:1] == b"\x15", answer
        # The TLS connection opened before is untouched, and new ones are served.
        assert before.get(b"k")[b"k"].data == b"v"
    with TLSRawClient(server.address, pki.context()) as after:
        assert after.get(b"k")[b"k"].data == b"v"
        assert dict(after.stats())[b"tls_handshake_errors"] == b"1"

    # Logged once, at info, saying why.
    poll_until(lambda: "TLS handshake failed" in server.log(), 10, what="the failed handshake in the log")
    failed = [line for line in server.log().splitlines() if "TLS handshake failed" in line]
    assert len(failed) == 1, failed
    assert " info " in failed[0] and "port=memcached" in failed[0] and "does not speak TLS" in failed[0]

    # A client that connects and leaves without a word is no failed handshake.
    socket.create_connection(server.address, timeout=SOCKET_TIMEOUT).close()

    port = metrics_port(server.log_path)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'tandem_tls_handshake_errors_total{port="memcached"} 1' in metrics
    assert 'tandem_tls_handshake_errors_total{port="wire"} 0' in metrics
    assert 'tandem_tls_enabled{port="memcached"} 1' in metrics
    assert 'tandem_tls_enabled{port="wire"} 1' in metrics
    assert "tandem_tls_mutual 0" in metrics


# ---------------------------------------------------------------- the pair


def tls_pair(nodes, tmp_path: Path, pki: PKI, ports: str, backup_cert: Pair = None) -> Tuple[Node, Node]:
    common = ("--tls-ca", str(pki.ca.cert), "--tls-ports", ports)
    primary = nodes(tmp_path / "primary", "--node-name", "P", *pki.a.flags(), *common)
    backup = nodes(tmp_path / "backup", "--role", "backup", "--peer", primary.wire_address, "--node-name", "B",
                   *(backup_cert or pki.b).flags(), *common)
    return primary, backup


def test_a_pair_replicates_over_mutual_tls(nodes, tmp_path: Path, pki: PKI):
    primary, backup = tls_pair(nodes, tmp_path, pki, "wire,memcached")
    context = pki.context()

    def in_sync() -> bool:
        p, b = tls_stats(primary.address, context), tls_stats(backup.address, context)
        return (b["link_state"] == "streaming" and p["link_state"] == "up"
                and p["peer_offset"] == p["replication_offset"] == b["replication_offset"])
    poll_until(in_sync, 30, what="the backup to catch up over TLS")

    with TLSRawClient(primary.address, context) as p:
        assert p.store(b"set", b"session:tls", b"over mutual TLS", flags=5) == b"STORED"
    with TLSRawClient(backup.address, context) as b:
        got = b.get(b"session:tls")[b"session:tls"]
        assert (got.data, got.flags) == (b"over mutual TLS", 5)
        # A write on the backup is forwarded to the primary over the same link.
        assert b.store(b"set", b"from:backup", b"forwarded") == b"STORED"
    with TLSRawClient(primary.address, context) as p:
        assert p.get(b"from:backup")[b"from:backup"].data == b"forwarded"

    stats = tls_stats(backup.address, context)
    assert (stats["tls_ports"], stats["tls_mutual"], stats["tls_handshake_errors"]) == ("wire,memcached", "1", "0")
    # The backup's check of its peer at start ran over TLS too: it found the primary.
    assert "start: P is the primary" in backup.log()

    # tandemctl over mutual TLS: both nodes answer (status asks the node's --peer too).
    admin = ("--tls-ca", str(pki.ca.cert), "--tls-cert", str(pki.admin.cert), "--tls-key", str(pki.admin.key))
    result = tandemctl("status", "--port", str(primary.wire_port), *admin, "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["verdict"] == "healthy" and status["role"] == "primary" and status["peer_name"] == "B"
    assert status["tls_ports"] == "wire,memcached"
    result = tandemctl("status", "--port", str(backup.wire_port), *admin, "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["verdict"] == "healthy" and status["role"] == "backup"
    assert status["peer_status"]["role"] == "primary"
    # The same from the environment.
    by_env = tandemctl("ping", "--port", str(backup.wire_port), env={
        "TANDEM_TLS_CA": str(pki.ca.cert), "TANDEM_TLS_CERT": str(pki.admin.cert), "TANDEM_TLS_KEY": str(pki.admin.key)})
    assert by_env.returncode == 0, by_env.stderr

    # Without --tls: a clear message, and "unreachable".
    plain = tandemctl("status", "--port", str(primary.wire_port))
    assert plain.returncode == 3, plain.stderr
    assert "speaks TLS on its wire port: add --tls" in plain.stderr.decode()


def test_only_the_link_between_the_nodes_can_be_encrypted(nodes, tmp_path: Path, pki: PKI):
    """--tls-ports wire: the memcached port stays plaintext for the applications."""
    primary, backup = tls_pair(nodes, tmp_path, pki, "wire")
    wait_in_sync(primary, backup)
    with primary.client() as p:
        assert p.store(b"set", b"k", b"plain to the application, TLS between the nodes") == b"STORED"
    with backup.client() as b:
        assert b.get(b"k")[b"k"].data == b"plain to the application, TLS between the nodes"
    assert backup.stats()["tls_ports"] == "wire"


def test_a_backup_with_a_certificate_of_another_ca_is_refused(nodes, tmp_path: Path, pki: PKI):
    primary, backup = tls_pair(nodes, tmp_path, pki, "wire", backup_cert=pki.rogue)
    # The primary says why, and the backup too.
    poll_until(lambda: "TLS handshake failed" in primary.log(), 20, what="the primary to log the refused certificate")
    refusal = next(line for line in primary.log().splitlines() if "TLS handshake failed" in line)
    assert "port=wire" in refusal and "not trusted" in refusal and "CERTIFICATE_VERIFY_FAILED" in refusal
    poll_until(lambda: "refused this side's certificate" in backup.log(), 20,
               what="the backup to log that the primary refused its certificate")
    with primary.client() as p:
        assert p.store(b"set", b"secret", b"not for the rogue") == b"STORED"
    # The backup keeps trying. It knows the primary is there (it answered),
    # so it must not take over: not within its first 3 s (its start-up
    # check of the peer gives up after 1 s, --failover-after is 600 ms).
    poll_until(lambda: int(backup.stats()["uptime"]) >= 3, 30, what="the backup to have run for 3 s")
    assert "this node is now the primary" not in backup.log()
    stats = backup.stats()
    assert stats["role"] == "backup" and stats["link_state"] != "streaming"
    assert primary.stats()["replication_state"] == "async_no_backup"
    with backup.client() as b:
        assert b.get(b"secret") == {}


# ---------------------------------------------------------------- tandemctl


def test_tandemctl_says_what_is_wrong_with_tls(nodes, tmp_path: Path, pki: PKI):
    node = nodes(tmp_path / "node", *pki.a.flags(), "--tls-ca", str(pki.ca.cert), "--tls-ports", "wire")
    port = str(node.wire_port)
    ca = ("--tls-ca", str(pki.ca.cert))
    admin = ("--tls-cert", str(pki.admin.cert), "--tls-key", str(pki.admin.key))

    ok = tandemctl("ping", "--port", port, *ca, *admin)
    assert ok.returncode == 0, ok.stderr

    def fails(code: int, message: str, *args: str) -> None:
        result = tandemctl("ping", "--port", port, *args)
        stderr = result.stderr.decode()
        assert result.returncode == code, stderr
        assert message in stderr, stderr
        assert len(stderr.strip().splitlines()) == 1, stderr

    fails(3, "speaks TLS on its wire port: add --tls")
    fails(4, "requires a client certificate (mutual TLS): give --tls-cert and --tls-key", *ca)
    fails(4, f"is not trusted: it is not signed by the CA in --tls-ca {pki.other_ca.cert}",
          "--tls-ca", str(pki.other_ca.cert), *admin)
    fails(4, f"refused --tls-cert {pki.rogue.cert}",
          *ca, "--tls-cert", str(pki.rogue.cert), "--tls-key", str(pki.rogue.key))
    # --tls alone: the system's trust store does not know the test CA.
    fails(4, "a CA of the system's trust store", "--tls")
    fails(1, "--tls-cert needs --tls-key", *ca, "--tls-cert", str(pki.admin.cert))
    fails(1, f"--tls-ca {tmp_path / 'missing.pem'}: cannot read the file", "--tls-ca", str(tmp_path / "missing.pem"))

    # A client that vanishes without closing TLS (a killed watch) is an
    # ordinary close, not a broken connection in the log.
    binary = tandemd_binary().parent / "tandemctl"
    watch = subprocess.Popen([str(binary), "watch", "--port", port, *ca, *admin],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll_until(lambda: node.stats()["watchers"] == "1", 10, what="the watch to be subscribed")
    finally:
        watch.kill()
        watch.wait(timeout=10)
    poll_until(lambda: node.stats()["watchers"] == "0", 10, what="the node to notice the watch is gone")
    assert "closing wire connection" not in node.log(), node.log()

    # TLS towards a plaintext wire port.
    plain = nodes(tmp_path / "plain")
    result = tandemctl("ping", "--port", str(plain.wire_port), *ca, *admin)
    assert result.returncode == 3, result.stderr
    assert "does not speak TLS" in result.stderr.decode()


# ---------------------------------------------------------------- configuration


def run_tandemd(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """A tandemd expected to refuse to start (or --check-config)."""
    return subprocess.run([str(tandemd_binary()), "-p", "0", "--wire-port", "0", "--no-persistence", *args],
                          capture_output=True, text=True, timeout=STARTUP_TIMEOUT, cwd=tmp_path,
                          stdin=subprocess.DEVNULL)


def test_bad_tls_files_stop_tandemd_naming_the_file(tmp_path: Path, pki: PKI):
    missing = tmp_path / "missing.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN NOTHING-----\nnot base64\n")
    key = str(pki.a.key)
    cases = [
        (("--tls-cert", str(missing), "--tls-key", key), f"--tls-cert {missing}: cannot read the file: No such file or directory"),
        (("--tls-cert", str(garbage), "--tls-key", key), f"--tls-cert {garbage}: not a PEM certificate"),
        (("--tls-cert", str(pki.a.key), "--tls-key", key), "is it the --tls-key file?"),
        (("--tls-cert", str(pki.a.cert), "--tls-key", str(garbage)), f"--tls-key {garbage}: not a PEM private key"),
        (("--tls-cert", str(pki.a.cert), "--tls-key", str(pki.b.key)),
         f"--tls-key {pki.b.key} does not belong to the certificate in --tls-cert {pki.a.cert}"),
        ((*pki.a.flags(), "--tls-ca", str(missing)), f"--tls-ca {missing}: cannot read the file"),
        ((*pki.a.flags(), "--tls-ca", str(garbage)), f"--tls-ca {garbage}: not a PEM certificate"),
    ]
    for args, message in cases:
        result = run_tandemd(tmp_path, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "listening on" not in result.stderr
        # --check-config finds the same, without starting.
        checked = run_tandemd(tmp_path, *args, "--check-config")
        assert checked.returncode == 2 and message in checked.stderr, (args, checked.stderr)


def test_tls_flags_that_do_not_fit_together(tmp_path: Path, pki: PKI):
    cases = [
        (("--tls-key", str(pki.a.key)), "--tls-key needs --tls-cert"),
        (("--tls-cert", str(pki.a.cert)), "--tls-cert needs --tls-key"),
        (("--tls-ca", str(pki.ca.cert)), "--tls-ca needs --tls-cert and --tls-key"),
        (("--tls-ports", "wire"), "--tls-ports needs --tls-cert and --tls-key"),
        ((*pki.a.flags(), "--tls-ports", "wire,http"), "--tls-ports"),
        ((*pki.a.flags(), "--tls-ca", str(pki.ca.cert), "--tls-ports", "memcached"), "--tls-ca is for the wire port"),
        ((*pki.a.flags(), "--peer", "127.0.0.1:1"), "a TLS wire port with --peer needs --tls-ca"),
    ]
    for args, message in cases:
        result = run_tandemd(tmp_path, *args)
        assert result.returncode == 64, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)


def test_mutual_tls_guards_a_non_loopback_wire_port(tmp_path: Path, pki: PKI):
    """Like --secret-file: only holders of a certificate of the pair's CA get in."""
    refused = run_tandemd(tmp_path, "-l", "0.0.0.0", *pki.a.flags(), "--check-config")
    assert refused.returncode == 64 and "refusing to listen on 0.0.0.0" in refused.stderr
    assert "mutual TLS on the wire port (--tls-cert, --tls-key, --tls-ca)" in refused.stderr
    # TLS on the memcached port only leaves the wire port open: still refused.
    memcached_only = run_tandemd(tmp_path, "-l", "0.0.0.0", *pki.a.flags(), "--tls-ports", "memcached", "--check-config")
    assert memcached_only.returncode == 64
    ok = run_tandemd(tmp_path, "-l", "0.0.0.0", *pki.a.flags(), "--tls-ca", str(pki.ca.cert), "--check-config")
    assert (ok.returncode, ok.stdout) == (0, "configuration ok\n"), ok.stderr
    assert "--insecure" not in ok.stderr


def test_tls_settings_in_a_configuration_file(tmp_path: Path, pki: PKI):
    config = tmp_path / "tandem.conf"
    config.write_text(
        f'tls-cert = "{pki.a.cert}"\n'
        f'tls-key = "{tmp_path / "missing.key"}"\n'
        f'tls-ca = "{pki.ca.cert}"\n'
        'tls-ports = "wire,memcached"\n')
    result = run_tandemd(tmp_path, "--config", str(config), "--check-config")
    assert result.returncode == 2
    assert f"{config}:2: tls-key = " in result.stderr and "cannot read the file" in result.stderr, result.stderr
    config.write_text(config.read_text().replace(str(tmp_path / "missing.key"), str(pki.a.key)))
    result = run_tandemd(tmp_path, "--config", str(config), "--check-config")
    assert (result.returncode, result.stdout) == (0, "configuration ok\n"), result.stderr
    config.write_text(config.read_text().replace('"wire,memcached"', '"http"'))
    result = run_tandemd(tmp_path, "--config", str(config), "--check-config")
    assert result.returncode == 64 and f"{config}:4" in result.stderr, result.stderr


# ---------------------------------------------------------------- renewal


def presented_name(address: Tuple[str, int], context: ssl.SSLContext) -> str:
    """The CN of the certificate the node presents to a new connection."""
    with TLSRawClient(address, context) as c:
        subject = dict(part[0] for part in c.sock.getpeercert()["subject"])
        return subject["commonName"]


def test_sighup_reloads_a_renewed_certificate(server_factory, tmp_path: Path, pki: PKI):
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "node.pem", live / "node.key"
    shutil.copy(pki.a.cert, cert)
    shutil.copy(pki.a.key, key)
    server = server_factory("--tls-cert", str(cert), "--tls-key", str(key))
    context = pki.context()
    assert presented_name(server.address, context) == "tandem-a"

    with TLSRawClient(server.address, context) as open_before:
        assert open_before.store(b"set", b"k", b"v") == b"STORED"
        # The renewed certificate: another key too.
        shutil.copy(pki.b.cert, cert)
        shutil.copy(pki.b.key, key)
        server.send_signal(signal.SIGHUP)
        poll_until(lambda: presented_name(server.address, context) == "tandem-b", 10,
                   what="new connections to get the renewed certificate")
        assert "TLS certificate, key and CA reloaded" in server.log()
        # A connection opened before keeps working.
        assert open_before.get(b"k")[b"k"].data == b"v"

    # A broken file is not taken: the node keeps the certificate it has.
    cert.write_text("half a certificate\n")
    server.send_signal(signal.SIGHUP)
    poll_until(lambda: "TLS files not reloaded" in server.log(), 10, what="the refused reload in the log")
    assert f"--tls-cert {cert}: not a PEM certificate" in server.log()
    assert presented_name(server.address, context) == "tandem-b"
    assert server.proc.poll() is None
