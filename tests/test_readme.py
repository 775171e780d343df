"""The README's maps stay true: every module is in the code map, every linked file exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_module_is_in_the_code_map():
    start = README.index("## Code map")
    section = README[start : README.index("\n## ", start + 1)]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    listed = set(re.findall(r"`([\w/]+(?:\.py|/))`", table))
    missing = []
    for path in sorted((ROOT / "xray_loss").rglob("*.py")):
        rel = path.relative_to(ROOT / "xray_loss").as_posix()
        if path.name == "__init__.py" and rel != "report/__init__.py":
            continue
        if rel not in listed and rel.split("/")[0] + "/" not in listed - {"data/"}:
            missing.append(rel)
    assert not missing, f"modules missing from the README's code map: {missing}"
    stale = [p for p in listed if not (ROOT / "xray_loss" / p).exists()]
    assert not stale, f"the code map names modules that do not exist: {stale}"


def test_relative_links_point_at_files():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
            if target.startswith("http"):
                continue
            assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"


CLAIM_WORDS = re.compile(r"\b(exactly|identical(?:ly)?|bit for\s+bit|never)\b", re.I)


def test_every_claim_names_a_test_that_exists():
    claims = (ROOT / "docs" / "claims.md").read_text()
    named = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", claims)
    assert len(named) >= 15
    for path, test in named:
        source = (ROOT / path).read_text()
        assert not test or f"def {test}(" in source, f"docs/claims.md names {path}::{test}"
    # every sentence of the README with a claim word is one the table covers, by its section
    sections = set(re.findall(r"\(([A-Z][\w ]+)\) \|", claims))
    for title, body in re.findall(r"\n## ([^\n]+)\n(.*?)(?=\n## |\Z)", README, re.S):
        prose = re.sub(r"```.*?```", "", body, flags=re.S)
        if CLAIM_WORDS.search(prose) and not title.startswith(("Code map", "Development")):
            short = title.split(":")[0].split(" in ")[0].strip()
            assert any(short.startswith(s) or s.startswith(short) for s in sections), title
