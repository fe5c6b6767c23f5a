# make demo: edit a real DragBench photograph end to end.  make test: the whole test suite, the gate before a merge.
# make test-fast: the inner loop, every test not marked slow (pytest -m "not slow"; README.md gives its measured time):
# it skips the browser tests, ONNX export, torch.compile, the docs build, Ray, the Triton-interpreter kernel tests,
# the bench subprocess kill/resume tests and any other single test over about 3 s. It is not the gate: make test is.
# make docs: the documentation site with the API reference generated from the docstrings, into site/.
# make test-latest: the newest versions pyproject.toml allows, in .venv-latest, on a fast subset (tests -m smoke).
# make test-oldest: every direct dependency at its pyproject.toml lower bound, in .venv-oldest, on the same subset.
# make lock: refresh requirements/lock.txt from the newest allowed versions (then run make test before committing).
# Each creates its venv on first use (CPU torch 2.13.0, taken from this machine's disk when it is there).
# .venv installs exactly the tested set in requirements/lock.txt, so an upstream release never reddens make test.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
LOCK := requirements/lock.txt
EXTRAS := .[dev,onnx,ray,ui]
LATEST ?= .venv-latest
OLDEST ?= .venv-oldest

.PHONY: demo test test-fast test-latest test-oldest lock lint clean gpu docs

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) pip setuptools
	$(PY) -m pip install --quiet --no-build-isolation -c $(LOCK) "torch==2.13.0" -e "$(EXTRAS)" playwright
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dragsdk edit examples/dragbench-car --model tiny --steps 20 --resolution 256 \
		--out out/demo.png --report out/demo-report.json
	@echo "edited image: out/demo.png   report: out/demo-report.json"

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

# The newest versions pyproject.toml allows (torch stays 2.13.0: any other build is several GB of CUDA packages
# here), on the fast subset; a failure ends with one line naming the upstream package and version that broke.
test-latest:
	rm -rf $(LATEST)
	python3 -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip setuptools
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager "torch==2.13.0" -e "$(EXTRAS)"
	$(LATEST)/bin/python tools/test_latest.py --lock $(LOCK)

# The lower bounds of pyproject.toml's [project] dependencies, installed exactly (tools/oldest.py writes name==lower
# for each), on the fast subset; a failure names the old version that broke, and the fix is a raised lower bound.
# torch is the exception: 2.13.0, the only CPU wheel on this machine's disk (any other torch downloads several GB of
# CUDA packages); pyproject.toml says what its lower bound rests on. torchvision is never installed. The extras are
# those the subset imports (dev: pytest, peft; ui: gradio for dragsdk.ui.app), resolved by pip around the old pins.
# The strict docs build is deselected: mkdocstrings reads the sources statically (griffe), so the runtime
# dependencies' versions cannot change it, and make test-latest builds the docs anyway. --no-compile: this venv lives
# for one run, so only the modules the subset imports get byte-compiled, as they are imported.
test-oldest:
	rm -rf $(OLDEST)
	python3 -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet --upgrade pip setuptools
	$(OLDEST)/bin/python tools/oldest.py pyproject.toml > $(OLDEST)/constraints.txt
	$(OLDEST)/bin/python -m pip install --quiet --no-compile -c $(OLDEST)/constraints.txt "torch==2.13.0" -e ".[dev,ui]"
	$(OLDEST)/bin/python tools/test_latest.py --lock $(LOCK) --label test-oldest \
		--deselect=tests/test_docs.py::test_the_embedder_reference_documents_every_top_level_name

lock:
	rm -rf .venv-lock
	python3 -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip setuptools
	.venv-lock/bin/python -m pip install --quiet --upgrade "torch==2.13.0" -e "$(EXTRAS)" playwright
	.venv-lock/bin/python tools/lock.py .venv-lock $(LOCK)
	rm -rf .venv-lock
	@echo "$(LOCK) refreshed: run make test (it reinstalls .venv from the new set) before committing it"

# On a GPU machine: CUDA tests, kernel and edit benchmarks, backend table (benchmarks/gpu.py; results/*-<gpu>.json).
gpu: $(STAMP)
	$(PY) benchmarks/gpu.py

docs: $(STAMP)
	$(PY) -m mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m mypy

clean:
	rm -rf $(VENV) $(LATEST) $(OLDEST) .venv-lock out .pytest_cache site
