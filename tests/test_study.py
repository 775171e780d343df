"""`make study`: the grid, the matched controls at the lr chosen on validation, the report and
the results page, at tiny scale; and the committed results page against its own summary.csv."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT, assert_ok, run_cli
from tests.fixtures import make_kermany

TINY_STUDY = ["seeds=2", "epochs_scale=0.05", "data.image_size=16", "data.num_workers=0"]


def page_table(page: Path) -> list[list[str]]:
    """The rows of the page's summary table (after its '## Summary table' heading)."""
    text = page.read_text().split("## Summary table", 1)[1]
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip().strip("*") for c in row.strip("|").split("|")] for row in rows[2:]]


def assert_table_is_summary_csv(page: Path, summary: Path) -> None:
    with open(summary, newline="") as f:
        expected = list(csv.DictReader(f))
    rows = page_table(page)
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected, strict=True):
        assert row[0] == want["loss"] and float(row[1]) == pytest.approx(float(want["lr"]))
        assert int(row[2]) == int(want["epochs"]) and int(row[3]) == int(want["n"])
        assert float(row[4]) == pytest.approx(float(want["auroc_mean"]), abs=6e-5)
        assert row[-1] == "-" or float(row[-1]) == pytest.approx(
            float(want["val_auroc_mean"]), abs=6e-5
        )


@pytest.mark.slow
def test_the_study_runs_end_to_end_and_its_page_is_its_own_numbers(tmp_path: Path):
    data = make_kermany(tmp_path / "chest", n_normal=40, n_pneumonia=60)
    args = [str(data), "--out", "study", "--page", "results", *TINY_STUDY]
    done = run_cli(*args, module="xray_loss.study", cwd=tmp_path)
    assert_ok(done)
    study = tmp_path / "study"
    grid = [p for p in (study / "grid").iterdir() if (p / "metrics.json").exists()]
    matched = [p for p in (study / "matched").iterdir() if (p / "metrics.json").exists()]
    assert len(grid) == 12 and len(matched) == 4  # 2 heads x 3 lr x 2 seeds; 2 heads x 2 seeds
    # the controls ran at the lr where the heads' best val loss differs most: recomputed here
    from xray_loss.study import matched_lr

    lr, gaps = matched_lr(study / "grid")
    assert lr == max(gaps, key=gaps.get) and len(gaps) == 3
    records = [json.loads((p / "metrics.json").read_text()) for p in matched]
    assert {r["config"]["lr"] for r in records} == {lr}
    assert {r["config"]["loss"] for r in records} == {"bce_matched", "ce_matched"}

    (page,) = (tmp_path / "results").glob("*-full-grid.md")
    folder = page.with_suffix("")
    assert_table_is_summary_csv(page, folder / "summary.csv")
    text = page.read_text()
    for figure in re.findall(r"!\[[^]]*\]\(([^)]+)\)", text):
        assert (page.parent / figure).is_file(), figure
    assert len(list((folder / "runs").rglob("metrics.json"))) == 16
    assert f"lr={lr:g}" in text and "make study DATA=" in text
    assert "Shortcut probe" in text  # the probe ran and its numbers are on the page

    # the records kept beside the page (metrics.json, curves.csv) are a report's input again
    from xray_loss.report.build import make_report

    make_report([folder / "runs"], tmp_path / "again", n_boot=10)
    with open(folder / "summary.csv") as f, open(tmp_path / "again" / "summary.csv") as g:
        first, second = list(csv.DictReader(f)), list(csv.DictReader(g))
    assert [r["auroc_mean"] for r in first] == [r["auroc_mean"] for r in second]
    assert (tmp_path / "again" / "fig1_loss_compare.png").exists()

    # run again: nothing is retrained (resume=true skips completed jobs), the page is rewritten
    before = {p: (p / "metrics.json").stat().st_mtime for p in grid}
    again = run_cli(*args, module="xray_loss.study", cwd=tmp_path)
    assert_ok(again)
    assert {p: (p / "metrics.json").stat().st_mtime for p in grid} == before
    assert page.read_text() == text


def test_a_missing_data_folder_is_one_sentence_with_the_layout(tmp_path: Path):
    done = run_cli(str(tmp_path / "nowhere"), module="xray_loss.study", cwd=tmp_path)
    assert done.returncode == 2
    assert "train/" in done.stderr and "NORMAL" in done.stderr
    assert "Traceback" not in done.stderr


def in_short(page: Path) -> str:
    """The page's two-sentence summary (its "**In short.**" paragraph), on one line."""
    text = page.read_text().split("**In short.** ", 1)[1].split("\n\n", 1)[0]
    return " ".join(text.split())


def test_the_committed_results_page_shows_its_summary_csv():
    pages = sorted((ROOT / "docs" / "results").glob("*-full-grid.md"))
    assert pages, "docs/results holds no results page"
    # the README links the newest page and quotes its summary as the page states it
    lines = (ROOT / "README.md").read_text().splitlines()
    readme = " ".join(" ".join(line.removeprefix("> ") for line in lines).split())
    assert f"(docs/results/{pages[-1].name})" in readme
    assert in_short(pages[-1]) in readme
    for page in pages:
        assert_table_is_summary_csv(page, page.with_suffix("") / "summary.csv")
        for figure in re.findall(r"!\[[^]]*\]\(([^)]+)\)", page.read_text()):
            assert (page.parent / figure).is_file(), figure
