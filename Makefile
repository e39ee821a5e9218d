# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fbprof-installed
TORCH  ?= torch==2.13.0
DEMO_LUT ?= demo/local-cpu-onnxruntime.csv
PYTEST_ARGS ?=

.PHONY: install demo test lut clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first (the CPU wheel), then fbprof with every extra and the test tools, pinned by constraints.txt
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[all,test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/fbprof measure --device local --out $(DEMO_LUT)
	$(BIN)/fbprof predict fbnet-a fbnet-b fbnet-c --lut $(DEMO_LUT) --plot demo/predict.png

test: install
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

# re-measure the committed local LUT on this machine
lut: install
	$(BIN)/fbprof measure --device local --out luts/local-cpu-onnxruntime.csv --paired 1000 --remeasure

clean:
	rm -rf $(VENV) demo .pytest_cache
