"""The numbers the docs quote are what the code prints: docs/data.md's phantom table (written by
bench/phantom_table.py) against a fresh default run, as `make train` runs it."""

from __future__ import annotations

import pytest

from bench.phantom_table import COLUMNS, DOC, quoted_rows
from tests.conftest import assert_ok, metrics, run_cli, run_dirs

pytestmark = pytest.mark.slow

# a few of the 500 test images may flip at threshold 0.5 on another CPU's arithmetic
TOLERANCE = 0.006


def test_the_phantom_table_quotes_what_make_train_prints(workdir):
    quoted = quoted_rows(DOC.read_text())
    assert {seed for seed, _ in quoted} == {0, 1, 2} and {h for _, h in quoted} == {"bce", "ce"}
    assert_ok(run_cli(cwd=workdir))  # the default: seed 0, BCE head
    (run,) = run_dirs(workdir / "logs")
    test = metrics(run)["test"]
    for column in COLUMNS:
        assert test[f"test/{column}"] == pytest.approx(quoted[(0, "bce")][column], abs=TOLERANCE)
