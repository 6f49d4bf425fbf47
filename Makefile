# Two commands set everything up on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Let Python cache compiled bytecode (.pyc) in the venv. Some CI images set PYTHONDONTWRITEBYTECODE=1; with pip's
# --no-compile below that made every Python process (pytest, each DDP rank, each CLI call) compile torch's, MONAI's
# and SciPy's sources afresh: minutes per process on a loaded 2-core machine. Modules are compiled on first import.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install test lint demo bench bench-curves clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel lies on local disk; an unpinned torch pulls a multi-GB CUDA build.
	# --no-compile: byte-compiling torch's and MONAI's thousands of files took minutes on a 2-core machine.
	$(BIN)/pip install -q --no-compile torch==2.13.0
	$(BIN)/pip install -q --no-compile -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

demo: $(STAMP)
	$(BIN)/medseg demo

bench-curves: $(STAMP)  # about 75 minutes: medseg at 2, 5 and 15 minutes, the peers in their pinned venv, one chart
	cd benchmarks && ../$(BIN)/python time_to_dice.py --dataset msd_hippocampus --budgets 2m,5m,15m
	bash benchmarks/peers/setup.sh
	benchmarks/peers/.venv/bin/python benchmarks/peers/monai_dynunet.py --minutes 2,5,15
	benchmarks/peers/.venv/bin/python benchmarks/peers/nnunet_budget.py --minutes 2,5
	cd benchmarks && ../$(BIN)/python time_to_dice.py --plot-only

bench: $(STAMP)  # about 60-90 minutes on a 2-core CPU; each script prints one JSON line (see benchmarks/results.md)
	cd benchmarks && ../$(BIN)/python check_speed.py
	cd benchmarks && ../$(BIN)/python evaluate_speed.py
	cd benchmarks && ../$(BIN)/python train_throughput.py
	cd benchmarks && ../$(BIN)/python train_budget.py --dataset msd_hippocampus --budget 5m
	cd benchmarks && ../$(BIN)/python train_budget.py --dataset msd_hippocampus --budget 15m --keep ../runs/bench_hippocampus
	cd benchmarks && ../$(BIN)/python predict_hippocampus.py --bundle ../runs/bench_hippocampus
	cd benchmarks && ../$(BIN)/python predict_memory.py
	cd benchmarks && ../$(BIN)/python onnx_latency.py --bundle ../runs/bench_hippocampus
	cd benchmarks && ../$(BIN)/python predict_precision.py --bundle ../runs/bench_hippocampus
	cd benchmarks && ../$(BIN)/python serve_load.py --bundle ../runs/bench_hippocampus
	cd benchmarks && ../$(BIN)/python train_budget.py --dataset jsrt_scr --budget 15m
	cd benchmarks && ../$(BIN)/python train_budget.py --dataset drive --budget 15m

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
