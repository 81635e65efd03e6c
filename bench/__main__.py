"""`python -m bench` (`make bench`): every benchmark, each with small defaults, one after another.

Add a benchmark by appending (module, arguments) to BENCHMARKS; each module has main(argv).
"""

from __future__ import annotations

import importlib
import time

BENCHMARKS: list[tuple[str, list[str]]] = [
    ("bench.bench_simulate", ["--devices", "20000"]),
    ("bench.bench_allocations", ["--sizes", "10,10000,100000", "--decisions", "50000"]),
]


def main() -> None:
    """Run every benchmark in BENCHMARKS."""
    for module, args in BENCHMARKS:
        started = time.perf_counter()
        importlib.import_module(module).main(args)
        print(f"({module} took {time.perf_counter() - started:.1f} s)\n")


if __name__ == "__main__":
    main()
