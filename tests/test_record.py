"""metrics.json: written atomically, with the permissions of any other output file, naming the
commit of the code that ran."""

from __future__ import annotations

import json
import os
import stat

import pytest

from xray_loss.atomic import write_json_atomic
from xray_loss.runtime.record import RunRecord


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_metrics_json_gets_the_mode_of_a_normal_file(tmp_path, umask):
    old = os.umask(umask)
    try:
        RunRecord(tmp_path).start(config={"lr": 1e-3})
        write_json_atomic(tmp_path / "other.json", {"a": 1})
        (tmp_path / "plain.txt").write_text("written with open()")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "other.json").stat().st_mode) == expected
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "running"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "other.json", "plain.txt"]


def test_a_record_names_the_commit_of_the_code_that_ran(tmp_path):
    import subprocess

    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    RunRecord(tmp_path).start(config={"lr": 1e-3})
    commit = json.loads((tmp_path / "metrics.json").read_text())["commit"]
    assert commit.split("+")[0] == head
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout.strip()
    assert commit.endswith("+dirty") == bool(dirty)
