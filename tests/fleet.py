"""A fleet recorded without check-ins (the sampling index's bulk loader), for the simulation
job tests: N devices of no distributor, the first LOCKED of them last seen in Russia, the rest in
the United States. A bundle with RU among its sanctioned regions turns exactly LOCKED devices
from allow to lock."""

from __future__ import annotations

import copy
from pathlib import Path

import orjson

from service.engine.loading import load_bundle_dir
from service.store.sampling import SamplingIndex

ROOT = Path(__file__).resolve().parent.parent
SEED = load_bundle_dir(ROOT / "policies")


def record(place: str, at: float = 1_790_000_000.0) -> dict[str, str]:
    """The fields a check-in of a device of no distributor stores (history left out)."""
    facts = orjson.dumps({"at": at, "places": {"network": place}}).decode()
    return {"first_seen": repr(at), "facts": facts, "verdict": "allow", "policy_version": "1"}


def fleet_imei(n: int) -> str:
    """IMEIs of no distributor (TAC 49015420...): allowed anywhere but in sanctioned regions."""
    return f"4901542{n:08d}"


def load_fleet(redis, size: int, locked: int) -> list[str]:
    """Record SIZE devices, LOCKED of them in Russia; their IMEIs."""
    imeis = [fleet_imei(n) for n in range(size)]
    russia, usa = record("RU"), record("US")
    SamplingIndex(redis).load(
        ((imei, russia if n < locked else usa) for n, imei in enumerate(imeis)), batch=5000
    )
    return imeis


def sanctioning_russia(ratio: float = 0.05) -> dict:
    """The seed bundle with RU sanctioned."""
    bundle = copy.deepcopy(SEED)
    bundle["rules"][0]["regions"].append("RU")
    bundle["max_new_lock_ratio"] = ratio
    return bundle
