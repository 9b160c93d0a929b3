"""The docs say what the code does: the row table of docs/ARCHITECTURE.md is training_core.result.ROW_KEYS, every
section of docs/RECIPE.md that a comment cites exists, and README's layout names every package of the harness."""

from __future__ import annotations

import re
from pathlib import Path

from training_core.result import ROW_KEYS

ROOT = Path(__file__).resolve().parents[1]


def test_the_row_table_is_the_row_vocabulary():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    table = re.findall(r"^\| `(\w+)` \| ([^|]+) \| ([^|]+) \| (.+) \|$", text, flags=re.M)
    assert [(name, kind.strip()) for name, kind, _, _ in table] == [(k.name, k.type) for k in ROW_KEYS]
    for (_, _, added, meaning), key in zip(table, ROW_KEYS, strict=True):
        assert key.added_by.startswith(added.strip()) and meaning == key.meaning, key.name


def test_every_cited_recipe_section_exists():
    sections = set(re.findall(r"^### (\d+\.\d+) ", (ROOT / "docs" / "RECIPE.md").read_text(), flags=re.M))
    cited = set()
    for path in [*ROOT.glob("training_core/**/*.py"), *ROOT.glob("harness/**/*.py"), *ROOT.glob("tests/**/*.py")]:
        for group in re.findall(r"RECIPE\.md §([0-9./-]+)", path.read_text()):
            cited.update(re.findall(r"\d+\.\d+", group))
    assert cited and cited <= sections, sorted(cited - sections)


def test_no_comment_cites_a_document_outside_the_repository():
    for path in [*ROOT.glob("training_core/**/*.py"), *ROOT.glob("harness/**/*.py")]:
        text = path.read_text()
        assert "fact sheet" not in text and "DESIGN.md" not in text, path


def test_readme_layout_names_every_harness_package():
    readme = (ROOT / "README.md").read_text()
    packages = sorted(p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "harness").rglob("__init__.py"))
    missing = [p for p in packages if f"{p}/" not in readme]
    assert missing == []
