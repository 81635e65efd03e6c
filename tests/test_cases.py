"""The expected-decision cases in policies/cases/ hold for the seed bundle (one test per case),
and the case runner itself reports what it should."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.engine.cases import Case, CaseError, load_cases, parse_cases, run_cases
from service.engine.compiler import CompiledPolicy, compile_bundle
from service.engine.loading import load_bundle_dir

ROOT = Path(__file__).resolve().parent.parent
CASES = load_cases(ROOT / "policies" / "cases")


@pytest.fixture(scope="module")
def seed() -> CompiledPolicy:
    return compile_bundle(load_bundle_dir(ROOT / "policies"))


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_seed_case(seed: CompiledPolicy, case: Case) -> None:
    (result,) = run_cases(seed, [case])
    assert result.passed, "\n".join(result.messages)


def test_seed_stories_are_covered() -> None:
    names = {case.name for case in CASES}
    for story in [
        "phone in Havana by IP",
        "phone in Havana by GPS",
        "phone on a Cuban network",
        "Crimea (UA-43) is locked",
        "Kyiv (UA-30) is allowed",
        "Sevastopol (UA-40) is locked",
        "Iranian SIM roaming in France is allowed",
        "HK phone activated in the US stays locked back in HK",
        "HK phone activated in HK may travel to France",
        "unknown device is allowed",
    ]:
        assert story in names


def test_runner_reports_mismatches(seed: CompiledPolicy) -> None:
    cases = parse_cases(
        {
            "cases": [
                {
                    "name": "wrong on purpose",
                    "imei": "353879234252633",
                    "checkins": [
                        {"places": {"ip": "US"}, "expect": {"verdict": "lock"}},
                        {
                            "places": {"ip": "HK"},
                            "expect": {"verdict": "allow", "reasons": [], "distributor": None},
                        },
                    ],
                }
            ]
        },
        "inline",
    )
    (result,) = run_cases(seed, cases)
    assert not result.passed
    assert result.messages == (
        "check-in 2: verdict 'lock', expected 'allow'",
        "check-in 2: reasons ['outside_territory'], expected []",
        "check-in 2: distributor 'hk-global', expected None",
    )


def test_times_default_and_lock_at() -> None:
    bundle = load_bundle_dir(ROOT / "policies")
    bundle["rules"][1]["grace_days"] = 2
    policy = compile_bundle(bundle)
    cases = parse_cases(
        {
            "cases": [
                {
                    "name": "grace",
                    "imei": "353879234252633",
                    "checkins": [
                        {
                            "places": {"ip": "US"},
                            "expect": {"verdict": "warn", "lock_at": "2026-01-03T00:00:00Z"},
                        },
                        # default time: previous + next_checkin_s (one day)
                        {"places": {"ip": "US"}, "expect": {"verdict": "warn"}},
                        {"places": {"ip": "US"}, "expect": {"verdict": "lock", "lock_at": None}},
                    ],
                }
            ]
        },
        "inline",
    )
    (result,) = run_cases(policy, cases)
    assert result.passed, result.messages


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("cases:\n  - {name: x, imei: '1', checkins: [{expect: {verdict: allow}}]}\n", "imei"),
        (
            "cases:\n  - {name: x, imei: '353879234252633', checkins: "
            "[{places: {wifi: CU}, expect: {verdict: allow}}]}\n",
            "checkins.0.places.wifi",
        ),
        (
            "cases:\n  - {name: x, imei: '353879234252633', checkins: "
            "[{places: {ip: XX}, expect: {verdict: allow}}]}\n",
            "checkins.0.places.ip",
        ),
        (
            "cases:\n  - {name: x, imei: '353879234252633', checkins: "
            "[{places: {ip: CU}, expect: {verdict: block}}]}\n",
            "checkins.0.expect.verdict",
        ),
        (
            "cases:\n  - {name: x, imei: '353879234252633', checkins: "
            "[{places: {ip: CU}, expect: {verdcit: lock}}]}\n",
            "checkins.0.expect",
        ),
        ("cases:\n  - {name: x, imei: '353879234252633', checkins: []}\n", "checkins"),
    ],
)
def test_bad_case_files(tmp_path: Path, text: str, path: str) -> None:
    (tmp_path / "bad.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(CaseError) as caught:
        load_cases(tmp_path)
    assert f"bad.yaml:cases.0.{path}" in caught.value.errors


def test_duplicate_case_names(tmp_path: Path) -> None:
    case = "  - {name: same, imei: '353879234252633', checkins: [{expect: {verdict: allow}}]}\n"
    (tmp_path / "a.yaml").write_text("cases:\n" + case)
    (tmp_path / "b.yaml").write_text("cases:\n" + case)
    with pytest.raises(CaseError) as caught:
        load_cases(tmp_path)
    assert list(caught.value.errors) == ["b.yaml:cases.0.name"]
