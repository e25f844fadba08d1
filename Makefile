# cdbdump developer entry points. `make demo` and `make test` work on a fresh Debian
# machine once the packages in .ci/run are installed (the venv is made here).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CACHE  := .cache
DEMO   := $(CACHE)/demo

.PHONY: demo test lint typecheck unit bench fuzz clean real-bitmap-vmcore

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
	$(VENV)/bin/ruff check cdbdump tests fixtures bench

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy --strict cdbdump

# The whole suite, real-vmcore tier included (vmcores are built once into .cache/).
test: $(VENV)/.installed lint typecheck
	$(PY) -m pytest -q tests

unit: $(VENV)/.installed
	$(PY) -m pytest -q tests -m 'not real'

bench: $(VENV)/.installed
	$(PY) bench/bench.py

# Long fuzz run (tests/fuzz/fuzz.py): FUZZ_INPUTS mutated vmcores, both -q and the scan,
# plus the real 5.10 vmcore when the cache has it. `make test` runs a short form.
FUZZ_INPUTS ?= 10000
FUZZ_REAL   ?= $(wildcard $(or $(CDBDUMP_VMCORE_CACHE),$(CACHE)/vmcores)/debian11-5.10-1g.elf)
fuzz: $(VENV)/.installed
	$(PY) -m tests.fuzz.fuzz --inputs $(FUZZ_INPUTS) $(if $(FUZZ_REAL),--real $(FUZZ_REAL))

# The real /proc/vmcore of the crash-dump-bitmap kernel (kernel/crash_dump_bitmap/);
# builds or reuses the patched kernel and the vmcore; the last line is its path.
real-bitmap-vmcore:
	@bash fixtures/make-real-bitmap-vmcore.sh

clean:
	rm -rf $(VENV) $(CACHE) build *.egg-info
