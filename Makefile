# cdbdump developer entry points. `make demo` and `make test` work on a fresh Debian
# machine once the packages in .ci/run are installed (the venv is made here).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CACHE  := .cache
DEMO   := $(CACHE)/demo

.PHONY: demo test lint typecheck unit bench clean real-bitmap-vmcore capture-exe kdump-e2e

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,lzo,snappy]'
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	@mkdir -p $(DEMO)
	$(PY) fixtures/make_demo_vmcore.py $(DEMO)/demo.vmcore
	$(VENV)/bin/cdbdump -q -d 31 -f --show-stats --report-json $(DEMO)/demo.report.json \
		$(DEMO)/demo.vmcore $(DEMO)/demo.kdump
	@ls -ls $(DEMO)/demo.vmcore $(DEMO)/demo.kdump

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check cdbdump tests fixtures bench packaging

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy --strict cdbdump

# The whole suite, real-vmcore tier included (vmcores are built once into .cache/).
test: $(VENV)/.installed lint typecheck
	$(PY) -m pytest -q tests

unit: $(VENV)/.installed
	$(PY) -m pytest -q tests -m 'not real'

bench: $(VENV)/.installed
	$(PY) bench/bench.py

# The real /proc/vmcore of the crash-dump-bitmap kernel (kernel/crash_dump_bitmap/);
# builds or reuses the patched kernel and the vmcore; the last line is its path.
real-bitmap-vmcore:
	@bash fixtures/make-real-bitmap-vmcore.sh

# cdbdump as one self-contained executable for a kdump initramfs (no Python there).
capture-exe: $(VENV)/.installed
	packaging/capture/build.sh -o $(CACHE)/capture/pyinstaller/cdbdump

# A real panic: the capture kernel runs that executable on /proc/vmcore, the host checks
# what it saved. A fresh boot every time; the last line is the directory of the results.
# KDUMP_E2E_CASES=NAME,... adds cases of fixtures/kdump_e2e.py to the default set.
kdump-e2e: capture-exe
	@export CDBDUMP_KDUMP_E2E_CASES=$(KDUMP_E2E_CASES); \
	dir=$$($(PY) fixtures/kdump_e2e.py --force) || exit 1; \
	$(PY) -m pytest -q -p no:cacheprovider tests/real/test_kdump_e2e.py; rc=$$?; \
	echo "$$dir"; exit $$rc

clean:
	rm -rf $(VENV) $(CACHE) build *.egg-info
