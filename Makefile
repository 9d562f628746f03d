# sharp-serve: `make setup` once, then `make test-fast` (or `make test`), `make serve`, `make bench`.
PYTHON ?= python3
VENV ?= .venv
# The PyPI release we test against (a CUDA build on Linux x86_64, CPU/MPS elsewhere): pyproject's tested-torch.
TORCH_SPEC ?= $(shell sed -n 's/^tested-torch = \["\(.*\)"\]$$/\1/p' pyproject.toml)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The web page's renderer: three.js and Spark from npm (pinned in web/package-lock.json), copied into
# app/web/static/vendor (gitignored). Node.js is needed only here, not at run time.
WEB_STAMP := app/web/static/vendor/versions.json
# Node.js for `npm ci` above: 20 or later (splat-transform, a test-only reader, declares >=22 and prints an
# EBADENGINE warning on 20; what the tests run of it works on 20).
NODE_MIN := 20

.PHONY: setup test test-fast test-full lint serve bench fuzz load clean web node

setup: $(STAMP) $(WEB_STAMP)

web: $(WEB_STAMP)

node:
	@command -v node >/dev/null && command -v npm >/dev/null || { echo "error: make setup needs Node.js >= $(NODE_MIN) and npm (the page's renderer is installed with npm); install them, e.g. apt-get install nodejs npm" >&2; exit 1; }
	@node -e 'const major = Number(process.versions.node.split(".")[0]); if (major < $(NODE_MIN)) { console.error("error: make setup needs Node.js >= $(NODE_MIN); this is " + process.version); process.exit(1); } console.log("node " + process.version + " (>= $(NODE_MIN) needed; on 20, npm warns EBADENGINE for splat-transform, a test-only tool that works there)")'

$(WEB_STAMP): web/package.json web/package-lock.json web/copy-vendor.mjs | node
	npm ci --prefix web --no-audit --no-fund
	node web/copy-vendor.mjs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# pytest exits 5 when it collects no test: that is not a failure of the suite.
PYTEST = $(BIN)/python -m pytest -q -rs
NO_TESTS_IS_FINE = status=$$?; if [ $$status -eq 5 ]; then exit 0; fi; exit $$status

# The whole suite; test-fast is all of it but the full-size conformance test (marked `full`), test-full that one.
test: $(STAMP)
	$(PYTEST); $(NO_TESTS_IS_FINE)

test-fast: $(STAMP)
	$(PYTEST) -m "not full"; $(NO_TESTS_IS_FINE)

test-full: $(STAMP)
	$(PYTEST) -m full; $(NO_TESTS_IS_FINE)

# Schema-driven fuzzing of the HTTP API (schemathesis), far more cases than CI's derandomized 40 per operation.
fuzz: $(STAMP)
	SHARP_FUZZ_EXAMPLES=$${SHARP_FUZZ_EXAMPLES:-500} SHARP_FUZZ_RANDOM=1 $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/http/test_fuzz.py

# Load/soak benchmark of the tiny server on loopback (`python -m bench.load --help` for the options).
load: $(STAMP)
	nice -n 5 $(BIN)/python -m bench.load

lint: $(STAMP)
	$(BIN)/ruff check .

serve: $(STAMP)
	$(BIN)/python -m app serve

bench: $(STAMP)
	$(BIN)/python -m bench.formats
	$(BIN)/python -m bench.pipeline

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache web/node_modules app/web/static/vendor
