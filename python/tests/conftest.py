"""Stores for the Python tests, built by the real `qdump` from the repository's sample fixtures."""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("QSTORE_BIN_DIR", ROOT / "target" / "debug"))
SAMPLE = ROOT / "fixtures" / "sample"


def run(program, *args):
    """Runs a qstore program; fails the test with its output when it fails."""
    out = subprocess.run([str(BIN / program), *map(str, args)], capture_output=True, text=True)
    assert out.returncode == 0, f"{program} {' '.join(map(str, args))}: {out.stdout}{out.stderr}"
    return out.stdout


@pytest.fixture(scope="session")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("stores") / "sample"
    run("qdump", "all", "--csv", SAMPLE, "--to", path)
    return path


@pytest.fixture
def fresh_store(tmp_path):
    """A store of its own, for tests that change it."""
    path = tmp_path / "store"
    run("qdump", "all", "--csv", SAMPLE, "--to", path)
    return path
