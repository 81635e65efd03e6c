"""Check-in body validation: marshmallow's ``CheckinSchema().load`` against the validator compiled
from it once (service/api/compiled_schema.py), in the same run, µs per body.

    python -m bench.bench_validation [--bodies 20000] [--rounds 5]

Four bodies: the smallest (an IMEI), a typical one (SIM, GPS, model, firmware, nonce, locale),
a dual-SIM phone (two IMEIs, two SIMs with slots) and a refused one (bad Luhn digit, latitude out
of range). Then the whole body parse as a request meets it (webargs in a Flask request context:
body bytes, JSON, validation): the JsonBodyParser of the other calls against the check-in's
CompiledBodyParser. Best of the rounds (a busy machine slows a pass, never speeds one up).
"""

from __future__ import annotations

import argparse
import time

import orjson
from flask import Flask
from marshmallow import ValidationError

from service.api.checkin.schemas import CheckinSchema
from service.api.compiled_schema import compile_schema
from service.api.parsing import CompiledBodyParser, JsonBodyParser

BODIES = {
    "minimal": {"imei": "353879234252633"},
    "typical": {
        "imei": "353879234252633",
        "sim": {"imsi": "454001234567890", "iccid": "8985200012345678905", "network": "45400"},
        "gps": {"lat": 22.3193, "lon": 114.1694},
        "model": "RL-9 Pro",
        "firmware": "4.2.1",
        "nonce": "5f1c2a9e0b7d4c3a",
        "locale": "zh-Hant-HK",
    },
    "dual SIM": {
        "imei": "353879234252633",
        "imeis": ["353879234252633", "490154203237518"],
        "sims": [
            {"slot": 1, "imsi": "454001234567890", "network": "45400"},
            {"slot": 2, "imsi": "310150123456789", "network": "310150"},
        ],
        "gps": {"lat": 22.3193, "lon": 114.1694},
        "nonce": "5f1c2a9e0b7d4c3a",
    },
    "refused": {"imei": "353879234252634", "gps": {"lat": 91.5, "lon": 0}},
}


def _per_call_us(function, body, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        try:
            function(body)
        except ValidationError:
            pass
    return (time.perf_counter() - started) / count * 1e6


def _parse_us(parser, schema, raw: bytes, count: int) -> float:
    app = Flask(__name__)
    with app.test_request_context(
        "/v1/checkin", method="POST", data=raw, content_type="application/json"
    ):
        from flask import request

        started = time.perf_counter()
        for _ in range(count):
            request._cached_data = raw  # each pass parses the body afresh
            request.__dict__.pop("_cached_json", None)
            try:
                parser.parse(schema, request, location="json")
            except Exception:  # the refused body: webargs aborts with 422
                pass
        return (time.perf_counter() - started) / count * 1e6


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", type=int, default=20_000, help="bodies per pass")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes; the best counts")
    args = parser.parse_args(argv)
    schema = CheckinSchema()
    compiled = compile_schema(schema)
    plain_parser, compiled_parser = JsonBodyParser(), CompiledBodyParser()
    compiled_parser.use_args(schema, location="json")  # compiles it, as a route declaration does
    print(f"== bench_validation: {args.bodies} bodies a pass, best of {args.rounds}")
    for name, body in BODIES.items():
        raw = orjson.dumps(body)
        best = dict.fromkeys(("load", "compiled", "parse", "compiled parse"), float("inf"))
        for _ in range(args.rounds):
            best["load"] = min(best["load"], _per_call_us(schema.load, body, args.bodies))
            best["compiled"] = min(best["compiled"], _per_call_us(compiled, body, args.bodies))
            best["parse"] = min(best["parse"], _parse_us(plain_parser, schema, raw, args.bodies))
            best["compiled parse"] = min(
                best["compiled parse"], _parse_us(compiled_parser, schema, raw, args.bodies)
            )
        print(
            f"{name:>9}: schema.load {best['load']:6.1f} µs, compiled {best['compiled']:5.1f} µs "
            f"({best['load'] / best['compiled']:4.1f}x); whole parse (webargs) "
            f"{best['parse']:6.1f} µs -> {best['compiled parse']:5.1f} µs "
            f"({best['parse'] / best['compiled parse']:4.1f}x)"
        )


if __name__ == "__main__":
    main()
