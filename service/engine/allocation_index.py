"""Which distributor holds an IMEI: the allocation index and the overlap check that builds it.

A bundle may hold a million allocations, so they are never searched one by one: every
allocation is an interval of 14-digit IMEI bodies (a TAC is the interval TAC000000..TAC999999),
sorted once, checked for overlaps between distributors in the same sweep, and kept as a TAC dict
plus sorted disjoint ranges searched with ``bisect``. Allocations of the *same* distributor may
overlap (harmless); across distributors they may not.
"""

from __future__ import annotations

import sys
from array import array
from base64 import b64decode, b64encode
from bisect import bisect_right
from collections import Counter
from collections.abc import Mapping
from itertools import repeat
from operator import floordiv, mul
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

    The ranges are kept as one sorted array of *bounds*, two words a range: its start with its
    owner in the low bits, then its end (see :func:`_bounds`). The search lands between a start
    and an end exactly when the IMEI is in that range, and the owner is in the word just read:
    one stretch of memory per lookup where separate starts, ends and owners arrays cost a cache
    miss each (about 150 ns on a million ranges on the 2-core VM).
    """

    __slots__ = ("_tacs", "_ids", "_bounds", "_by_tac", "_spanning", "_parts")

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
        if len(ids) > _OWNER_MASK:
            raise ValueError("allocation index: too many distributors")
        if ends and ends[-1] >= 10**14:  # the last range ends last
            raise ValueError("allocation index: a range beyond 14 digits")
        self._tacs = tacs
        self._ids = ids
        # Contiguous machine words rather than lists of int objects: a million ranges stay
        # within a few MB.
        self._bounds = _bounds(starts, ends, owner_at)
        self._by_tac, self._spanning, self._parts = _tac_windows(tacs, starts, ends)

    def __len__(self) -> int:
        return len(self._tacs) + len(self._bounds) // 2 - 1

    def to_snapshot(self) -> dict[str, Any]:
        """A JSON-able form that :meth:`from_snapshot` loads without parsing or sorting again:
        the TAC map, the owner ids, and the range arrays as base64 of their machine words."""
        starts, ends, owner_at = _unbound(self._bounds)
        return {
            "tacs": self._tacs,
            "ids": self._ids,
            "starts": b64encode(starts.tobytes()).decode(),
            "ends": b64encode(ends.tobytes()).decode(),
            "owners": b64encode(owner_at.tobytes()).decode(),
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
        # Above every start word of a range starting at or before the IMEI, whatever its owner.
        word = value << _OWNER_BITS | _IMEI_LOW
        bounds = self._bounds
        if hit < 0:
            # A crowded TAC: the window of the hundredth of it that holds the IMEI.
            part = ~hit + value // PART_SPAN % PARTS
            parts = self._parts
            k = bisect_right(bounds, word, parts[part], parts[part + 1] + 2)
        else:
            k = bisect_right(bounds, word, hit >> _WINDOW_BITS, hit & _WINDOW_MASK)
        # Odd k: past a range's start (word k - 1) but not its end. The window begins with the
        # range just before the TAC's own: one reaching in from an earlier TAC, or one ending
        # before this TAC (then k is past its end).
        if k & 1:
            return self._ids[bounds[k - 1] & _OWNER_MASK]
        return None

    def _spanning_owner(self, imei: str) -> str | None:
        """Owner of an IMEI whose TAC has no entry: a range spanning that whole TAC, or None."""
        body = imei[:14]
        if not is_digits(body, 14):
            return None
        word = int(body) << _OWNER_BITS | _IMEI_LOW
        spanning = self._spanning
        bounds = self._bounds
        i = bisect_right(spanning, word, key=bounds.__getitem__) - 1
        if i >= 0 and word < bounds[spanning[i] + 1]:
            return self._ids[bounds[spanning[i]] & _OWNER_MASK]
        return None


#: Bounds words (:func:`_bounds`): a body in the high 48 bits (bodies are below 10**14 < 2**47),
#: below it a range start's owner (0 .. 65534), a range end's _END_LOW, an IMEI's _IMEI_LOW.
_OWNER_BITS = 16
_OWNER_MASK = (1 << _OWNER_BITS) - 1
_END_LOW = _OWNER_MASK
_IMEI_LOW = _OWNER_MASK - 1
#: The bounds are assembled from the snapshot's arrays by copying bytes, which needs
#: little-endian 8-byte words (elsewhere, by arithmetic).
_BYTEWISE = sys.byteorder == "little" and array("Q").itemsize == 8 and array("I").itemsize == 4


def _bounds(starts: array, ends: array, owner_at: array) -> array:
    """The bounds array of :class:`AllocationIndex`: words 0 and 1 are an empty range before
    every other (so a window can always begin one range early), then range i's start word
    ``start << 16 | owner`` at 2i + 2 and its end word ``end << 16 | 0xFFFF`` at 2i + 3.

    An IMEI's word is ``body << 16 | 0xFFFE``: above the start word of every range starting at
    or before it, above the end word of every range ending before it, below the others. Ranges
    are sorted and disjoint, so the words are sorted, and ``bisect`` over them lands right after
    a start word exactly when the IMEI is in that range.
    """
    count = len(starts)
    if not _BYTEWISE:
        bounds = array("Q", bytes(8 * (2 * count + 2)))
        bounds[2::2] = array(
            "Q", (s << _OWNER_BITS | o for s, o in zip(starts, owner_at, strict=True))
        )
        bounds[3::2] = array("Q", (e << _OWNER_BITS | _END_LOW for e in ends))
        return bounds
    # Copied byte by byte in C: a million ranges take a few ms, where the arithmetic in a
    # generator takes a few hundred.
    raw = bytearray(16 * (count + 1))
    start_bytes, end_bytes, owner_bytes = starts.tobytes(), ends.tobytes(), owner_at.tobytes()
    raw[16::16] = owner_bytes[0::4]
    raw[17::16] = owner_bytes[1::4]
    raw[24::16] = raw[25::16] = b"\xff" * count
    for byte in range(6):
        raw[18 + byte :: 16] = start_bytes[byte::8]
        raw[26 + byte :: 16] = end_bytes[byte::8]
    bounds = array("Q")
    bounds.frombytes(raw)
    return bounds


def _unbound(bounds: array) -> tuple[array, array, array]:
    """The starts, ends and owner positions that :func:`_bounds` was given."""
    if not _BYTEWISE:
        starts = array("Q", (w >> _OWNER_BITS for w in bounds[2::2]))
        ends = array("Q", (w >> _OWNER_BITS for w in bounds[3::2]))
        owner_at = array("I", (w & _OWNER_MASK for w in bounds[2::2]))
        return starts, ends, owner_at
    raw = bounds.tobytes()[16:]
    count = len(raw) // 16
    start_bytes, end_bytes = bytearray(8 * count), bytearray(8 * count)
    owner_bytes = bytearray(4 * count)
    owner_bytes[0::4] = raw[0::16]
    owner_bytes[1::4] = raw[1::16]
    for byte in range(6):
        start_bytes[byte::8] = raw[2 + byte :: 16]
        end_bytes[byte::8] = raw[10 + byte :: 16]
    starts, ends, owner_at = array("Q"), array("Q"), array("I")
    starts.frombytes(start_bytes)
    ends.frombytes(end_bytes)
    owner_at.frombytes(owner_bytes)
    return starts, ends, owner_at


#: A window of bounds words [low, high) packed in one int: low << _WINDOW_BITS | high.
_WINDOW_BITS = 32
_WINDOW_MASK = (1 << _WINDOW_BITS) - 1


#: A TAC whose window holds more ranges than this is split into PARTS parts of PART_SPAN IMEIs.
CROWDED = 16
PARTS = 100
PART_SPAN = TAC_SPAN // PARTS


def _tac_windows(
    tacs: dict[str, str], starts: array, ends: array
) -> tuple[dict[str, Any], array, array]:
    """The TAC -> owner | window map of :class:`AllocationIndex`, the positions of the start
    words of the ranges spanning three or more TACs (whose middle TACs have no entry), and the
    part bounds of crowded TACs. Windows and part bounds are positions in the bounds array.

    A TAC's window is the ranges starting in it; the search in a window also lands on the range
    just before it when the IMEI precedes them, which is how a range reaching in from an
    earlier TAC is found (ranges are disjoint, so no range before that one can reach in). A TAC
    where a range ends but none starts has that range alone. Whole-TAC allocations are added
    last: a range of the same TAC can only be the same distributor's.
    """
    count = len(starts)
    if 2 * count + 2 > _WINDOW_MASK:
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
            by_tac[f"{tac:08d}"] = _window(first, end)
        # Of the ranges starting in this TAC only the last can reach into later TACs.
        last_tac = ends[end - 1] // TAC_SPAN
        if last_tac != tac:
            crossing.append(end - 1)
            if last_tac - tac >= 2:
                spanning.append(2 * end)  # its start word
        first = end
    for i in crossing:
        key = f"{ends[i] // TAC_SPAN:08d}"
        if key not in by_tac:
            by_tac[key] = _window(i, i + 1)
    by_tac.update(tacs)
    return by_tac, spanning, parts


def _window(first: int, end: int) -> int:
    """The bounds words of ranges first - 1 .. end - 1 (range i's words are 2i + 2 and 2i + 3),
    packed in one int."""
    return 2 * first << _WINDOW_BITS | 2 * end + 2


def _split(parts: array, starts: array, tac_start: int, first: int, end: int) -> None:
    """Append a crowded TAC's PARTS + 1 part bounds to ``parts``: with b the position where
    bound k's first IMEI would be inserted among the window's starts, the ranges that can hold
    an IMEI of part k are b - 1 .. b' - 1 (b' that of bound k + 1; the last is ``end``), whose
    bounds words run from 2b to 2b' + 2: bound k is stored as 2b."""
    bounds = range(tac_start, tac_start + TAC_SPAN + 1, PART_SPAN)
    found = map(bisect_right, repeat(starts), bounds, repeat(first), repeat(end))
    parts.extend(map(mul, found, repeat(2)))


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
