"""deploy/: the systemd units, the example configurations, the front ends, the Tomcat contexts, the pair demo.

The tools are required, never skipped: scripts/test installs systemd
(systemd-analyze), nginx and apache2.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import REPO_ROOT, RawClient, _free_port, poll_until, tandemd_binary

pytestmark = pytest.mark.tandemd_only

DEPLOY = REPO_ROOT / "deploy"


def tool(name: str) -> str:
    """The path of a required tool; fails the test (no skip) when it is missing."""
    found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)
    if not found:
        pytest.fail(f"{name} not found: scripts/test installs it (apt); install it to run these checks", pytrace=False)
    return found


def run(args: List[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)


# ---------------------------------------------------------------- systemd


def installable_unit(source: Path, directory: Path, name: str) -> Path:
    """The unit with ExecStart pointing at the built binary (systemd-analyze checks it exists)."""
    text = source.read_text()
    assert "ExecStart=/usr/local/bin/tandemd --config /etc/tandem/" in text
    unit = directory / name
    unit.write_text(text.replace("/usr/local/bin/tandemd", str(tandemd_binary())))
    return unit


@pytest.mark.parametrize("source,name", [("tandemd.service", "tandemd.service"), ("tandemd@.service", "tandemd@a.service")])
def test_systemd_units_verify(tmp_path: Path, source: str, name: str):
    analyze = tool("systemd-analyze")
    unit = installable_unit(DEPLOY / "systemd" / source, tmp_path, name)
    result = run([analyze, "verify", str(unit)])
    # verify only warns about an unknown or misspelt directive: any output is a failure.
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        f"systemd-analyze verify {name}:\n{result.stdout}{result.stderr}"
    # The hardening stays: exposure at most 2.0 of 10 ("OK").
    security = run([analyze, "security", "--offline=true", "--threshold=20", str(unit)])
    assert security.returncode == 0, security.stdout[-3000:] + security.stderr
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert exposure and float(exposure.group(1)) <= 2.0, security.stdout[-500:]


def test_systemd_unit_settings_that_matter():
    text = (DEPLOY / "systemd" / "tandemd.service").read_text()
    settings: Dict[str, List[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    assert settings["Type"] == ["notify"]
    assert settings["ExecStart"] == ["/usr/local/bin/tandemd --config /etc/tandem/tandem.conf"]
    assert settings["User"] == ["tandem"] and settings["StateDirectory"] == ["tandem"]
    assert settings["Restart"] == ["on-failure"] and settings["RestartPreventExitStatus"] == ["64"]
    for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert settings[hardening] == ["yes"], hardening
    assert settings["ProtectSystem"] == ["strict"]
    assert int(settings["LimitNOFILE"][0]) > 4096, "above the default --max-connections"
    # The configuration's data directory is the unit's state directory.
    assert 'data-dir = "/var/lib/tandem"' in (DEPLOY / "config" / "primary.conf").read_text()


def test_sysusers_file_creates_the_tandem_user(tmp_path: Path):
    sysusers = tool("systemd-sysusers")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    result = run([sysusers, f"--root={root}", str(DEPLOY / "systemd" / "tandem.sysusers")])
    assert result.returncode == 0, result.stderr
    passwd = (root / "etc" / "passwd").read_text()
    assert re.search(r"^tandem:x:\d+:\d+:Tandem session server:/var/lib/tandem:", passwd, re.M), passwd


# ---------------------------------------------------------------- example configurations


@pytest.mark.parametrize("name", ["primary.conf", "backup.conf"])
def test_example_configuration_checks_with_the_secret_and_data_directory_in_place(tmp_path: Path, name: str):
    secret = tmp_path / "secret"
    secret.write_text(os.urandom(32).hex() + "\n")
    secret.chmod(0o600)
    result = run([str(tandemd_binary()), "--check-config", "--config", str(DEPLOY / "config" / name),
                  "--secret-file", str(secret), "--data-dir", str(tmp_path / "data")])
    assert (result.returncode, result.stdout) == (0, "configuration ok\n"), result.stderr


def test_example_configuration_names_what_is_missing(tmp_path: Path):
    """As shipped, on a machine without /etc/tandem/secret: the line of secret-file, and why."""
    shipped = (DEPLOY / "config" / "primary.conf").read_text()
    missing = tmp_path / "etc-tandem" / "secret"
    config = tmp_path / "primary.conf"
    config.write_text(shipped.replace('"/etc/tandem/secret"', f'"{missing}"'))
    line = next(i for i, text in enumerate(shipped.splitlines(), 1) if text.startswith("secret-file"))
    result = run([str(tandemd_binary()), "--check-config", "--config", str(config), "--data-dir", str(tmp_path / "d")])
    assert result.returncode == 2
    assert f"{config}:{line}: secret-file = " in result.stderr, result.stderr
    assert f"cannot read the secret file {missing}: No such file or directory" in result.stderr


def test_the_example_configurations_run_a_pair(tmp_path: Path):
    """primary.conf and backup.conf, moved to loopback and free ports, form a healthy pair."""
    secret = tmp_path / "secret"
    secret.write_text(os.urandom(32).hex() + "\n")
    secret.chmod(0o600)
    ports = {name: (_free_port(), _free_port()) for name in ("a", "b")}
    procs = {}
    try:
        for name, config, peer in (("a", "primary.conf", "b"), ("b", "backup.conf", "a")):
            log = open(tmp_path / f"{name}.log", "wb")
            procs[name] = subprocess.Popen(
                [str(tandemd_binary()), "--config", str(DEPLOY / "config" / config), "--listen", "127.0.0.1",
                 "--port", str(ports[name][0]), "--wire-port", str(ports[name][1]),
                 "--peer", f"127.0.0.1:{ports[peer][1]}", "--secret-file", str(secret),
                 "--data-dir", str(tmp_path / name), "--memory-limit", "64"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            log.close()
            poll_until(lambda: b"listening on" in (tmp_path / f"{name}.log").read_bytes(), 30,
                       what=f"node {name} to listen")
        ctl = tandemd_binary().parent / "tandemctl"
        env = dict(os.environ, TANDEM_SECRET_FILE=str(secret))
        poll_until(lambda: run([str(ctl), "status", "--port", str(ports["a"][1])], env=env).returncode == 0, 30,
                   what="the pair to be healthy")
        with RawClient(("127.0.0.1", ports["b"][0])) as client:
            assert client.store(b"set", b"via-b", b"1") == b"STORED"
        with RawClient(("127.0.0.1", ports["a"][0])) as client:
            assert client.get(b"via-b")[b"via-b"].data == b"1"
        for name in ("a", "b"):
            assert "shared secret differs" not in (tmp_path / f"{name}.log").read_text()
    finally:
        codes = {}
        for name in ("b", "a"):
            if name in procs and procs[name].poll() is None:
                procs[name].send_signal(signal.SIGTERM)
                codes[name] = procs[name].wait(timeout=20)
    assert codes == {"a": 0, "b": 0}


# ---------------------------------------------------------------- front ends


def test_nginx_accepts_the_upstream_configuration(tmp_path: Path):
    nginx = tool("nginx")
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{}}
http {{
    access_log {tmp_path}/access.log;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    include {DEPLOY / "nginx" / "tandem-tomcat.conf"};
}}
""")
    result = run([nginx, "-t", "-c", str(conf), "-p", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_apache_accepts_the_balancer_configuration(tmp_path: Path):
    apache = tool("apache2")
    modules = Path("/usr/lib/apache2/modules")
    wanted = ["mpm_event", "authz_core", "headers", "proxy", "proxy_http", "proxy_balancer", "slotmem_shm",
              "lbmethod_byrequests"]
    for module in wanted:
        if not (modules / f"mod_{module}.so").exists():
            pytest.fail(f"{modules}/mod_{module}.so missing (apt package apache2)", pytrace=False)
    conf = tmp_path / "httpd.conf"
    conf.write_text("\n".join([
        f"ServerRoot {tmp_path}",
        "ServerName localhost",
        "Listen 127.0.0.1:8080",
        f"PidFile {tmp_path}/httpd.pid",
        f"ErrorLog {tmp_path}/error.log",
        *[f"LoadModule {m}_module {modules}/mod_{m}.so" for m in wanted],
        f"Include {DEPLOY / 'apache' / 'tandem-tomcat.conf'}",
        "",
    ]))
    result = run([apache, "-t", "-f", str(conf)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Syntax OK" in result.stdout + result.stderr


# ---------------------------------------------------------------- Tomcat


@pytest.mark.parametrize("sticky", [True, False], ids=["sticky", "nonsticky"])
@pytest.mark.parametrize("protocol", ["text", "binary"])
def test_tomcat_contexts(sticky: bool, protocol: str):
    path = DEPLOY / "tomcat" / f"context-{'sticky' if sticky else 'nonsticky'}-{protocol}.xml"
    manager = ElementTree.parse(path).getroot().find("Manager")
    assert manager is not None
    attributes = manager.attrib
    assert attributes["className"] == "de.javakaffee.web.msm.MemcachedBackupSessionManager"
    # Both nodes of the pair, on the memcached port of deploy/config.
    assert attributes["memcachedNodes"] == "n1:10.0.0.1:11211,n2:10.0.0.2:11211"
    assert attributes["memcachedProtocol"] == protocol
    assert attributes["sticky"] == ("true" if sticky else "false")
    # Never below what a failover takes (about 700 ms).
    assert int(attributes["operationTimeout"]) >= 1000
    if sticky:
        assert attributes["failoverNodes"] == "n2"
    else:
        assert "failoverNodes" not in attributes, "msm ignores failoverNodes for non-sticky sessions"
        assert attributes["sessionBackupAsync"] == "false"
        assert attributes["lockingMode"] == "auto"
    re.compile(attributes["requestUriIgnorePattern"])


# ---------------------------------------------------------------- the pair demo


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent that is gone."""
    try:
        return "(zombie)" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_pair_demo_start_status_stop(tmp_path: Path):
    script = DEPLOY / "pair-demo.sh"
    demo = tmp_path / "demo"
    ports = [_free_port() for _ in range(4)]
    env = dict(os.environ, TANDEM_DEMO_DIR=str(demo), TANDEM_BIN_DIR=str(tandemd_binary().parent),
               TANDEM_A_PORT=str(ports[0]), TANDEM_A_WIRE_PORT=str(ports[1]),
               TANDEM_B_PORT=str(ports[2]), TANDEM_B_WIRE_PORT=str(ports[3]), TANDEM_DEMO_TIMEOUT="60")

    def demo_run(*args: str) -> subprocess.CompletedProcess:
        return run(["bash", str(script), *args], timeout=150, env=env)

    def pids() -> List[int]:
        return [int(p.read_text()) for p in demo.glob("*.pid")]

    try:
        started = demo_run("start")
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"127.0.0.1:{ports[0]}" in started.stdout and "tandemctl" in started.stdout
        assert len(pids()) == 2

        status = demo_run("status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert re.search(r"^verdict\s+healthy", status.stdout, re.M), status.stdout

        # A write through either node is read through the other.
        with RawClient(("127.0.0.1", ports[0])) as a, RawClient(("127.0.0.1", ports[2])) as b:
            assert a.store(b"set", b"demo:a", b"written on a") == b"STORED"
            assert b.store(b"set", b"demo:b", b"written on b") == b"STORED"
            for client in (a, b):
                values = client.get(b"demo:a", b"demo:b")
                assert {k: v.data for k, v in values.items()} == {b"demo:a": b"written on a", b"demo:b": b"written on b"}

        # Starting again changes nothing.
        again = demo_run("start")
        assert again.returncode == 0 and "already runs" in again.stdout, again.stdout + again.stderr

        # b leads after a promotion; stop still takes the backup (now a) first, and both exit.
        ctl = tandemd_binary().parent / "tandemctl"
        promoted = run([str(ctl), "promote", "--port", str(ports[3]), "--reason", "test"],
                       env=dict(env, TANDEM_SECRET_FILE=str(demo / "secret")))
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr

        def role_of_a() -> bool:
            stats = run([str(ctl), "stats", "--port", str(ports[1]), "--json"],
                        env=dict(env, TANDEM_SECRET_FILE=str(demo / "secret")))
            return stats.returncode == 0 and json.loads(stats.stdout).get("role") == "backup"

        poll_until(role_of_a, 20, what="a to step down and follow b")
        running = pids()
        stopped = demo_run("stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert stopped.stdout.index("node a stopped") < stopped.stdout.index("node b stopped")
        for pid in running:
            assert not alive(pid), f"pid {pid} still runs after stop"
        assert not list(demo.glob("*.pid"))
        down = demo_run("status")
        assert down.returncode == 3 and "node a is not running" in down.stdout

        # The data survives a restart of the pair.
        restarted = demo_run("start")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        with RawClient(("127.0.0.1", ports[2])) as b:
            assert set(b.get(b"demo:a", b"demo:b")) == {b"demo:a", b"demo:b"}
        assert demo_run("stop").returncode == 0
        # The nodes' own connections to each other prove the secret too.
        for log in ("a.log", "b.log"):
            assert "shared secret differs" not in (demo / log).read_text(), (demo / log).read_text()[-3000:]
    finally:
        for pid in pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
