# make demo: edit a real DragBench photograph end to end.  make test: the test suite.
# make docs: the documentation site with the API reference generated from the docstrings, into site/.
# Both create .venv on first use (CPU torch 2.13.0, taken from this machine's disk when it is there).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: demo test lint clean gpu docs

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0" -e ".[dev,onnx,ray,ui]" "playwright>=1.40"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dragsdk edit examples/dragbench-car --model tiny --steps 20 --resolution 256 \
		--out out/demo.png --report out/demo-report.json
	@echo "edited image: out/demo.png   report: out/demo-report.json"

test: $(STAMP)
	$(PY) -m pytest

# On a GPU machine: CUDA tests, kernel and edit benchmarks, backend table (benchmarks/gpu.py; results/*-<gpu>.json).
gpu: $(STAMP)
	$(PY) benchmarks/gpu.py

docs: $(STAMP)
	$(PY) -m mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) out .pytest_cache site
