"""Reading test vectors out of the docs' Markdown tables (so pages and code cannot drift)."""

from __future__ import annotations


def section(page: str, title: str, level: int = 3) -> str:
    """The part of PAGE under the heading TITLE (at LEVEL), up to the next heading."""
    marker = "#" * level
    start = page.index(f"{marker} {title}")
    end = page.find("\n#", start + level + 1)
    if level == 2:  # a level-2 section holds its level-3 subsections
        end = page.find("\n## ", start + 3)
    return page[start : end if end != -1 else None]


def table_rows(text: str) -> list[list[str]]:
    """The table rows of TEXT whose cells are all code spans or numbers, each cell's text
    (without the backticks): the vectors, not the header or rule lines."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("| ") or line.startswith("| ---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if all(c.startswith("`") and c.endswith("`") or c.isdigit() for c in cells):
            rows.append([c.strip("`") for c in cells])
    return rows
