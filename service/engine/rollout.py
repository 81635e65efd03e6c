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
    """IMEI -> the rule kinds the bundle's ``exceptions`` lift for it (SPEC §12.2)."""

    __slots__ = ("_imeis", "_tacs", "_starts", "_ends", "_lifts")

    def __init__(self, entries: Iterable[Mapping[str, Any]]):
        imeis: dict[str, frozenset[str]] = {}
        tacs: dict[str, frozenset[str]] = {}
        ranges: list[tuple[int, int, frozenset[str]]] = []
        for entry in entries:
            lifts = frozenset(entry["lifts"])
            if "imei" in entry:
                imeis[entry["imei"]] = imeis.get(entry["imei"], NO_LIFTS) | lifts
            elif "tac" in entry:
                tacs[entry["tac"]] = tacs.get(entry["tac"], NO_LIFTS) | lifts
            else:
                ranges.append((int(entry["from"]), int(entry["to"]), lifts))
        self._imeis = imeis
        self._tacs = tacs
        self._starts, self._ends, self._lifts = _disjoint(ranges)

    def __bool__(self) -> bool:
        return bool(self._imeis or self._tacs or self._starts)

    def lifts_of(self, imei: str) -> frozenset[str]:
        """Rule kinds lifted for one IMEI (15 digits; 14 are matched by TAC and range only)."""
        found = self._imeis.get(imei, NO_LIFTS)
        by_tac = self._tacs.get(imei[:8])
        if by_tac is not None:
            found = found | by_tac
        if self._starts:
            body = imei[:14]
            if len(body) == 14 and body.isascii() and body.isdigit():
                value = int(body)
                i = bisect_right(self._starts, value) - 1
                if i >= 0 and value <= self._ends[i]:
                    found = found | self._lifts[i]
        return found

    def lifts_for(self, imei: str, aliases: tuple[str, ...] = ()) -> frozenset[str]:
        """Rule kinds lifted for a device: those of its primary IMEI and of each of its other
        IMEIs (an exception names a device by whichever of its IMEIs the editor has)."""
        found = self.lifts_of(imei)
        for alias in aliases:
            found = found | self.lifts_of(alias)
        return found


def _disjoint(
    ranges: list[tuple[int, int, frozenset[str]]],
) -> tuple[list[int], list[int], list[frozenset[str]]]:
    """Overlapping ranges as sorted disjoint segments, each with the union of the lifts of the
    ranges covering it (a sweep over the range ends; adjacent equal segments merged)."""
    if not ranges:
        return [], [], []
    events: list[tuple[int, int, frozenset[str]]] = []
    for start, end, lifts in ranges:
        events.append((start, 1, lifts))
        events.append((end + 1, -1, lifts))
    events.sort(key=lambda e: (e[0], e[1]))
    counts: dict[str, int] = {}
    starts: list[int] = []
    ends: list[int] = []
    lifts_out: list[frozenset[str]] = []
    i = 0
    while i < len(events):
        point = events[i][0]
        while i < len(events) and events[i][0] == point:
            _, step, lifts = events[i]
            for kind in lifts:
                counts[kind] = counts.get(kind, 0) + step
            i += 1
        active = frozenset(kind for kind, n in counts.items() if n > 0)
        if lifts_out and ends[-1] == -1:  # close the open segment at this point
            ends[-1] = point - 1
        if active:
            if lifts_out and lifts_out[-1] == active and ends[-1] == point - 1:
                ends[-1] = -1  # reopen: same lifts continue
            else:
                starts.append(point)
                ends.append(-1)
                lifts_out.append(active)
    return starts, ends, lifts_out
