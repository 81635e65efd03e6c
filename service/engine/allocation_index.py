"""Which distributor holds an IMEI: the allocation index and the overlap check that builds it.

A bundle may hold a million allocations, so they are never searched one by one: every
allocation is an interval of 14-digit IMEI bodies (a TAC is the interval TAC000000..TAC999999),
sorted once, checked for overlaps between distributors in the same sweep, and kept as a TAC dict
plus sorted disjoint ranges searched with ``bisect``. Allocations of the *same* distributor may
overlap (harmless); across distributors they may not.
"""

from __future__ import annotations

from array import array
from base64 import b64decode, b64encode
from bisect import bisect_right
from collections import Counter
from collections.abc import Mapping
from itertools import repeat
from operator import floordiv
from typing import Any

#: A TAC covers the 14-digit bodies TAC000000 .. TAC999999.
TAC_SPAN = 1_000_000
#: Cap on reported overlaps: a pasted-twice million-row allocation list should not produce a
#: million-line error response.
MAX_OVERLAP_ERRORS = 100


def is_digits(value: Any, size: int) -> bool:
    """True for a string of exactly ``size`` ASCII digits."""
    # Cheaper than a regex on a million allocations; isascii() keeps out other scripts' digits.
    return type(value) is str and len(value) == size and value.isdigit() and value.isascii()


class AllocationIndex:
    """IMEI -> distributor id, at about the same cost with ten or a million allocations.

    Built from the whole-TAC allocations (``tacs``) and the sorted, disjoint ranges of 14-digit
    bodies with their owners. A lookup is one dict probe on the IMEI's TAC (its first 8 digits):
    a whole-TAC allocation gives the owner at once; a TAC in which ranges start or end gives the
    *window* of ranges that can hold its IMEIs, searched with ``bisect`` within that window only.
    A TAC without an entry is nobody's, unless a range spans it whole (a range reaching over
    three or more TACs), found in the short list of those. Why not one ``bisect`` over all
    ranges: in CPython each step of it costs about 30 ns, and a million ranges take twenty
    steps (docs/performance.md, "Flat in allocations").
    """

    __slots__ = (
        "_tacs",
        "_starts",
        "_ends",
        "_ids",
        "_owner_at",
        "_by_tac",
        "_spanning",
        "_parts",
    )

    def __init__(self, tacs: dict[str, str], starts: list[int], ends: list[int], owners: list[str]):
        ids = sorted(set(owners))
        position = {owner: i for i, owner in enumerate(ids)}
        owner_at = array("I", map(position.__getitem__, owners))
        self._setup(tacs, array("Q", starts), array("Q", ends), ids, owner_at)

    def _setup(
        self, tacs: dict[str, str], starts: array, ends: array, ids: list[str], owner_at: array
    ) -> None:
        if not len(starts) == len(ends) == len(owner_at):
            raise ValueError("allocation index: arrays of different lengths")
        self._tacs = tacs
        # Contiguous machine words rather than lists of int objects: a million ranges stay
        # within a few MB.
        self._starts = starts
        self._ends = ends
        self._ids = ids
        self._owner_at = owner_at
        self._by_tac, self._spanning, self._parts = _tac_windows(tacs, starts, ends)

    def __len__(self) -> int:
        return len(self._tacs) + len(self._starts)

    def to_snapshot(self) -> dict[str, Any]:
        """A JSON-able form that :meth:`from_snapshot` loads without parsing or sorting again:
        the TAC map, the owner ids, and the range arrays as base64 of their machine words."""
        return {
            "tacs": self._tacs,
            "ids": self._ids,
            "starts": b64encode(self._starts.tobytes()).decode(),
            "ends": b64encode(self._ends.tobytes()).decode(),
            "owners": b64encode(self._owner_at.tobytes()).decode(),
        }

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any]) -> AllocationIndex:
        """The index saved by :meth:`to_snapshot` (trusted: it was validated when saved)."""
        starts, ends, owner_at = array("Q"), array("Q"), array("I")
        starts.frombytes(b64decode(data["starts"]))
        ends.frombytes(b64decode(data["ends"]))
        owner_at.frombytes(b64decode(data["owners"]))
        ids = list(data["ids"])
        if owner_at and max(owner_at) >= len(ids):
            raise ValueError("allocation snapshot: an owner outside the id list")
        index = cls.__new__(cls)
        index._setup(dict(data["tacs"]), starts, ends, ids, owner_at)
        return index

    def owner_of(self, imei: str) -> str | None:
        """Distributor id holding ``imei`` (14 or 15 digits), or None."""
        hit = self._by_tac.get(imei[:8])
        if hit is None:
            return self._spanning_owner(imei) if self._spanning else None
        if hit.__class__ is str:
            return hit
        body = imei[:14]
        # isdigit() alone lets "²" through to int().
        if len(body) != 14 or not body.isdigit() or not body.isascii():
            return None
        value = int(body)
        if hit < 0:
            # A crowded TAC: the window of the hundredth of it that holds the IMEI.
            part = ~hit + value // PART_SPAN % PARTS
            i = bisect_right(self._starts, value, self._parts[part], self._parts[part + 1]) - 1
        else:
            i = bisect_right(self._starts, value, hit >> _WINDOW_BITS, hit & _WINDOW_MASK) - 1
        # i may be the range just before the window: one reaching in from an earlier TAC, or
        # one ending before this TAC (the end comparison refuses it).
        if i >= 0 and value <= self._ends[i]:
            return self._ids[self._owner_at[i]]
        return None

    def _spanning_owner(self, imei: str) -> str | None:
        """Owner of an IMEI whose TAC has no entry: a range spanning that whole TAC, or None."""
        body = imei[:14]
        if not is_digits(body, 14):
            return None
        value = int(body)
        spanning = self._spanning
        i = bisect_right(spanning, value, key=self._starts.__getitem__) - 1
        if i >= 0 and value <= self._ends[spanning[i]]:
            return self._ids[self._owner_at[spanning[i]]]
        return None


#: A window of ranges [first, end) packed in one int: first << _WINDOW_BITS | end.
_WINDOW_BITS = 32
_WINDOW_MASK = (1 << _WINDOW_BITS) - 1


#: A TAC whose window holds more ranges than this is split into PARTS parts of PART_SPAN IMEIs.
CROWDED = 16
PARTS = 100
PART_SPAN = TAC_SPAN // PARTS


def _tac_windows(
    tacs: dict[str, str], starts: array, ends: array
) -> tuple[dict[str, Any], array, array]:
    """The TAC -> owner | window map of :class:`AllocationIndex`, the part bounds of crowded
    TACs, and the positions of the ranges spanning three or more TACs (whose middle TACs have
    no entry).

    A TAC's window is the ranges starting in it; the search in a window also lands on the range
    just before it when the IMEI precedes them, which is how a range reaching in from an
    earlier TAC is found (ranges are disjoint, so no range before that one can reach in). A TAC
    where a range ends but none starts has that range alone. Whole-TAC allocations are added
    last: a range of the same TAC can only be the same distributor's.
    """
    count = len(starts)
    if count > _WINDOW_MASK:
        raise ValueError("allocation index: too many ranges")
    # The one loop over every range runs in C (map, Counter); the rest is per TAC: a worker
    # loading a million-range snapshot spends a fraction of a second here.
    by_tac: dict[str, Any] = {}
    parts = array("I")
    spanning = array("I")
    crossing: list[int] = []
    first = 0
    # Counter keeps first-seen order: the TACs in ascending order, as starts are sorted.
    for tac, ranges in Counter(map(floordiv, starts, repeat(TAC_SPAN))).items():
        end = first + ranges
        if ranges > CROWDED:
            by_tac[f"{tac:08d}"] = ~len(parts)
            _split(parts, starts, tac * TAC_SPAN, first, end)
        else:
            by_tac[f"{tac:08d}"] = first << _WINDOW_BITS | end
        # Of the ranges starting in this TAC only the last can reach into later TACs.
        last_tac = ends[end - 1] // TAC_SPAN
        if last_tac != tac:
            crossing.append(end - 1)
            if last_tac - tac >= 2:
                spanning.append(end - 1)
        first = end
    for i in crossing:
        key = f"{ends[i] // TAC_SPAN:08d}"
        if key not in by_tac:
            by_tac[key] = i << _WINDOW_BITS | (i + 1)
    by_tac.update(tacs)
    return by_tac, spanning, parts


def _split(parts: array, starts: array, tac_start: int, first: int, end: int) -> None:
    """Append a crowded TAC's PARTS + 1 part bounds to ``parts``: bound k is where the part's
    first IMEI would be inserted among the window's starts, so the ranges that can hold an IMEI
    of part k are bound k - 1 .. bound k + 1 - 1 (the last bound is ``end``)."""
    bounds = range(tac_start, tac_start + TAC_SPAN + 1, PART_SPAN)
    parts.extend(map(bisect_right, repeat(starts), bounds, repeat(first), repeat(end)))


def _span(item: Any) -> tuple[int, int, bool] | None:
    """(first body, last body, is_tac) of a well-formed allocation, None otherwise (the schema
    reports those)."""
    if not isinstance(item, Mapping):
        return None
    if len(item) == 1:
        tac = item.get("tac")
        if is_digits(tac, 8):
            start = int(tac) * TAC_SPAN
            return start, start + TAC_SPAN - 1, True
    elif len(item) == 2:
        low, high = item.get("from"), item.get("to")
        if is_digits(low, 14) and is_digits(high, 14) and low <= high:
            return int(low), int(high), False
    return None


def _describe(item: Mapping[str, Any]) -> str:
    if "tac" in item:
        return f"tac {item['tac']}"
    return f"range {item['from']}-{item['to']}"


def index_allocations(
    distributors: Any, errors: dict[str, list[str]], trusted: bool
) -> AllocationIndex:
    """Check that no IMEI belongs to two distributors and build the lookup index.

    Sort-and-sweep over every allocation as an interval of 14-digit bodies (a TAC is the
    interval TAC000000..TAC999999): O(n log n). While sweeping we keep the furthest-reaching
    interval seen and the furthest-reaching one of a *different* distributor, which is enough
    to find an overlap with any earlier interval of another distributor.

    ``trusted``: ``distributors`` is the normalised output of the schema, so allocations need
    no re-checking. Otherwise it is the raw input (the schema found errors elsewhere) and
    malformed allocations are skipped, so overlaps are still reported alongside other errors.
    """
    starts: list[int] = []
    ends: list[int] = []
    owners: list[int] = []  # distributor index
    positions: list[int] = []  # allocation index within its distributor
    is_tac: list[bool] = []
    ids: list[str] = []
    if not isinstance(distributors, list):
        distributors = []
    for d, dist in enumerate(distributors):
        ident = dist.get("id") if isinstance(dist, Mapping) else None
        ids.append(ident if isinstance(ident, str) else "")
        allocations = dist.get("allocations") if isinstance(dist, Mapping) else None
        if not isinstance(allocations, list):
            continue
        for a, item in enumerate(allocations):
            if trusted:
                tac = item.get("tac")
                if tac is not None:
                    start = int(tac) * TAC_SPAN
                    span = (start, start + TAC_SPAN - 1, True)
                else:
                    span = (int(item["from"]), int(item["to"]), False)
            else:
                found = _span(item)
                if found is None:
                    continue
                span = found
            starts.append(span[0])
            ends.append(span[1])
            is_tac.append(span[2])
            owners.append(d)
            positions.append(a)

    order = sorted(range(len(starts)), key=starts.__getitem__)
    # best: furthest end so far and its owner; other: furthest end among owners != best owner.
    best_end, best_owner, best_at = -1, -1, -1
    other_end, other_at = -1, -1
    overlaps = 0
    tacs: dict[str, str] = {}
    r_starts: list[int] = []
    r_ends: list[int] = []
    r_owners: list[str] = []
    for k in order:
        start, end, owner = starts[k], ends[k], owners[k]
        # best_end >= other_end, so most intervals are cleared by this one comparison.
        if start <= best_end:
            clash = -1
            if best_owner != owner:
                clash = best_at
            elif other_end >= start:
                clash = other_at
            if clash >= 0:
                overlaps += 1
                if overlaps <= MAX_OVERLAP_ERRORS:
                    _report_overlap(k, clash, owners, positions, ids, distributors, errors)
        if end > best_end:
            if best_owner != owner:
                other_end, other_at = best_end, best_at
            best_end, best_owner, best_at = end, owner, k
        elif best_owner != owner and end > other_end:
            other_end, other_at = end, k
        # The lookup index is built in the same pass (only meaningful when no overlap).
        if is_tac[k]:
            tacs[f"{start // TAC_SPAN:08d}"] = ids[owner]
        elif r_ends and r_owners[-1] == ids[owner] and start <= r_ends[-1] + 1:
            # Same distributor's overlapping or adjacent ranges merge, keeping bisect exact.
            if end > r_ends[-1]:
                r_ends[-1] = end
        else:
            r_starts.append(start)
            r_ends.append(end)
            r_owners.append(ids[owner])
    if overlaps > MAX_OVERLAP_ERRORS:
        errors.setdefault("distributors", []).append(
            f"{overlaps - MAX_OVERLAP_ERRORS} more overlapping allocations not listed"
        )
    return AllocationIndex(tacs, r_starts, r_ends, r_owners)


def _report_overlap(
    k: int,
    clash: int,
    owners: list[int],
    positions: list[int],
    ids: list[str],
    distributors: list[Any],
    errors: dict[str, list[str]],
) -> None:
    """Report at whichever allocation comes later in the bundle, naming the other one."""
    later_is_k = (owners[k], positions[k]) > (owners[clash], positions[clash])
    here, there = (k, clash) if later_is_k else (clash, k)
    other_item = distributors[owners[there]]["allocations"][positions[there]]
    errors.setdefault(f"distributors.{owners[here]}.allocations.{positions[here]}", []).append(
        f"overlaps {_describe(other_item)} of distributor {ids[owners[there]]!r}"
    )
