"""Running tandemd for real: --config, --check-config, logs, systemd readiness, stopping a primary.

Every test here states tandemd's own contract (memcached has none of it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

from conftest import LISTENING_RE, STARTUP_TIMEOUT, STOP_TIMEOUT, RawClient, poll_until, tandemd_binary
from nodes import Node, nodes  # noqa: F401  (fixture)

pytestmark = pytest.mark.tandemd_only


def run_tandemd(*args: str, cwd: Optional[Path] = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([str(tandemd_binary()), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=cwd)


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def secret_file(directory: Path) -> Path:
    return write(directory / "secret", os.urandom(24).hex() + "\n", 0o600)


class Process:
    """A tandemd started here, with its standard error in a file."""

    def __init__(self, args: Sequence[str], log_path: Path, env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None):
        self.log_path = log_path
        self.args = [str(tandemd_binary()), *args]
        self.log_file = open(log_path, "wb")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=self.log_file,
                                     env=env, cwd=cwd)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_port(self) -> int:
        def found():
            match = LISTENING_RE.search(self.log_path.read_bytes())
            if match:
                return int(match.group(2))
            assert self.proc.poll() is None, f"tandemd exited with {self.proc.returncode}:\n{self.log()}"
            return None
        return poll_until(found, STARTUP_TIMEOUT, interval=0.02, what="the 'listening on' line")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT + 5)
        finally:
            self.log_file.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
        self.log_file.close()


@pytest.fixture
def processes():
    started: List[Process] = []

    def start(*args: str, log: Path, env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None) -> Process:
        process = Process(args, log, env, cwd)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


# ---------------------------------------------------------------- --config


def test_settings_come_from_the_file_and_the_command_line_overrides_them(tmp_path: Path, processes):
    config = write(tmp_path / "tandem.conf", f"""
# a comment, then every kind of value
port = 1                        # overridden below: a fixed port could be taken
wire-port = 0
data-dir = "{tmp_path / 'data'}"
memory-limit = 32
max-item-size = "512k"
log-format = "json"
disable-evictions = true
flush-interval = 20
""")
    process = processes("--config", str(config), "--port", "0", log=tmp_path / "node.log")
    port = process.wait_port()
    assert port != 1
    with RawClient(("127.0.0.1", port)) as client:
        settings = dict(client.stats(b"settings"))
        assert settings[b"maxbytes"] == str(32 << 20).encode()
        assert settings[b"item_size_max"] == str(512 << 10).encode()
        assert settings[b"evictions"] == b"off"
        assert client.store(b"set", b"k", b"v") == b"STORED"
    assert process.stop() == 0
    # log-format from the file: every line is JSON.
    for line in process.log().splitlines():
        json.loads(line)
    assert (tmp_path / "data" / "tandem.sqlite3").exists()


def test_unknown_keys_and_bad_values_name_the_file_line_and_key(tmp_path: Path):
    config = write(tmp_path / "tandem.conf", "# Tandem\nport = 11211\n\n\n\n\nprot = 11212\n")
    result = run_tandemd("--config", str(config))
    assert result.returncode == 64, result
    assert result.stderr.strip() == f'Error: {config}:7: unknown key "prot" (did you mean "port"?)'

    write(config, 'role = "leader"\n')
    result = run_tandemd("--config", str(config), "--check-config")
    assert result.returncode == 64
    assert f'{config}:1: "role" must be one of "primary", "backup", got "leader"' in result.stderr

    write(config, "listen = 127.0.0.1\n")
    result = run_tandemd("--config", str(config))
    assert result.returncode == 64
    assert f"{config}:1: " in result.stderr and "strings are quoted" in result.stderr

    # Ranges are checked by the same validation as flags, and pinned to the line.
    write(config, "threads = 2\nport = 70000\n")
    result = run_tandemd("--config", str(config))
    assert result.returncode == 64
    assert result.stderr.strip() == f"Error: {config}:2: port = 70000: --port must be between 0 and 65535, got 70000"

    write(config, 'role = "backup"\n')
    result = run_tandemd("--config", str(config), "--check-config")
    assert result.returncode == 64
    assert "a backup needs --peer" in result.stderr

    result = run_tandemd("--config", str(tmp_path / "missing.conf"))
    assert result.returncode == 64
    assert f"{tmp_path / 'missing.conf'}: cannot read the configuration file: No such file or directory" in result.stderr


def test_the_command_line_overrides_a_bad_value_in_the_file(tmp_path: Path):
    config = write(tmp_path / "tandem.conf", f'port = 70000\ndata-dir = "{tmp_path / "d"}"\n')
    assert run_tandemd("--config", str(config), "--check-config").returncode == 64
    result = run_tandemd("--config", str(config), "-p", "11211", "--check-config")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "configuration ok\n"


def test_every_flag_has_a_configuration_key(tmp_path: Path):
    """A flag added to tandemd without a key in Tandemd.configSchema fails here."""
    dump = run_tandemd("--experimental-dump-help")
    assert dump.returncode == 0, dump.stderr
    arguments = json.loads(dump.stdout)["command"]["arguments"]
    names = []
    for argument in arguments:
        longs = [n["name"] for n in argument.get("names", []) if n["kind"] == "long"]
        if longs and argument.get("shouldDisplay", True):
            names.append(longs[0])
    names = [n for n in names if n not in ("help", "version", "config", "check-config")]
    assert "port" in names and "secret-file" in names, names
    config = tmp_path / "one.conf"
    for name in names:
        # `true` is the wrong kind for most keys: the error must be about the
        # value, never "unknown key".
        write(config, f"{name} = true\n")
        result = run_tandemd("--config", str(config), "--check-config", cwd=tmp_path)
        assert "unknown key" not in result.stderr, f"--{name} has no configuration key: {result.stderr}"


# ---------------------------------------------------------------- --check-config


def test_check_config_loads_the_files_and_checks_the_data_directory(tmp_path: Path):
    secret = secret_file(tmp_path)
    users = write(tmp_path / "users", "tomcat:s3cret\n", 0o600)
    data = tmp_path / "data"
    config = write(tmp_path / "tandem.conf", f"""
listen = "127.0.0.1"
secret-file = "{secret}"
sasl-users = "{users}"
data-dir = "{data}"
peer = "127.0.0.1:11312"
""")
    ok = run_tandemd("--config", str(config), "--check-config")
    assert (ok.returncode, ok.stdout) == (0, "configuration ok\n"), ok.stderr
    assert not data.exists(), "--check-config must not create the data directory"

    # A secret readable by others is refused, named with its line.
    secret.chmod(0o644)
    bad = run_tandemd("--config", str(config), "--check-config")
    assert bad.returncode == 2
    assert f"{config}:3: secret-file = " in bad.stderr and "--secret-file" in bad.stderr, bad.stderr
    secret.chmod(0o600)

    # A data directory that is a file; its parent missing.
    write(tmp_path / "afile", "x")
    for path, expected in ((tmp_path / "afile", "not a directory"),
                           (tmp_path / "no" / "such" / "dir", "does not exist")):
        result = run_tandemd("--config", str(config), "--data-dir", str(path), "--check-config")
        assert result.returncode == 2
        assert "--data-dir" in result.stderr and expected in result.stderr, result.stderr

    # Another program's SQLite file is refused, and left as it was.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with sqlite3.connect(foreign / "tandem.sqlite3") as db:
        db.execute("CREATE TABLE t (x)")
    before = (foreign / "tandem.sqlite3").read_bytes()
    result = run_tandemd("--config", str(config), "--data-dir", str(foreign), "--check-config")
    assert result.returncode == 2 and "not Tandem's" in result.stderr, result.stderr
    assert (foreign / "tandem.sqlite3").read_bytes() == before

    # Several problems are reported together.
    result = run_tandemd("--config", str(config), "--secret-file", str(tmp_path / "nosecret"),
                         "--sasl-users", str(tmp_path / "nousers"), "--check-config")
    assert result.returncode == 2
    assert "--secret-file" in result.stderr and "--sasl-users" in result.stderr


def test_check_config_of_a_running_node_does_not_take_its_lock(tmp_path: Path, nodes):
    data = tmp_path / "data"
    node = nodes(data)
    with node.client() as client:
        assert client.store(b"set", b"k", b"v") == b"STORED"
    node.wait_flushed()
    result = run_tandemd("--data-dir", str(data), "--check-config")
    assert (result.returncode, result.stdout) == (0, "configuration ok\n"), result.stderr
    with node.client() as client:
        assert client.store(b"set", b"k2", b"v") == b"STORED"
        assert client.get(b"k")[b"k"].data == b"v"
    assert node.terminate() == 0
    # And it leaves nothing behind that keeps the node from starting again.
    again = nodes(data)
    with again.client() as client:
        assert set(client.get(b"k", b"k2")) == {b"k", b"k2"}


# ---------------------------------------------------------------- logs


def test_json_logs_are_one_object_per_line(tmp_path: Path, processes):
    process = processes("-p", "0", "--wire-port", "0", "--no-persistence", "--log-format", "json", "-v",
                        log=tmp_path / "node.log")
    port = process.wait_port()
    with RawClient(("127.0.0.1", port)) as client:
        client.send(b"bogus command\r\n")
        assert client.readline() == b"ERROR"
    assert process.stop() == 0
    lines = process.log().splitlines()
    assert lines
    events = [json.loads(line) for line in lines]
    for event in events:
        assert set(event) <= {"time", "level", "label", "message", "metadata"}, event
        assert {"time", "level", "label", "message"} <= set(event), event
        assert event["time"].endswith("Z") and event["label"] == "tandemd"
        assert event["level"] in ("trace", "debug", "info", "notice", "warning", "error", "critical")
    listening = [e for e in events if e["message"].startswith("listening on ")]
    assert listening and listening[0]["metadata"]["threads"], events
    assert any(e["level"] == "debug" for e in events), "-v logs debug events"


def test_log_level_filters(tmp_path: Path, processes):
    process = processes("-p", "0", "--wire-port", "0", "--no-persistence", "--log-level", "warning",
                        log=tmp_path / "node.log")
    # Nothing at info: no "listening on" line to wait for; the stop must still be clean.
    time.sleep(1.0)
    assert process.proc.poll() is None, process.log()
    assert process.stop() == 0
    assert process.log() == ""
    result = run_tandemd("--log-level", "loud", "--check-config")
    assert result.returncode == 64 and "loud" in result.stderr


def test_nothing_is_logged_per_request_at_the_default_level(tmp_path: Path, nodes):
    """A pair at info: hundreds of requests of every kind add no log lines."""
    primary = nodes(tmp_path / "a", "--node-name", "a")
    backup = nodes(tmp_path / "b", "--role", "backup", "--peer", primary.wire_address, "--node-name", "b")
    poll_until(lambda: primary.stats().get("replication_state") == "sync", 30, what="the pair in sync")
    time.sleep(0.5)
    before = {node: node.log_path.read_text(errors="replace") for node in (primary, backup)}
    keys = []
    for node in (primary, backup):
        with node.client() as client:
            for i in range(100):
                key = b"perreq-%d-%d" % (node.port, i)
                keys.append(key)
                assert client.store(b"set", key, b"x" * 100, exptime=300) == b"STORED"
                assert key in client.get(key)
                assert client.store(b"add", key, b"y") == b"NOT_STORED"
                assert client.call(b"touch " + key + b" 600") == b"TOUCHED"
                assert client.call(b"delete " + key) == b"DELETED"
                assert client.call(b"delete " + key) == b"NOT_FOUND"
                assert client.call(b"bogus") == b"ERROR"
                client.stats()
    ctl = tandemd_binary().parent / "tandemctl"
    for _ in range(5):
        subprocess.run([str(ctl), "status", "--port", str(primary.wire_port)], capture_output=True, timeout=30, check=True)
    time.sleep(0.5)
    for node in (primary, backup):
        added = node.log_path.read_text(errors="replace")[len(before[node]):]
        lines = [line for line in added.splitlines() if line.strip()]
        assert not any(k.decode() in added for k in keys), added
        assert len(lines) <= 2, f"{len(lines)} lines logged during 1,400 requests:\n{added}"


# ---------------------------------------------------------------- systemd readiness


def notify_socket(tmp_path: Path, abstract: bool):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"tandem-test-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        address = "@" + name
    else:
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    sock.settimeout(STARTUP_TIMEOUT)
    return sock, address


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_is_sent_once_the_port_listens_and_stopping_on_sigterm(tmp_path: Path, processes, abstract: bool):
    sock, address = notify_socket(tmp_path, abstract)
    with sock:
        env = dict(os.environ, NOTIFY_SOCKET=address)
        process = processes("-p", "0", "--wire-port", "0", "--data-dir", str(tmp_path / "data"),
                            log=tmp_path / "node.log", env=env)
        message = sock.recv(4096).decode()
        fields = dict(line.split("=", 1) for line in message.split("\n") if line)
        assert fields.get("READY") == "1", message
        # READY=1 comes after the port listens: it must take a connection now.
        port = int(LISTENING_RE.search(process.log_path.read_bytes()).group(2))
        assert fields["STATUS"] == f"serving memcached on 127.0.0.1:{port}"
        with RawClient(("127.0.0.1", port)) as client:
            assert client.call(b"version").startswith(b"VERSION ")
        process.proc.send_signal(signal.SIGTERM)
        stopping = sock.recv(4096).decode()
        assert "STOPPING=1" in stopping.split("\n"), stopping
        assert process.stop() == 0


def test_a_broken_notify_socket_does_not_stop_the_node(tmp_path: Path, processes):
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "nobody-listens.sock"))
    process = processes("-p", "0", "--wire-port", "0", "--no-persistence", log=tmp_path / "node.log", env=env)
    port = process.wait_port()
    poll_until(lambda: "cannot notify systemd" in process.log(), 10, what="the warning")
    with RawClient(("127.0.0.1", port)) as client:
        assert client.call(b"version").startswith(b"VERSION ")
    assert process.stop() == 0


# ---------------------------------------------------------------- stopping a primary


def write_keys(node: Node, prefix: bytes, count: int, size: int = 64) -> List[bytes]:
    keys = [b"%s-%05d" % (prefix, i) for i in range(count)]
    with node.client() as client:
        for key in keys:
            assert client.store(b"set", key, key[-1:] * size) == b"STORED"
    return keys


def test_a_stopping_primary_lets_its_backup_catch_up(tmp_path: Path, nodes):
    """Async writes still on their way when the primary gets SIGTERM reach the backup before it exits.

    The backup stops reading while 40 MB are written: more than the
    replication connection's buffers (its 4 MB high-water mark and the
    kernel's), so most of it is still in the primary's backlog, not yet sent,
    when SIGTERM comes; a primary that did not wait would take it with it.
    """
    slow_link = ("--replication", "async", "--link-timeout", "8000")
    primary = nodes(tmp_path / "a", "--node-name", "a", *slow_link)
    backup = nodes(tmp_path / "b", "--role", "backup", "--peer", primary.wire_address, "--node-name", "b",
                   "--failover-after", "0", *slow_link)
    poll_until(lambda: primary.stats().get("link_state") == "up", 30, what="the backup to connect")
    backup.proc.send_signal(signal.SIGSTOP)
    try:
        keys = write_keys(primary, b"late", 400, size=100_000)
        assert int(primary.stats()["peer_lag_changes"]) > 0
        primary.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
    finally:
        backup.proc.send_signal(signal.SIGCONT)
    assert primary.proc.wait(timeout=STOP_TIMEOUT) == 0
    primary.log_file.close()
    assert "backup has every change" in primary.log(), primary.log()
    missing = []
    with backup.client() as client:
        for i in range(0, len(keys), 50):
            batch = keys[i:i + 50]
            found = client.get(*batch)
            missing += [k for k in batch if k not in found]
    assert not missing, f"{len(missing)} of {len(keys)} writes never reached the backup"


def test_a_stopping_primary_waits_for_its_backup_only_so_long(tmp_path: Path, nodes):
    primary = nodes(tmp_path / "a", "--node-name", "a", "--replication", "async", "--link-timeout", "5000",
                    "--heartbeat-interval", "100")
    backup = nodes(tmp_path / "b", "--role", "backup", "--peer", primary.wire_address, "--node-name", "b",
                   "--replication", "async", "--failover-after", "0")
    poll_until(lambda: primary.stats().get("link_state") == "up", 30, what="the backup to connect")
    backup.proc.send_signal(signal.SIGSTOP)
    try:
        write_keys(primary, b"stuck", 50)
        started = time.monotonic()
        primary.proc.send_signal(signal.SIGTERM)
        assert primary.proc.wait(timeout=STOP_TIMEOUT) == 0
        elapsed = time.monotonic() - started
    finally:
        backup.proc.send_signal(signal.SIGCONT)
    primary.log_file.close()
    assert "backup did not catch up before the stop" in primary.log(), primary.log()
    assert 1.5 <= elapsed < 6, elapsed
