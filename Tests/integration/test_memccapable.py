"""libmemcached's protocol conformance tool, memccapable, in ASCII and binary mode."""

from __future__ import annotations

import shutil
import subprocess

import pytest

#: memccapable -a and -b (libmemcached-tools 1.1.4) each run 27 tests.
EXPECTED_PASSES = 27


@pytest.mark.parametrize("mode", ["-a", "-b"], ids=["ascii", "binary"])
def test_memccapable(server, mode):
    tool = shutil.which("memccapable")
    assert tool, "memccapable not found: install libmemcached-tools (scripts/test does)"
    cmd = [tool, "-h", server.host, "-p", str(server.port), mode]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{' '.join(cmd)} timed out; output so far:\n{exc.output!r}") from None
    output = proc.stdout.decode(errors="replace")
    passes = [line for line in output.splitlines() if line.rstrip().endswith("[pass]")]
    report = f"$ {' '.join(cmd)}\nexit code {proc.returncode}\n{output}"
    assert proc.returncode == 0, report
    assert "All tests passed" in output, report
    assert len(passes) == EXPECTED_PASSES, f"{len(passes)} [pass] lines, expected {EXPECTED_PASSES}\n{report}"
    assert "[fail]" not in output.lower(), report
