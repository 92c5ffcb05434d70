# imgclf: `make demo` runs the whole pipeline on the bundled data, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.imgclf-installed

.PHONY: setup test test-all test-docker lint format demo bench clean help

help:
	@echo "make setup     create .venv and install the pinned dependencies (idempotent)"
	@echo "make demo      run the whole pipeline on the bundled sign-language digits"
	@echo "make test      lint + the test suite (skips tests marked slow)"
	@echo "make test-all  lint + every test, slow ones included"
	@echo "make test-docker  build the Docker image and check it in real containers (docs/docker.md)"
	@echo "make format    apply ruff's formatting and safe fixes"

setup: $(STAMP)

# Re-run the install only when what it installs changed.
$(STAMP): requirements.txt constraints.txt pyproject.toml tools/install.sh tools/patch_catalyst.py
	@$(PYTHON) -c 'import sys; ok = (3, 10) <= sys.version_info[:2] <= (3, 12); sys.exit(0 if ok else "imgclf needs Python 3.10 to 3.12 but $(PYTHON) is " + sys.version.split()[0] + "; run make with PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	tools/install.sh $(BIN)/python
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint docker/Dockerfile
	$(BIN)/shellcheck -x docker/*.sh tools/*.sh .ci/run

test: lint
	$(BIN)/python -m pytest -m "not slow"

test-all: lint
	$(BIN)/python -m pytest

# The image built by docker/build.sh and checked in real containers (tests/docker/test_containers.py),
# with Docker or podman (tools/podman_setup.sh); not part of test/test-all: it takes 10-25 minutes.
# Without a container engine its tests skip and say how to get one.
test-docker: $(STAMP)
	IMGCLF_CONTAINER_TESTS=1 $(BIN)/python -m pytest tests/docker -rs

# Options for tools/demo.py, e.g. make demo DEMO_ARGS="--per-class 20" (see tools/demo.py --help).
demo: $(STAMP)
	$(BIN)/python tools/demo.py $(DEMO_ARGS)

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
