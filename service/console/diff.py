"""A two-column line diff for comparing policy versions, folded to the changed regions."""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Row:
    """One row of the side-by-side view; a side is None where that version has no line."""

    kind: str  # equal | replace | delete | insert | fold
    left_no: int | None = None
    left: str | None = None
    right_no: int | None = None
    right: str | None = None
    folded: int = 0  # for kind == "fold": how many unchanged lines are hidden


def side_by_side(old: str, new: str, context: int = 3) -> list[Row]:
    """Rows comparing OLD and NEW line by line; unchanged runs longer than 2*CONTEXT+1 lines
    are folded into one row so a one-line change in a long bundle stays readable."""
    a, b = old.splitlines(), new.splitlines()
    rows: list[Row] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            rows.extend(_equal(a, i1, i2, j1, context, first=not rows, last=i2 == len(a)))
            continue
        left, right = range(i1, i2), range(j1, j2)
        for k in range(max(len(left), len(right))):
            li = left[k] if k < len(left) else None
            rj = right[k] if k < len(right) else None
            rows.append(
                Row(
                    kind=tag,
                    left_no=li + 1 if li is not None else None,
                    left=a[li] if li is not None else None,
                    right_no=rj + 1 if rj is not None else None,
                    right=b[rj] if rj is not None else None,
                )
            )
    return rows


def _equal(
    a: list[str], i1: int, i2: int, j1: int, context: int, first: bool, last: bool
) -> list[Row]:
    def row(i: int) -> Row:
        """The unchanged line I of the old text, numbered on both sides."""
        return Row("equal", i + 1, a[i], j1 + (i - i1) + 1, a[i])

    head = 0 if first else context  # lines kept after the previous change
    tail = 0 if last else context  # lines kept before the next change
    if i2 - i1 <= head + tail + 1:
        return [row(i) for i in range(i1, i2)]
    kept_head = [row(i) for i in range(i1, i1 + head)]
    kept_tail = [row(i) for i in range(i2 - tail, i2)]
    fold = Row("fold", folded=(i2 - tail) - (i1 + head))
    return [*kept_head, fold, *kept_tail]


def changed(rows: list[Row]) -> bool:
    """True when any row differs."""
    return any(r.kind not in ("equal", "fold") for r in rows)
