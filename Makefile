# sharp-serve: `make setup` once, then `make test`, `make serve`, `make bench`.
PYTHON ?= python3
VENV ?= .venv
# The PyPI release we test against (a CUDA build on Linux x86_64, CPU/MPS elsewhere): pyproject's tested-torch.
TORCH_SPEC ?= $(shell sed -n 's/^tested-torch = \["\(.*\)"\]$$/\1/p' pyproject.toml)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The web page's renderer: three.js and Spark from npm (pinned in web/package-lock.json), copied into
# app/web/static/vendor (gitignored). Node.js is needed only here, not at run time.
WEB_STAMP := app/web/static/vendor/versions.json

.PHONY: setup test lint serve bench fuzz load clean web

setup: $(STAMP) $(WEB_STAMP)

web: $(WEB_STAMP)

$(WEB_STAMP): web/package.json web/package-lock.json web/copy-vendor.mjs
	npm ci --prefix web --no-audit --no-fund
	node web/copy-vendor.mjs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# pytest exits 5 when it collects no test: that is not a failure of the suite.
test: $(STAMP)
	$(BIN)/python -m pytest -q -rs; status=$$?; if [ $$status -eq 5 ]; then exit 0; fi; exit $$status

# Schema-driven fuzzing of the HTTP API (schemathesis), far more cases than CI's derandomized 40 per operation.
fuzz: $(STAMP)
	SHARP_FUZZ_EXAMPLES=$${SHARP_FUZZ_EXAMPLES:-500} SHARP_FUZZ_RANDOM=1 $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/http/test_fuzz.py

# Load/soak benchmark of the tiny server on loopback (see bench/load.py for the options).
load: $(STAMP)
	nice -n 5 $(BIN)/python bench/load.py

lint: $(STAMP)
	$(BIN)/ruff check .

serve: $(STAMP)
	$(BIN)/python -m app serve

bench: $(STAMP)
	$(BIN)/python bench/formats.py
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache web/node_modules app/web/static/vendor
