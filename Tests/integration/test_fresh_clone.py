"""The repository tests alone: nothing in scripts/, Tests/ or .ci/ reads
outside it, and the tests that use recorded msm data pass from a copy of the
files git knows (what a fresh clone holds), with nothing beside it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from conftest import REPO_ROOT, tandemd_binary

pytestmark = pytest.mark.tandemd_only

#: What a path that leaves the repository looks like in these scripts and tests:
#: the parent of the repository root, or an absolute path of the machine it
#: was developed on (and `../name` for a name the repository's root lacks:
#: `sibling_references`).
ESCAPES = [
    re.compile(r"REPO_ROOT\.parent"),
    re.compile(r"\$(?:REPO_)?ROOT/\.\./"),
    re.compile("/" + r"work/"),
]


#: `../name`: a path one level up, by name.
UP_ONE = re.compile(r"\.\./([A-Za-z_][\w.-]*)")


def sibling_references(line: str) -> List[str]:
    """The `../name` in `line` whose name is not at the repository's root: a
    directory beside the repository. (`.ci/run` reaching `../scripts` from
    `.ci` stays inside it.)"""
    return [name for name in UP_ONE.findall(line) if not (REPO_ROOT / name).exists()]


def tracked_files() -> List[Path]:
    """The files a clone would have (tracked), plus new ones not ignored yet."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO_ROOT, capture_output=True, check=True).stdout
    return [Path(name.decode()) for name in listed.split(b"\0") if name]


def test_nothing_in_scripts_tests_or_ci_refers_outside_the_repository():
    me = Path(__file__).resolve().relative_to(REPO_ROOT)
    offenders = []
    for path in tracked_files():
        if path.parts[0] not in ("scripts", "Tests", ".ci") or path == me:
            continue
        full = REPO_ROOT / path
        if not full.is_file():
            continue
        text = full.read_bytes()
        if b"\0" in text:
            continue  # recorded binary values
        for lineno, line in enumerate(text.decode(errors="replace").splitlines(), 1):
            if any(pattern.search(line) for pattern in ESCAPES) or sibling_references(line):
                offenders.append(f"{path}:{lineno}: {line.strip()}")
    assert not offenders, "references outside the repository:\n" + "\n".join(offenders)


def test_the_recorded_msm_data_is_in_the_repository_and_its_tests_pass_from_a_copy(tmp_path: Path):
    clone = tmp_path / "clone"
    for path in tracked_files():
        source = REPO_ROOT / path
        if source.is_file():
            (clone / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / path)
    assert (clone / "Tests" / "fixtures" / "msm" / "traffic.txt").is_file()
    assert (clone / "Tests" / "fixtures" / "msm" / "MANIFEST.md").is_file()
    # The copy sits alone in a directory of its own: a test that looked
    # beside the repository would find nothing there.
    assert [entry.name for entry in clone.parent.iterdir()] == ["clone"]
    integration = clone / "Tests" / "integration"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(integration / "test_msm_replay.py"), str(integration / "test_msm_binary_replay.py"),
         str(integration / "test_sessions.py"), "-k", "not million"],
        cwd=clone, capture_output=True, timeout=600,
        env={**os.environ, "TANDEMD_BIN": str(tandemd_binary()), "PYTHONDONTWRITEBYTECODE": "1"},
    )
    output = result.stdout.decode(errors="replace")[-4000:] + result.stderr.decode(errors="replace")[-2000:]
    assert result.returncode == 0, output
    assert re.search(r"\b(\d+) passed", output) and " failed" not in output, output
