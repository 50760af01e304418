# `make train` and `make test` set everything up on a machine with only Python 3.11.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
STORE := sqlite:///$(CURDIR)/outputs/mlflow.db

.PHONY: setup train sweep test lint server ui serve bench bench-train bench-serve clean

$(VENV)/.installed: pyproject.toml
	@echo "Setting up $(VENV): signglove-exp and its dependencies (first time only; a few minutes)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar on -e ".[dev]"
	touch $@

setup: $(VENV)/.installed  ## virtual environment with the project and its test tools

train: setup  ## the main job: train one model (ARGS="model=gru seed=7" to change it)
	$(BIN)/python -m signglove_exp $(ARGS)
	@echo "Compare runs in the MLflow UI: make ui  (or: $(BIN)/mlflow ui --backend-store-uri $(STORE))"

sweep: setup  ## all four architectures in one multirun, ending with a comparison table
	$(BIN)/python -m signglove_exp sweep=all_models $(ARGS)

test: setup lint  ## the fast suite (slow tests: $(BIN)/pytest -m slow)
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup  ## inference latency table: four architectures, PyTorch vs ONNX Runtime
	$(BIN)/python -m signglove_exp.bench $(ARGS)

bench-train: setup  ## training speed against upstream's recipe, side by side (ARGS="--sweep" adds the full sweep)
	$(BIN)/python -m signglove_exp.bench_train $(ARGS)

serve: setup  ## the bundled GRU live on http://127.0.0.1:8000/live (ARGS="--serial /dev/ttyACM0" for a glove)
	$(BIN)/python -m signglove_exp.serve signglove_exp/bundled/pretrained/gru-reference.ckpt $(ARGS)

bench-serve: setup  ## the live service: /predict at 50 requests/s for a minute, sign-to-screen latency
	$(BIN)/python -m signglove_exp.bench_serve $(ARGS)

server: setup  ## a team's tracking server on http://127.0.0.1:5000 (SQLite + artifacts under outputs/server/)
	mkdir -p outputs/server
	$(BIN)/mlflow server --backend-store-uri sqlite:///$(CURDIR)/outputs/server/mlflow.db \
		--artifacts-destination $(CURDIR)/outputs/server/artifacts --host 127.0.0.1 --port 5000

ui: setup  ## MLflow UI on http://127.0.0.1:5000 over the local store
	$(BIN)/mlflow ui --backend-store-uri $(STORE) --host 127.0.0.1 --port 5000

clean:  ## run folders, the MLflow store, the data cache and the unpacked episodes (all under outputs/)
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
