"""spymemcached (the Java client msm uses) against the server, via java/SpyCheck.java."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SPY_JAR = Path("/usr/share/java/spymemcached.jar")
SOURCE = Path(__file__).resolve().parent / "java" / "SpyCheck.java"
#: Number of checks SpyCheck runs (one PASS line each).
EXPECTED_CHECKS = 15


@pytest.fixture(scope="session")
def spycheck_classes(tmp_path_factory) -> Path:
    javac = shutil.which("javac")
    assert javac, "javac not found: install a JDK (scripts/test installs default-jdk-headless)"
    assert SPY_JAR.is_file(), f"{SPY_JAR} not found: install libspymemcached-java"
    out = tmp_path_factory.mktemp("spycheck")
    cmd = [javac, "-Xlint:all", "-cp", str(SPY_JAR), "-d", str(out), str(SOURCE)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=180)
    assert proc.returncode == 0, f"$ {' '.join(cmd)}\n{proc.stdout.decode(errors='replace')}"
    return out


def run_spycheck(classes: Path, server, mode: str) -> subprocess.CompletedProcess:
    java = shutil.which("java")
    assert java, "java not found"
    cmd = [java, "-cp", f"{SPY_JAR}:{classes}", "SpyCheck", server.host, str(server.port), mode]
    try:
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=180)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"SpyCheck timed out; stdout so far:\n{exc.stdout!r}\nstderr:\n{exc.stderr!r}") from None


@pytest.mark.parametrize("mode", ["text", "binary"])
def test_spymemcached(spycheck_classes, server, mode):
    """As msm configures it: the default (text) or the binary connection factory."""
    proc = run_spycheck(spycheck_classes, server, mode)
    out = proc.stdout.decode(errors="replace")
    report = (f"exit code {proc.returncode}\n--- stdout ---\n{out}\n"
              f"--- stderr (tail) ---\n{proc.stderr.decode(errors='replace')[-4000:]}")
    lines = out.splitlines()
    passes = [line for line in lines if line.startswith("PASS ")]
    fails = [line for line in lines if line.startswith("FAIL ")]
    assert not fails, report
    assert proc.returncode == 0, report
    assert len(passes) == EXPECTED_CHECKS, f"{len(passes)} PASS lines, expected {EXPECTED_CHECKS}\n{report}"
    assert f"SUMMARY {EXPECTED_CHECKS}/{EXPECTED_CHECKS}" in lines, report
