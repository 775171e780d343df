"""notebooks/study.ipynb: committed with its outputs, not stale, and it still runs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "notebooks"))
from execute import NOTEBOOK, execute, source_sha1  # noqa: E402

pytestmark = pytest.mark.slow


def _code_cells(notebook) -> list:
    return [c for c in notebook.cells if c.cell_type == "code"]


def test_the_committed_notebook_has_fresh_outputs():
    """Every code cell was executed as it reads now (``make notebook`` stamps the source it
    ran); the figures and tables are in the file, so GitHub shows them."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in _code_cells(notebook):
        stamp = cell.metadata.get("xray_loss", {}).get("source_sha1")
        assert stamp == source_sha1(cell.source), (
            f"stale outputs, run `make notebook`:\n{cell.source[:200]}"
        )
        assert cell.outputs, f"no outputs:\n{cell.source[:200]}"
    outputs = [o for c in _code_cells(notebook) for o in c.outputs]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # the figures
    assert sum("text/markdown" in o.get("data", {}) for o in outputs) >= 2  # the tables
    assert NOTEBOOK.stat().st_size < 512 * 1024
    assert "shown: " in "".join(o.get("text", "") for o in _code_cells(notebook)[0].outputs)


def test_the_notebook_runs_and_reproduces_its_exact_outputs(tmp_path, monkeypatch, study_sweep):
    """Re-executed on the suite's shared dry-run grid (XRAY_LOSS_SWEEP, the notebook's way to
    report on your own sweep; by default it reads the committed study in docs/results): every
    cell runs; the numeric demonstration, which does not depend on the sweep, prints what the
    committed notebook shows."""
    copy = tmp_path / "study.ipynb"
    copy.write_bytes(NOTEBOOK.read_bytes())
    monkeypatch.setenv("XRAY_LOSS_SWEEP", str(study_sweep))
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    executed = execute(copy, timeout=600)
    committed = nbformat.read(NOTEBOOK, as_version=4)

    def printed(notebook, marker: str) -> str:
        (cell,) = [c for c in _code_cells(notebook) if marker in c.source]
        return "".join(o.get("text", "") for o in cell.outputs)

    for marker in ("F.cross_entropy", "def train(head)"):
        assert printed(executed, marker) == printed(committed, marker)
    assert (tmp_path / "notebook_logs" / "report" / "summary.md").exists()
    (report_cell,) = [c for c in _code_cells(executed) if "make_report(" in c.source]
    shown = [o["data"].get("text/markdown", "") for o in report_cell.outputs if "data" in o]
    for name in ("fig1_loss_compare", "fig2_epochs", "fig1_difference", "fig3_forest"):
        assert f"**{name}**" in shown
    # the split the runs saw: each split's size as the sweep's records give it
    record = json.loads(next(study_sweep.glob("*/metrics.json")).read_text())
    (data_cell,) = [c for c in _code_cells(executed) if "def split_rows" in c.source]
    table = data_cell.outputs[0]["data"]["text/markdown"]
    for name, split in record["splits"].items():
        assert f"| {name} | {split['n']} |" in table
    said = data_cell.outputs[1]["data"]["text/markdown"]
    assert f"{len(glob_records(study_sweep))} of {len(glob_records(study_sweep))} records" in said
    # every CE - BCE judgement is read off the interval shown beside it
    (say_cell,) = [c for c in _code_cells(executed) if "def verdict" in c.source]
    verdicts = say_cell.outputs[0]["data"]["text/markdown"]
    for line in verdicts.splitlines():
        if line.count("[") != 1 or " | " not in line:
            continue
        low, high = (float(v) for v in line.split("[")[1].split("]")[0].split(","))
        assert ("includes 0" in line) == (low <= 0 <= high), line


def glob_records(sweep: Path) -> list[Path]:
    """The completed runs' records of a sweep."""
    found = [p for p in sweep.glob("*/metrics.json") if '"completed"' in p.read_text()]
    return found
