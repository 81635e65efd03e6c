"""`python -m bench` (`make bench`): every benchmark, at the sizes of docs/performance.md.

Takes about ten minutes on a 2-core machine (the million-device simulation is most of it).

Add a benchmark by appending (module, arguments) to BENCHMARKS; each module has main(argv).
"""

from __future__ import annotations

import importlib
import time

BENCHMARKS: list[tuple[str, list[str]]] = [
    ("bench.bench_engine", ["--decisions", "100000"]),
    ("bench.bench_allocations", ["--sizes", "10,10000,1000000", "--decisions", "50000"]),
    ("bench.bench_validation", ["--bodies", "5000"]),
    ("bench.bench_http", ["--seconds", "10"]),
    ("bench.bench_servers", []),
    ("bench.bench_simulate", ["--devices", "1000000"]),
    # Simulation jobs (SPEC §12.5): a 10,000,000-device fleet estimated from a 1,000,000 sample
    # (loading it takes minutes and ~4 GB of Redis memory).
    ("bench.bench_simulate_jobs", ["--devices", "10000000", "--sample", "1000000"]),
    ("bench.bench_memory", ["--devices", "5000"]),
    # Fleet overview (SPEC §14): the counters' cost to a check-in; the 1M locked export.
    ("bench.bench_stats", ["--locked", "1000000"]),
    # Evidence accuracy (docs/accuracy.md): GPS lookup speed, GPS near the borders, and the IP
    # databases (several minutes, references fetched with npm).
    ("bench.bench_evidence", ["--per-band", "150"]),
]


def main() -> None:
    """Run every benchmark in BENCHMARKS."""
    for module, args in BENCHMARKS:
        started = time.perf_counter()
        importlib.import_module(module).main(args)
        print(f"({module} took {time.perf_counter() - started:.1f} s)\n")


if __name__ == "__main__":
    main()
