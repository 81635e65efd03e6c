"""The allocation index (service/engine/allocation_index.py) answers exactly like a naive search.

The index finds an IMEI's distributor through its TAC: a whole-TAC allocation, a window of the
ranges starting or ending in that TAC (split into parts when crowded), or a range spanning the
TAC whole. Hypothesis draws allocation sets that exercise each of these (ranges starting and
ending on TAC edges, one range over many TACs, a crowded TAC, whole-TAC allocations beside
ranges) and IMEIs on every edge, and compares the index, its snapshot and the compiled policy
with a linear scan of the allocations.
"""

from __future__ import annotations

from array import array
from base64 import b64encode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.engine import allocation_index
from service.engine.allocation_index import (
    CROWDED,
    TAC_SPAN,
    AllocationIndex,
    index_allocations,
    is_digits,
)

INDEX_SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
#: Allocations sit in TACs BASE_TAC .. BASE_TAC + TACS - 1 (and whole TACs after them).
BASE_TAC = 35_387_900
TACS = 6
OWNERS = ("acme", "bolt", "civic", "delta")


def naive_owner(tacs: dict[str, str], ranges: list[tuple[int, int, str]], imei: str):
    """What the index must answer: the whole-TAC allocation, else the range holding the body."""
    owner = tacs.get(imei[:8])
    if owner is not None:
        return owner
    body = imei[:14]
    if not is_digits(body, 14):
        return None
    value = int(body)
    for start, end, range_owner in ranges:
        if start <= value <= end:
            return range_owner
    return None


# A cut point: a TAC near BASE_TAC and a serial on or beside a TAC's edge, or anywhere.
serials = st.one_of(
    st.sampled_from([0, 1, 2, 499_999, 500_000, 999_998, 999_999]),
    st.integers(0, TAC_SPAN - 1),
)
points = st.builds(lambda t, s: (BASE_TAC + t) * TAC_SPAN + s, st.integers(0, TACS - 1), serials)


@st.composite
def allocations(draw):
    """Disjoint ranges (consecutive cut points paired, some pairs left out as gaps, owners
    drawn), sometimes a crowded TAC, and whole-TAC allocations in TACs no range touches."""
    cuts = sorted(set(draw(st.lists(points, min_size=0, max_size=40))))
    if draw(st.booleans()):
        # A crowded TAC: more ranges than CROWDED in one TAC, so it is split into parts.
        tac = BASE_TAC + draw(st.integers(0, TACS - 1))
        width = draw(st.sampled_from([1, 7, 1_000, 9_999, 10_000, 10_001, 20_000]))
        first = tac * TAC_SPAN + draw(st.integers(0, 1_000))
        crowd = [first + i * width * 2 for i in range(CROWDED + draw(st.integers(1, 30)))]
        crowd = [c for c in crowd if c // TAC_SPAN == tac]
        cuts = sorted(set(cuts) | {c for c in crowd} | {c + width - 1 for c in crowd})
    ranges: list[tuple[int, int, str]] = []
    i = 0
    while i + 1 < len(cuts):
        start, end = cuts[i], cuts[i + 1]
        if draw(st.integers(0, 4)):  # mostly a range, sometimes a gap
            ranges.append((start, end, draw(st.sampled_from(OWNERS))))
            i += 2
        else:
            i += 1
    whole = draw(st.lists(st.integers(BASE_TAC - 2, BASE_TAC + TACS + 2), max_size=5, unique=True))
    tacs = {
        f"{tac:08d}": draw(st.sampled_from(OWNERS))
        for tac in whole
        if not any(start // TAC_SPAN <= tac <= end // TAC_SPAN for start, end, _ in ranges)
    }
    return tacs, ranges


def probes(tacs: dict[str, str], ranges: list[tuple[int, int, str]], extra: list[int]) -> list[str]:
    """IMEIs on and beside every edge (ranges, TACs, parts of crowded TACs), as 14-digit
    bodies and 15-digit IMEIs, plus some that are not digits at all."""
    values = set(extra)
    for start, end, _ in ranges:
        values |= {start - 1, start, start + 1, end - 1, end, end + 1, (start + end) // 2}
        for tac in range(start // TAC_SPAN, end // TAC_SPAN + 1):
            values |= {tac * TAC_SPAN - 1, tac * TAC_SPAN, tac * TAC_SPAN + 10_000 - 1}
    for tac in tacs:
        values |= {int(tac) * TAC_SPAN, int(tac) * TAC_SPAN + 999_999, int(tac) * TAC_SPAN - 1}
    bodies = [f"{v:014d}" for v in values if 0 <= v < 10**14]
    out = bodies + [b + "7" for b in bodies]
    for b in bodies[:5]:
        out += [b[:8] + "²" + b[9:], b[:13], b[:8] + "abcdef", b[:8], "", b[:10] + "-" + b[11:]]
    return out


@INDEX_SETTINGS
@given(
    allocations(),
    st.lists(st.integers(BASE_TAC * TAC_SPAN - 10, (BASE_TAC + TACS) * TAC_SPAN + 10), max_size=30),
)
def test_the_index_answers_like_a_naive_search(drawn, extra):
    tacs, ranges = drawn
    index = AllocationIndex(
        dict(tacs), [r[0] for r in ranges], [r[1] for r in ranges], [r[2] for r in ranges]
    )
    loaded = AllocationIndex.from_snapshot(index.to_snapshot())
    assert len(index) == len(loaded) == len(tacs) + len(ranges)
    for imei in probes(tacs, ranges, extra):
        expected = naive_owner(tacs, ranges, imei)
        assert index.owner_of(imei) == expected, imei
        assert loaded.owner_of(imei) == expected, imei


@INDEX_SETTINGS
@given(allocations())
def test_the_index_built_from_a_bundle_answers_like_a_naive_search(drawn):
    """Through index_allocations, as the compiler builds it: the same distributor's adjacent
    ranges are merged, whole TACs kept apart, and the answers stay the same."""
    tacs, ranges = drawn
    distributors = [
        {
            "id": owner,
            "allocations": [{"tac": t} for t, o in tacs.items() if o == owner]
            + [{"from": f"{s:014d}", "to": f"{e:014d}"} for s, e, o in ranges if o == owner],
        }
        for owner in OWNERS
    ]
    errors: dict[str, list[str]] = {}
    index = index_allocations(distributors, errors, trusted=True)
    assert errors == {}
    for imei in probes(tacs, ranges, []):
        assert index.owner_of(imei) == naive_owner(tacs, ranges, imei), imei


def test_a_range_over_many_tacs_holds_its_middle_tacs():
    """The middle TACs of a long range have no entry of their own: found among the spanning
    ranges, and a TAC beyond it is nobody's."""
    start, end = 35_000_000 * TAC_SPAN + 500, 35_000_100 * TAC_SPAN + 20
    index = AllocationIndex(
        {"12345678": "acme"}, [start, end + 10], [end, end + 20], ["bolt", "civic"]
    )
    assert index.owner_of("35000050" + "123456" + "7") == "bolt"
    assert index.owner_of("35000100" + "000020") == "bolt"
    assert index.owner_of("35000100" + "000021") is None
    assert index.owner_of("35000100" + "000031") == "civic"
    assert index.owner_of("35000101" + "000000") is None
    assert index.owner_of("35000000" + "000499") is None
    assert index.owner_of("12345678" + "999999") == "acme"
    assert index.owner_of("35000050" + "12345²") is None


def test_an_empty_index_owns_nothing():
    index = AllocationIndex({}, [], [], [])
    assert index.owner_of("353879234252633") is None
    assert len(AllocationIndex.from_snapshot(index.to_snapshot())) == 0


def _naive_check(index: AllocationIndex, tacs, ranges, extra=()) -> None:
    for imei in probes(tacs, ranges, list(extra)):
        assert index.owner_of(imei) == naive_owner(tacs, ranges, imei), imei


def test_adjacent_ranges_of_other_owners_and_one_imei_ranges():
    """A range ending right where another distributor's begins (their bounds words meet),
    ranges of a single IMEI, a range ending on a TAC's last IMEI and the next starting on the
    following TAC's first."""
    base = BASE_TAC * TAC_SPAN
    ranges = [
        (base + 10, base + 19, "acme"),
        (base + 20, base + 20, "bolt"),
        (base + 21, base + 21, "acme"),
        (base + 22, base + TAC_SPAN - 1, "civic"),
        (base + TAC_SPAN, base + TAC_SPAN, "delta"),
    ]
    index = AllocationIndex({}, *map(list, zip(*ranges, strict=True)))
    assert index.owner_of(f"{base + 20:014d}") == "bolt"
    assert index.owner_of(f"{base + 21:014d}7") == "acme"
    assert index.owner_of(f"{base + TAC_SPAN - 1:014d}") == "civic"
    assert index.owner_of(f"{base + TAC_SPAN:014d}") == "delta"
    assert index.owner_of(f"{base + TAC_SPAN + 1:014d}") is None
    _naive_check(index, {}, ranges)


def test_owners_beyond_the_first_byte_of_their_field():
    """Owner positions are kept in 16 bits beside each range's start: 600 distributors, some
    in a crowded TAC, all found (the hypothesis tests draw four)."""
    base = BASE_TAC * TAC_SPAN
    ranges = [(base + i * 3_000, base + i * 3_000 + 999, f"d{i:03d}") for i in range(600)]
    tacs = {f"{BASE_TAC + 10:08d}": "d599", f"{BASE_TAC - 1:08d}": "whole-only"}
    index = AllocationIndex(dict(tacs), *map(list, zip(*ranges, strict=True)))
    loaded = AllocationIndex.from_snapshot(index.to_snapshot())
    for start, end, owner in ranges:
        for imei in (f"{start:014d}", f"{end:014d}5", f"{(start + end) // 2:014d}"):
            assert index.owner_of(imei) == loaded.owner_of(imei) == owner
        assert index.owner_of(f"{end + 1:014d}") is None
    assert index.owner_of(f"{BASE_TAC - 1:08d}123456") == "whole-only"
    _naive_check(index, tacs, ranges)


def test_the_snapshot_holds_the_arrays_it_was_given():
    """The snapshot format is unchanged by the bounds array the index keeps instead: the same
    starts, ends and owner positions, so snapshots of older versions load and older workers
    read new ones; saving a loaded index gives the same snapshot."""
    ranges = [
        (35_387_900_000_000 + 10 * i, 35_387_900_000_000 + 10 * i + 4, f"o{i % 300}")
        for i in range(900)
    ]
    index = AllocationIndex({"01234567": "acme"}, *map(list, zip(*ranges, strict=True)))
    snapshot = index.to_snapshot()
    ids = sorted({r[2] for r in ranges})
    assert snapshot["ids"] == ids
    assert snapshot["starts"] == b64encode(array("Q", [r[0] for r in ranges]).tobytes()).decode()
    assert snapshot["ends"] == b64encode(array("Q", [r[1] for r in ranges]).tobytes()).decode()
    owners = array("I", [ids.index(r[2]) for r in ranges])
    assert snapshot["owners"] == b64encode(owners.tobytes()).decode()
    assert AllocationIndex.from_snapshot(snapshot).to_snapshot() == snapshot


def test_bounds_built_by_arithmetic_answer_the_same(monkeypatch):
    """Where words are not little-endian the bounds are computed rather than copied byte by
    byte: the same array, the same snapshot."""
    ranges = [
        (35_387_900_000_000 + 7 * i, 35_387_900_000_000 + 7 * i + 3, f"o{i % 290}")
        for i in range(400)
    ]
    columns = list(map(list, zip(*ranges, strict=True)))
    copied = AllocationIndex({"01234567": "acme"}, *columns)
    monkeypatch.setattr(allocation_index, "_BYTEWISE", False)
    computed = AllocationIndex({"01234567": "acme"}, *columns)
    assert computed._bounds == copied._bounds
    assert computed.to_snapshot() == copied.to_snapshot()
    _naive_check(computed, {"01234567": "acme"}, ranges)


def test_limits_of_the_bounds_words():
    """Bodies must fit 48 bits and owner positions 16 (a bundle allows 10,000 distributors)."""
    with pytest.raises(ValueError, match="beyond 14 digits"):
        AllocationIndex({}, [10**14], [10**14], ["acme"])
    owners = [f"o{i}" for i in range(65_536)]
    with pytest.raises(ValueError, match="too many distributors"):
        AllocationIndex({}, list(range(0, 2 * 65_536, 2)), list(range(0, 2 * 65_536, 2)), owners)
