"""Staged rollout and bundle exceptions (SPEC §12.1, §12.2): which devices a rule is enforced on.

Both are compiled once per bundle and consulted only when a rule hits, so a check-in that hits
nothing (the common case) pays nothing for them, and a bundle without them pays nothing at all.

``in_rollout`` is the exact formula of SPEC §12.1, so firmware teams and analysts can predict who
is in: ``int.from_bytes(sha256((rule_id + ":" + imei).encode()).digest()[:4], "big") % 100 <
percent``. A device's bucket (the value before ``<``) does not depend on the percentage, so a
device in the rollout at p stays in at every q > p.

:class:`ExceptionIndex` answers "which rule kinds do the bundle's exceptions lift for this
device" with a dict per IMEI, a dict per TAC and sorted disjoint ranges searched with
``bisect`` (entries may overlap: a device matched by several gets the union of their lifts).
"""

from __future__ import annotations

from array import array
from base64 import b64decode, b64encode
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from hashlib import sha256
from typing import Any

#: Nothing lifted.
NO_LIFTS: frozenset[str] = frozenset()


def rollout_bucket(rule_id: str, imei: str) -> int:
    """The device's bucket 0-99 for a rule (SPEC §12.1); in the rollout when below the percent."""
    digest = sha256((rule_id + ":" + imei).encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100


def in_rollout(rule_id: str, imei: str, percent: int) -> bool:
    """True when the device with primary IMEI ``imei`` is in rule ``rule_id``'s rollout."""
    return percent >= 100 or rollout_bucket(rule_id, imei) < percent


class ExceptionIndex:
    """IMEI -> the rule kinds the bundle's ``exceptions`` lift for it (SPEC §12.2).

    Lifts are kept as bit masks over the kinds named (a handful), so a hundred thousand entries
    index in a fraction of a second and a lookup ORs small integers."""

    __slots__ = ("_kinds", "_sets", "_imeis", "_tacs", "_starts", "_ends", "_masks")

    def __init__(self, entries: Iterable[Mapping[str, Any]]):
        bits: dict[str, int] = {}
        mask_of: dict[tuple[str, ...], int] = {}
        imeis: dict[str, int] = {}
        tacs: dict[str, int] = {}
        ranges: list[tuple[int, int, int]] = []
        for entry in entries:
            names = tuple(entry["lifts"])
            mask = mask_of.get(names)
            if mask is None:
                mask = 0
                for kind in names:
                    mask |= bits.setdefault(kind, 1 << len(bits))
                mask_of[names] = mask
            imei = entry.get("imei")
            if imei is not None:
                imeis[imei] = imeis.get(imei, 0) | mask
                continue
            tac = entry.get("tac")
            if tac is not None:
                tacs[tac] = tacs.get(tac, 0) | mask
            else:
                ranges.append((int(entry["from"]), int(entry["to"]), mask))
        self._kinds = tuple(bits)
        self._sets = _mask_sets(self._kinds)
        self._imeis = imeis
        self._tacs = tacs
        self._starts, self._ends, self._masks = _disjoint(ranges, len(bits))

    def __bool__(self) -> bool:
        return bool(self._imeis or self._tacs or self._starts)

    def to_snapshot(self) -> dict[str, Any]:
        """A JSON-able form :meth:`from_snapshot` loads without sorting or sweeping again (the
        published compiled policy carries it instead of the exceptions list)."""
        return {
            "kinds": list(self._kinds),
            "imeis": self._imeis,
            "tacs": self._tacs,
            "starts": b64encode(array("Q", self._starts).tobytes()).decode(),
            "ends": b64encode(array("Q", self._ends).tobytes()).decode(),
            "masks": b64encode(array("I", self._masks).tobytes()).decode(),
        }

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any]) -> ExceptionIndex:
        """The index saved by :meth:`to_snapshot` (trusted: validated when it was saved)."""
        starts, ends, masks = array("Q"), array("Q"), array("I")
        starts.frombytes(b64decode(data["starts"]))
        ends.frombytes(b64decode(data["ends"]))
        masks.frombytes(b64decode(data["masks"]))
        if not len(starts) == len(ends) == len(masks):
            raise ValueError("exceptions snapshot: arrays of different lengths")
        index = cls(())
        kinds = tuple(data["kinds"])
        index._kinds = kinds
        index._sets = _mask_sets(kinds)
        index._imeis = dict(data["imeis"])
        index._tacs = dict(data["tacs"])
        index._starts, index._ends, index._masks = starts.tolist(), ends.tolist(), masks.tolist()
        return index

    def _mask_of(self, imei: str) -> int:
        mask = self._imeis.get(imei, 0) | self._tacs.get(imei[:8], 0)
        if self._starts:
            body = imei[:14]
            if len(body) == 14 and body.isascii() and body.isdigit():
                value = int(body)
                i = bisect_right(self._starts, value) - 1
                if i >= 0 and value <= self._ends[i]:
                    mask |= self._masks[i]
        return mask

    def lifts_of(self, imei: str) -> frozenset[str]:
        """Rule kinds lifted for one IMEI (15 digits; 14 are matched by TAC and range only)."""
        return self._sets[self._mask_of(imei)]

    def lifts_for(self, imei: str, aliases: tuple[str, ...] = ()) -> frozenset[str]:
        """Rule kinds lifted for a device: those of its primary IMEI and of each of its other
        IMEIs (an exception names a device by whichever of its IMEIs the editor has)."""
        mask = self._mask_of(imei)
        for alias in aliases:
            mask |= self._mask_of(alias)
        return self._sets[mask]


def _mask_sets(kinds: tuple[str, ...]) -> tuple[frozenset[str], ...]:
    """mask -> the frozenset of kinds it stands for (bit i: ``kinds[i]``), every combination
    (there are few kinds)."""
    return tuple(
        frozenset(kind for i, kind in enumerate(kinds) if m >> i & 1)
        for m in range(1 << len(kinds))
    )


def _disjoint(
    ranges: list[tuple[int, int, int]], kinds: int
) -> tuple[list[int], list[int], list[int]]:
    """Overlapping ranges as sorted disjoint segments, each with the union (a bit mask) of the
    lifts of the ranges covering it: a sweep over the range ends counting, per kind, the ranges
    open; adjacent segments with equal masks are merged."""
    if not ranges:
        return [], [], []
    events: list[tuple[int, int]] = []  # (point, signed mask): + opens at point, - closes
    for start, end, mask in ranges:
        events.append((start, mask))
        events.append((end + 1, -mask))
    events.sort(key=lambda e: e[0])
    counts = [0] * kinds
    starts: list[int] = []
    ends: list[int] = []
    masks: list[int] = []
    open_mask = 0
    n = len(events)
    i = 0
    while i < n:
        point = events[i][0]
        while i < n and events[i][0] == point:
            signed = events[i][1]
            step, mask = (1, signed) if signed > 0 else (-1, -signed)
            bit = 0
            while mask:
                if mask & 1:
                    counts[bit] += step
                mask >>= 1
                bit += 1
            i += 1
        active = 0
        for bit, count in enumerate(counts):
            if count:
                active |= 1 << bit
        if active == open_mask:
            continue  # nothing changed at this point (same lifts go on, or still none)
        if open_mask:
            ends.append(point - 1)  # close the open segment
        if active:
            starts.append(point)
            masks.append(active)
        open_mask = active
    return starts, ends, masks
