"""./test.sh demands every test: under NEUTRINO_TEST_REQUIRE_ALL=1 a skip (in a test, a fixture or at
collection) fails the run with a message naming it; without it, a skip is a skip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SKIPPING = '''
import pytest

@pytest.fixture
def needs_root() -> None:
    pytest.skip("integration tests need root")

def test_runs() -> None:
    pass

def test_skips_in_fixture(needs_root: None) -> None:
    pass

@pytest.mark.skipif(True, reason="no PostgreSQL")
def test_skipif() -> None:
    pass

@pytest.mark.xfail(reason="known")
def test_xfail() -> None:
    raise AssertionError
'''

MODULE_SKIP = '''
import pytest

pytest.skip("no Keystone venv", allow_module_level=True)
'''


def run(tmp: Path, require: str | None, *files: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(ROOT / "tests" / "conftest.py", tmp / "conftest.py")
    (tmp / "pytest.ini").write_text("[pytest]\n")
    (tmp / "test_a.py").write_text(SKIPPING)
    (tmp / "test_b.py").write_text(MODULE_SKIP)
    env = {k: v for k, v in os.environ.items() if k != "NEUTRINO_TEST_REQUIRE_ALL"}
    if require is not None:
        env["NEUTRINO_TEST_REQUIRE_ALL"] = require
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "no:xdist",
                           *files], cwd=tmp, env=env, capture_output=True, text=True, timeout=120)


def test_skips_fail_when_everything_is_required(tmp_path: Path) -> None:
    done = run(tmp_path, "1", "test_a.py")
    assert done.returncode == 1, done.stdout
    assert "1 passed, 1 xfailed, 2 errors" in done.stdout, done.stdout
    assert "test_skips_in_fixture was skipped" in done.stdout and "integration tests need root" in done.stdout
    assert "test_skipif was skipped" in done.stdout and "no PostgreSQL" in done.stdout
    assert "NEUTRINO_TEST_REQUIRE_ALL=1 (./test.sh, .ci/run) demands that every test runs" in done.stdout
    done = run(tmp_path, "1", "test_a.py", "test_b.py")  # a module skipped whole: a collection error
    assert done.returncode != 0 and "test_b.py was skipped" in done.stdout and "no Keystone venv" in done.stdout


def test_skips_stay_skips_by_hand(tmp_path: Path) -> None:
    for require in (None, "0"):
        done = run(tmp_path, require, "test_a.py", "test_b.py")
        assert done.returncode == 0, done.stdout
        assert "1 passed, 3 skipped, 1 xfailed" in done.stdout, done.stdout


GROUPED = '''
import os
import pytest

pytestmark = pytest.mark.xdist_group("one")

@pytest.mark.parametrize("i", range(8))
def test_where(i: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    with open(os.environ["WHERE"], "a") as out:
        out.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
'''


def test_loadgroup_keeps_a_group_on_one_worker(tmp_path: Path) -> None:
    """./test.sh relies on it: one Keystone, one lab per module (pytest-xdist#1386 broke it on pytest 9.2)."""
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_g.py").write_text(GROUPED)
    where = tmp_path / "where"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist",
                           "loadgroup", "test_g.py"], cwd=tmp_path, env={**os.environ, "WHERE": str(where)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout
    workers = where.read_text().split()
    assert len(workers) == 8 and len(set(workers)) == 1, workers
