"""Execute notebooks/study.ipynb in place and stamp it: ``make notebook``.

The notebook is committed with its outputs, so a reader on GitHub sees the figures. Executing
stamps every code cell with the SHA-1 of its source (``metadata.xray_loss.source_sha1``):
tests/test_notebook.py fails when a cell was edited after its outputs were made.

    python notebooks/execute.py [NOTEBOOK]
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent / "study.ipynb"


def source_sha1(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


def execute(path: Path = NOTEBOOK, timeout: int = 900) -> nbformat.NotebookNode:
    """Run every cell in ``path``'s folder; return the notebook with outputs and stamps."""
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.metadata["xray_loss"] = {"source_sha1": source_sha1(cell.source)}
            cell.execution_count = None  # no churn in diffs from re-runs
            for output in cell.outputs:
                output.pop("execution_count", None)
    return notebook


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else NOTEBOOK
    os.environ.pop("XRAY_LOSS_SWEEP", None)  # the committed outputs are the demo's
    nbformat.write(execute(target), target)
    print(f"executed and stamped {target} ({target.stat().st_size // 1024} KiB)")
