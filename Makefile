# make demo: edit a real DragBench photograph end to end.  make test: the test suite.
# make docs: the documentation site with the API reference generated from the docstrings, into site/.
# make test-latest: the newest versions pyproject.toml allows, in .venv-latest, on a fast subset (tests -m smoke).
# make lock: refresh requirements/lock.txt from the newest allowed versions (then run make test before committing).
# Each creates its venv on first use (CPU torch 2.13.0, taken from this machine's disk when it is there).
# .venv installs exactly the tested set in requirements/lock.txt, so an upstream release never reddens make test.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
LOCK := requirements/lock.txt
EXTRAS := .[dev,onnx,ray,ui]
LATEST ?= .venv-latest

.PHONY: demo test test-latest lock lint clean gpu docs

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

# The newest versions pyproject.toml allows (torch stays 2.13.0: any other build is several GB of CUDA packages
# here), on the fast subset; a failure ends with one line naming the upstream package and version that broke.
test-latest:
	rm -rf $(LATEST)
	python3 -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip setuptools
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager "torch==2.13.0" -e "$(EXTRAS)"
	$(LATEST)/bin/python tools/test_latest.py --lock $(LOCK)

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

clean:
	rm -rf $(VENV) $(LATEST) .venv-lock out .pytest_cache site
