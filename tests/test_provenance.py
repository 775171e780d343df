"""What a run records of where it ran and what it saw: the machine of this attempt, and each
split's size and content digest, with split.csv naming every file and its sha1."""

from __future__ import annotations

import csv
import hashlib

from tests.conftest import assert_ok, metrics, run_cli, run_dirs
from tests.fixtures import kermany_cli, make_kermany


def test_a_run_records_its_machine_and_the_digests_of_its_splits(tmp_path):
    root = make_kermany(tmp_path / "chest_xray", test=False)
    args = [*kermany_cli(root), "epochs=1", "batch_size=16", "model.backbone.widths=[8]"]
    assert_ok(run_cli(*args, cwd=tmp_path))
    (run,) = run_dirs(tmp_path)
    record = metrics(run)
    assert record["machine"]["cores"] >= 1 and record["machine"]["torch"]
    with open(run / "split.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:  # the manifest names each file's contents
        assert row["sha1"] == hashlib.sha1((root / row["file"]).read_bytes()).hexdigest()
    for split in ("train", "val", "test"):
        assert record["splits"][split]["n"] == sum(r["split"] == split for r in rows)
    # the same data gives the same digests; one altered image changes its split's digest
    first = next(r for r in rows if r["split"] == "test")
    path = root / first["file"]
    path.write_bytes(path.read_bytes() + b"\0")
    assert_ok(run_cli(*args, "name=altered", cwd=tmp_path))
    (altered,) = [r for r in run_dirs(tmp_path) if "altered" in str(r)]
    again = metrics(altered)["splits"]
    assert again["test"]["digest"] != record["splits"]["test"]["digest"]
    assert again["train"] == record["splits"]["train"]
