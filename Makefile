# One-command set-up for a fresh Debian/Ubuntu machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?=
SYSTEM_TOOLS := skopeo umoci docker-registry buildah debootstrap ip containerd ctr
APT_PACKAGES := skopeo umoci docker-registry buildah debootstrap debian-archive-keyring python3-venv iproute2 containerd

# Interop tests that run a JavaScript implementation (js-libp2p's ipns, @ipld/car, ...) keep one npm
# project per directory under interop/js/, each with its lock file; `npm ci` installs exactly that.
JS_STAMPS := $(patsubst %/package-lock.json,%/node_modules/.installed,$(wildcard interop/js/*/package-lock.json))

.PHONY: run test check lint typecheck install system-deps js-deps bench docs clean

run: install
	$(BIN)/ipfsreg serve $(if $(DATA),--data $(DATA),)

test: install system-deps js-deps lint typecheck
	$(BIN)/pytest -q

check: lint typecheck
	$(BIN)/pytest -q -m "not interop"

lint: install
	$(BIN)/ruff check ipfsreg tests interop bench conftest.py
	$(BIN)/ruff format --check ipfsreg tests interop bench conftest.py

typecheck: install
	$(BIN)/mypy

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c "import ensurepip" 2>/dev/null || $(MAKE) system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	@# libp2p pulls in trio-typing, whose stale trio-stubs would shadow trio's own (newer) inline
	@# types for mypy. Runtime code never imports the stubs.
	rm -rf $(VENV)/lib/python*/site-packages/trio-stubs
	touch $@

# The interop tests drive real Debian tools. Installed with apt when running as root (CI) or with sudo.
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
		$$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends $(APT_PACKAGES); \
	fi

js-deps: $(JS_STAMPS)

interop/js/%/node_modules/.installed: interop/js/%/package-lock.json interop/js/%/package.json
	@command -v npm >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
		$$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends nodejs npm; }
	cd interop/js/$* && npm ci --no-audit --no-fund --loglevel=error
	touch $@

docs: install
	$(BIN)/python -c "from ipfsreg.config import example_toml; print(example_toml(), end='')" > docs/config.example.toml

bench: install system-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
