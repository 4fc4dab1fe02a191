# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install the pinned requirements; the install is skipped
# when a stamp keyed to the hash of the requirement files and pyproject.toml already exists.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REQUIREMENT_FILES := requirements.txt requirements-dev.txt requirements-nodeps.txt pyproject.toml
STAMP := $(VENV)/.installed-$(shell cat $(REQUIREMENT_FILES) | sha256sum | cut -c1-16)
DEMO_DIR ?= demo_run
DEMO_POSTINGS ?= 3000

.PHONY: install test test-all test-fast demo app lint docs clean-demo

install: $(STAMP)

# Order-only: the hash in the name decides, not the files' dates (a fresh clone or a touched file
# with the same content does not reinstall).
$(STAMP): | $(REQUIREMENT_FILES)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

# The suite without the tests marked slow (multi-process and multi-device training, XLA
# compilation of every model kind, a real-size export, the demo's reuse through real training):
# under 10 minutes on 2 quiet cores.
test: install
	$(PY) -m pytest -m "not slow" tests

# Everything, the slow tests included: what CI runs (.ci/run).
test-all: install
	$(PY) -m pytest tests

# The inner loop: also skips the tests on the real Shopee titles in ../shared.
test-fast: install
	$(PY) -m pytest -m "not slow and not real_data" tests

# A DEMO_DIR holding a set generated with another DEMO_POSTINGS is refused (make clean-demo first).
demo: install
	$(PY) -m tf_shopee.demo --workdir $(DEMO_DIR) --postings $(DEMO_POSTINGS)

# The catalogue web app on http://127.0.0.1:$(APP_PORT)/: the demo's catalogue by default (built
# from $(DEMO_DIR)'s models when missing; the demo runs first when they are missing: the app itself
# never trains), any index with `make app INDEX=path/to/index`.
APP_PORT ?= 8000
DEMO_MODELS := $(DEMO_DIR)/saved_models/image/tf_shopee_export.json $(DEMO_DIR)/saved_models/text/tf_shopee_export.json
app: install
	$(if $(INDEX),,@for model in $(DEMO_MODELS); do test -f $$model || { $(MAKE) demo || exit 1; break; }; done)
	$(PY) -m tf_shopee.catalog.app $(if $(INDEX),--index $(INDEX),--demo $(DEMO_DIR)) --port $(APP_PORT)

lint: install
	$(VENV)/bin/ruff check .

# The documentation site (docs/, mkdocs.yml) into site/; --strict turns a broken link or anchor, a
# missing page or a page left out of the nav into an error (tests/test_docs.py runs the same build).
# NO_MKDOCS_2_WARNING: mkdocs-material 9.8 prints an end-of-life notice on every build otherwise.
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

clean-demo:
	rm -rf $(DEMO_DIR)
