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
from collections.abc import Mapping
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
    """IMEI -> distributor id: a dict keyed by TAC, then sorted disjoint ranges searched with
    ``bisect``, so a lookup costs the same with ten or a million allocations."""

    __slots__ = ("_tacs", "_starts", "_ends", "_owners")

    def __init__(self, tacs: dict[str, str], starts: list[int], ends: list[int], owners: list[str]):
        self._tacs = tacs
        # Contiguous machine words rather than lists of int objects: a million ranges stay
        # within a few MB and a bisect touches a few cache lines, not twenty scattered objects.
        self._starts = array("Q", starts)
        self._ends = array("Q", ends)
        self._owners = owners

    def __len__(self) -> int:
        return len(self._tacs) + len(self._starts)

    def to_snapshot(self) -> dict[str, Any]:
        """A JSON-able form that :meth:`from_snapshot` loads without parsing or sorting again:
        the TAC map, the owner ids, and the range arrays as base64 of their machine words."""
        ids = sorted(set(self._owners))
        position = {owner: i for i, owner in enumerate(ids)}
        return {
            "tacs": self._tacs,
            "ids": ids,
            "starts": b64encode(self._starts.tobytes()).decode(),
            "ends": b64encode(self._ends.tobytes()).decode(),
            "owners": b64encode(array("I", (position[o] for o in self._owners)).tobytes()).decode(),
        }

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any]) -> AllocationIndex:
        """The index saved by :meth:`to_snapshot` (trusted: it was validated when saved)."""
        starts, ends, owner_pos = array("Q"), array("Q"), array("I")
        starts.frombytes(b64decode(data["starts"]))
        ends.frombytes(b64decode(data["ends"]))
        owner_pos.frombytes(b64decode(data["owners"]))
        if not len(starts) == len(ends) == len(owner_pos):
            raise ValueError("allocation snapshot: arrays of different lengths")
        ids = data["ids"]
        return cls(dict(data["tacs"]), starts, ends, [ids[i] for i in owner_pos])

    def owner_of(self, imei: str) -> str | None:
        """Distributor id holding ``imei`` (14 or 15 digits), or None."""
        owner = self._tacs.get(imei[:8])
        if owner is not None:
            return owner
        if not self._starts:
            return None
        body = imei[:14]
        if not is_digits(body, 14):  # isdigit() alone lets "²" through to int()
            return None
        value = int(body)
        i = bisect_right(self._starts, value) - 1
        if i >= 0 and value <= self._ends[i]:
            return self._owners[i]
        return None


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
