"""The phantom table of docs/data.md, measured: the default run (``make train``) at three seeds
with each head, test metrics at threshold 0.5. ``--write`` replaces the table in docs/data.md
(between its ``phantom-table`` markers); ``tests/test_docs_numbers.py`` checks the seed-0 BCE row
against a fresh ``make train``.

    .venv/bin/python bench/phantom_table.py [--seeds 0 1 2] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "data.md"
COLUMNS = ("acc", "auroc", "sensitivity", "specificity")
HEADER = (
    "| seed | head | test accuracy | test AUROC | sensitivity | specificity |\n"
    "|---|---|---|---|---|---|"
)
BEGIN, END = "<!-- phantom-table: bench/phantom_table.py -->", "<!-- /phantom-table -->"


def run(seed: int, loss: str, workdir: Path, extra: tuple[str, ...] = ()) -> dict:
    """Test metrics of the default run with this seed and head (a fresh interpreter)."""
    name = f"table_{loss}_{seed}"
    env = {**os.environ, "XRAY_LOSS_CACHE": str(workdir / "cache")}
    subprocess.run(
        [sys.executable, "-m", "xray_loss.train", f"seed={seed}", f"loss={loss}", f"name={name}"]
        + list(extra),
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
    )
    (record,) = (workdir / "logs" / name / "runs").glob("*/metrics.json")
    test = json.loads(record.read_text())["test"]
    return {c: test[f"test/{c}"] for c in COLUMNS}


def row(seed: int, loss: str, values: dict) -> str:
    return f"| {seed} | {loss.upper()} | " + " | ".join(f"{values[c]:.3f}" for c in COLUMNS) + " |"


def quoted_rows(text: str) -> dict[tuple[int, str], dict]:
    """The table as docs/data.md quotes it: (seed, head) -> metrics."""
    section = text[text.index(BEGIN) : text.index(END)]
    found = {}
    for line in section.splitlines():
        match = re.match(r"\| (\d+) \| (BCE|CE) \|(.*)\|$", line)
        if match:
            values = [float(v) for v in match.group(3).split("|")]
            found[(int(match.group(1)), match.group(2).lower())] = dict(
                zip(COLUMNS, values, strict=True)
            )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--write", action="store_true", help="replace the table in docs/data.md")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from bench.common import machine

    print(machine(), flush=True)
    lines = [HEADER]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for loss in ("bce", "ce"):
                lines.append(row(seed, loss, run(seed, loss, Path(tmp))))
                print(lines[-1], flush=True)
    print(f"{len(lines) - 1} runs in {time.perf_counter() - start:.0f} s")
    if args.write:
        text = DOC.read_text()
        head, rest = text.split(BEGIN)
        _, tail = rest.split(END)
        DOC.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail)
        print(f"written to {DOC}")


if __name__ == "__main__":
    main()
