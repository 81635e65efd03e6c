"""Distributor allocations from a manufacturer's shipment list (``regionlock distributors import``).

A shipment list has one IMEI (15 digits, Luhn-checked) or one range ``from,to`` (14-digit IMEI
bodies, inclusive) per line, optionally a header line, and may run to millions of lines. It is
read in one pass: each line is checked, and compared with the allocations of the *other*
distributors at once (so an overlap is reported with its line number); the accepted IMEIs are
kept as 14-digit bodies in compact arrays and merged afterwards with numpy: consecutive bodies
(IMEIs differ in their check digit, so consecutive IMEIs are consecutive bodies) become one
range, and a range covering a whole TAC (TAC000000..TAC999999) becomes a ``tac`` allocation.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: 14-digit bodies per TAC.
TAC_SPAN = 1_000_000
#: Problems listed one by one; beyond this only counted (a wrong file can have millions).
MAX_LISTED = 100

# Luhn: the digits in even positions from the right are doubled, digits of the product summed.
_DOUBLED = bytes.maketrans(b"0123456789", bytes([0, 2, 4, 6, 8, 1, 3, 5, 7, 9]))


def imei_luhn_ok(imei: str) -> bool:
    """True when the 15-digit IMEI's last digit is the Luhn check digit of its body."""
    digits = imei.encode("ascii")
    plain = digits[-1::-2]
    return (sum(plain) - 48 * len(plain) + sum(digits[-2::-2].translate(_DOUBLED))) % 10 == 0


def _digits(text: str, size: int) -> bool:
    return len(text) == size and text.isdigit() and text.isascii()


def describe(start: int, end: int) -> str:
    """An interval of bodies as people write allocations: ``tac 35387923`` or a range."""
    if start % TAC_SPAN == 0 and end == start + TAC_SPAN - 1:
        return f"tac {start // TAC_SPAN:08d}"
    return f"range {start:014d}-{end:014d}"


def allocation_span(allocation: Mapping[str, str]) -> tuple[int, int]:
    """(first, last) 14-digit body of a normalised allocation."""
    tac = allocation.get("tac")
    if tac is not None:
        start = int(tac) * TAC_SPAN
        return start, start + TAC_SPAN - 1
    return int(allocation["from"]), int(allocation["to"])


class OwnerIndex:
    """Which distributor holds any part of a span of bodies: sorted disjoint intervals."""

    def __init__(self, intervals: Iterable[tuple[int, int, str]]):
        ordered = sorted(intervals)
        starts: list[int] = []
        ends: list[int] = []
        owners: list[str] = []
        for start, end, owner in ordered:
            # One distributor's own allocations may overlap; merging those keeps bisect exact
            # (different distributors' never overlap in a valid bundle). Merely adjacent ones
            # stay apart, so an overlap names the allocation as the bundle writes it.
            if owners and owners[-1] == owner and start <= ends[-1]:
                ends[-1] = max(ends[-1], end)
                continue
            starts.append(start)
            ends.append(end)
            owners.append(owner)
        self._starts, self._ends, self._owners = starts, ends, owners

    @classmethod
    def from_bundle(cls, bundle: Mapping[str, Any], exclude: str | None = None) -> OwnerIndex:
        """Every allocation of BUNDLE except those of the distributor EXCLUDE."""
        return cls(
            (*allocation_span(item), dist["id"])
            for dist in bundle.get("distributors", ())
            if dist["id"] != exclude
            for item in dist.get("allocations", ())
        )

    def owner(self, start: int, end: int) -> tuple[str, int, int] | None:
        """(distributor, first, last) of an interval meeting [START, END], or None."""
        i = bisect_right(self._starts, end) - 1
        # Intervals are disjoint and sorted, so their ends ascend too: only the last one that
        # starts at or before END can reach back to START.
        if i >= 0 and self._ends[i] >= start:
            return self._owners[i], self._starts[i], self._ends[i]
        return None


@dataclass(frozen=True, slots=True)
class LineProblem:
    """A line that cannot be accepted, and why."""

    line: int
    text: str
    reason: str


@dataclass
class Shipment:
    """A parsed shipment list: accepted bodies and ranges, and every problem counted."""

    lines: int = 0
    imeis: int = 0
    ranges: int = 0
    bad: list[LineProblem] = field(default_factory=list)
    bad_count: int = 0
    overlaps: list[LineProblem] = field(default_factory=list)
    overlap_count: int = 0
    bodies: array = field(default_factory=lambda: array("q"))
    range_starts: array = field(default_factory=lambda: array("q"))
    range_ends: array = field(default_factory=lambda: array("q"))

    @property
    def ok(self) -> bool:
        """True when every line was accepted and nothing overlaps another distributor."""
        return not self.bad_count and not self.overlap_count

    def _bad(self, line: int, text: str, reason: str) -> None:
        self.bad_count += 1
        if len(self.bad) < MAX_LISTED:
            self.bad.append(LineProblem(line, text[:80], reason))


def read_shipment(lines: Iterable[str], others: OwnerIndex | None = None) -> Shipment:
    """Parse a shipment list; OTHERS (other distributors' allocations) are checked line by line."""
    shipment = Shipment()
    bodies_append = shipment.bodies.append
    header_allowed = True
    for number, raw in enumerate(lines, start=1):
        shipment.lines = number
        text = raw.strip()
        if not text:
            continue
        if '"' in text:  # spreadsheets quote cells
            text = text.replace('"', "")
        if "," not in text and len(text) == 15 and text.isdigit() and text.isascii():
            header_allowed = False
            if not imei_luhn_ok(text):
                shipment._bad(number, text, "IMEI with a wrong Luhn check digit")
                continue
            start = end = int(text[:14])
            shipment.imeis += 1
        else:
            parts = [p.strip() for p in text.split(",")]
            if header_allowed and any(c.isalpha() for c in text):
                header_allowed = False
                continue  # a header line such as "imei" or "from,to"
            header_allowed = False
            if len(parts) == 1:
                shipment._bad(number, text, "expected a 15-digit IMEI or 'from,to'")
                continue
            if len(parts) != 2 or not (_digits(parts[0], 14) and _digits(parts[1], 14)):
                shipment._bad(number, text, "a range is two 14-digit IMEI bodies: from,to")
                continue
            start, end = int(parts[0]), int(parts[1])
            if start > end:
                shipment._bad(number, text, "'from' is greater than 'to'")
                continue
            shipment.ranges += 1
        if others is not None:
            held = others.owner(start, end)
            if held is not None:
                shipment.overlap_count += 1
                if len(shipment.overlaps) < MAX_LISTED:
                    owner, low, high = held
                    shipment.overlaps.append(
                        LineProblem(
                            number, text, f"overlaps {describe(low, high)} of distributor {owner!r}"
                        )
                    )
                continue
        if start == end:
            bodies_append(start)
        else:
            shipment.range_starts.append(start)
            shipment.range_ends.append(end)
    return shipment


def merge_intervals(starts: Sequence[int], ends: Sequence[int]) -> list[tuple[int, int]]:
    """Union of the intervals [starts[i], ends[i]]: sorted, disjoint and non-adjacent."""
    if not len(starts):
        return []
    low = np.asarray(starts, dtype=np.int64)
    high = np.asarray(ends, dtype=np.int64)
    order = np.argsort(low, kind="stable")
    low, high = low[order], high[order]
    reach = np.maximum.accumulate(high)
    # A new group starts where an interval begins after everything before it ends (+1: adjacent
    # bodies join, that is what makes consecutive IMEIs one range).
    breaks = np.flatnonzero(low[1:] > reach[:-1] + 1) + 1
    first = np.concatenate(([0], breaks))
    last = np.concatenate((breaks - 1, [len(low) - 1]))
    return list(zip(low[first].tolist(), reach[last].tolist(), strict=True))


def to_allocations(intervals: Iterable[tuple[int, int]]) -> list[dict[str, str]]:
    """Allocations for disjoint intervals: whole TACs as ``tac``, the rest as ranges."""
    out: list[dict[str, str]] = []
    for start, end in intervals:
        first_tac = -(-start // TAC_SPAN)  # the first TAC starting inside the interval
        last_tac = (end + 1) // TAC_SPAN - 1  # the last TAC ending inside it
        if first_tac > last_tac:
            out.append({"from": f"{start:014d}", "to": f"{end:014d}"})
            continue
        if start < first_tac * TAC_SPAN:
            out.append({"from": f"{start:014d}", "to": f"{first_tac * TAC_SPAN - 1:014d}"})
        out.extend({"tac": f"{tac:08d}"} for tac in range(first_tac, last_tac + 1))
        if end >= (last_tac + 1) * TAC_SPAN:
            out.append({"from": f"{(last_tac + 1) * TAC_SPAN:014d}", "to": f"{end:014d}"})
    return out


def shipment_allocations(
    shipment: Shipment, existing: Iterable[Mapping[str, str]] = ()
) -> list[dict[str, str]]:
    """The shipment's IMEIs and ranges, with EXISTING allocations, as merged allocations."""
    starts = array("q", shipment.bodies)
    ends = array("q", shipment.bodies)
    starts.extend(shipment.range_starts)
    ends.extend(shipment.range_ends)
    for item in existing:
        low, high = allocation_span(item)
        starts.append(low)
        ends.append(high)
    return to_allocations(merge_intervals(starts, ends))


class DistributorError(ValueError):
    """The distributor cannot be created or updated as asked."""


def with_distributor_allocations(
    bundle: Mapping[str, Any],
    distributor_id: str,
    shipment: Shipment,
    *,
    name: str | None = None,
    territories: Sequence[str] | None = None,
    replace: bool = False,
) -> tuple[dict[str, Any], int]:
    """A copy of BUNDLE whose distributor DISTRIBUTOR_ID holds the shipment's IMEIs (added to
    its allocations, or instead of them with REPLACE); a new distributor needs TERRITORIES.
    Returns the bundle and the distributor's number of allocations."""
    out = {k: v for k, v in bundle.items() if k != "distributors"}
    distributors = [dict(d) for d in bundle.get("distributors", ())]
    current = next((d for d in distributors if d["id"] == distributor_id), None)
    if current is None:
        if not territories:
            raise DistributorError(
                f"distributor {distributor_id!r} is new: give its --territories (and --name)"
            )
        current = {"id": distributor_id, "name": name or distributor_id, "allocations": []}
        distributors.append(current)
    if name:
        current["name"] = name
    if territories:
        current["territories"] = list(territories)
    existing = () if replace else current.get("allocations", ())
    current["allocations"] = shipment_allocations(shipment, existing)
    out["distributors"] = distributors
    return out, len(current["allocations"])
