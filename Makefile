# cdbdump developer entry points; nothing is needed before them.
#   make demo  Python >= 3.11 and make only: a venv of wheels (no compiler, no apt).
#   make test  the rest: missing Debian packages (scripts/install-system-deps.sh, as
#              root), the venv with every extra, the real-vmcore fixtures, the suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check
CACHE  := .cache
DEMO   := $(CACHE)/demo

.PHONY: demo test system-deps fixtures lint typecheck unit bench bench-memory fuzz clean venv real-bitmap-vmcore \
	capture-exe kdump-e2e

# Wheels only: python-lzo (sdist) is left out, LZO comes from the lzallright wheel.
# cdbdump's optional C page compressor (setup.py) is built in place when a compiler
# and zlib's headers are there, and skipped (the Python path) when not.
$(VENV)/.base: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "make: $(PYTHON) is older than 3.11 (set PYTHON=...)" >&2; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { echo "make: '$(PYTHON) -m venv' failed" \
	  "(Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }
	$(PIP) --only-binary :all: --upgrade pip
	$(PIP) --only-binary :all: -e '.[lzo,snappy]'
	touch $@

# Every extra; python-lzo builds against liblzo2-dev (installed by system-deps), and
# the reinstall rebuilds cdbdump._pagebatch with liblzo2, libsnappy and libzstd (again
# whenever its source or setup.py changes: an editable install builds it only here).
$(VENV)/.full: $(VENV)/.base setup.py cdbdump/_pagebatch.c | system-deps
	$(PIP) -e '.[dev,lzo,lzo-exact,snappy]'
	touch $@

venv: $(VENV)/.full

system-deps:
	bash scripts/install-system-deps.sh

demo: $(VENV)/.base
	@mkdir -p $(DEMO)
	$(PY) fixtures/make_demo_vmcore.py $(DEMO)/demo.vmcore
	$(VENV)/bin/cdbdump -q -d 31 -f --show-stats --report-json $(DEMO)/demo.report.json \
		$(DEMO)/demo.vmcore $(DEMO)/demo.kdump
	@ls -ls $(DEMO)/demo.vmcore $(DEMO)/demo.kdump

lint: $(VENV)/.full
	$(VENV)/bin/ruff check cdbdump tests fixtures bench packaging

typecheck: $(VENV)/.full
	$(VENV)/bin/mypy --strict cdbdump

# Real vmcores (QEMU/TCG, cached in .cache/) and Debian 13's makedumpfile, built up
# front so that a missing piece stops here with its reason.
fixtures: $(VENV)/.full
	$(PY) fixtures/real_vmcores.py --tested
	$(PY) fixtures/makedumpfile_trixie.py >/dev/null

# The whole suite, real-vmcore tier included (the Debian root file system boot,
# about ten minutes under TCG, is make kdump-e2e's).
test: system-deps $(VENV)/.full lint typecheck fixtures
	$(PY) -m pytest -q tests -m 'not rootfs_boot'

unit: $(VENV)/.full
	$(PY) -m pytest -q tests -m 'not real'

bench: $(VENV)/.full
	$(PY) bench/bench.py

bench-memory: $(VENV)/.full  # 64 GiB / 256 GiB / 1 TiB-RAM machines (builder 2.1 GB RAM, 6 GB disk, ~30 min)
	$(PY) bench/memory.py

# Long fuzz run (tests/fuzz/fuzz.py): FUZZ_INPUTS mutated vmcores, both -q and the scan,
# plus the real 5.10 vmcore when the cache has it. `make test` runs a short form.
FUZZ_INPUTS ?= 10000
FUZZ_REAL   ?= $(wildcard $(or $(CDBDUMP_VMCORE_CACHE),$(CACHE)/vmcores)/debian11-5.10-1g.elf)
fuzz: $(VENV)/.full
	$(PY) -m tests.fuzz.fuzz --inputs $(FUZZ_INPUTS) $(if $(FUZZ_REAL),--real $(FUZZ_REAL))

# The real /proc/vmcore of the crash-dump-bitmap kernel (kernel/crash_dump_bitmap/);
# builds or reuses the patched kernel and the vmcore; the last line is its path.
real-bitmap-vmcore:
	@bash fixtures/make-real-bitmap-vmcore.sh

# cdbdump as one self-contained executable for a kdump initramfs (no Python there).
capture-exe: $(VENV)/.full
	packaging/capture/build.sh -o $(CACHE)/capture/pyinstaller/cdbdump

# A real panic: the capture kernel runs that executable on /proc/vmcore, the host checks
# what it saved: the busybox initramfs (fixtures/kdump_e2e.py), then a Debian root file
# system where kdump-tools saves the dump (fixtures/kdump_debian.py; DIR/debian links to
# it). Fresh boots every time; the last line is the directory of the results.
# KDUMP_E2E_CASES=NAME,... adds cases of fixtures/kdump_e2e.py to the default set.
kdump-e2e: capture-exe
	@export CDBDUMP_KDUMP_E2E_CASES=$(KDUMP_E2E_CASES); \
	dir=$$($(PY) fixtures/kdump_e2e.py --force) || exit 1; \
	deb=$$($(PY) fixtures/kdump_debian.py --force) || exit 1; \
	ln -sfn "$$deb" "$$dir/debian"; \
	$(PY) -m pytest -q -p no:cacheprovider tests/real/test_kdump_e2e.py \
	  tests/real/test_kdump_debian.py tests/real/test_dracut_module.py; rc=$$?; \
	echo "$$dir"; exit $$rc

clean:
	rm -rf $(VENV) $(CACHE) build *.egg-info
