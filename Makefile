# Each target creates .venv and installs requirements.txt first if needed (about 4 minutes once).
VENV ?= .venv
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: repro test test-fast demo recipe ui clean-venv

$(BIN)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $@

repro: $(BIN)/.installed  ## the whole pipeline: download, train x3, evaluate x3, compare
	dvc repro

test: $(BIN)/.installed  ## the whole suite, end-to-end runs included
	$(BIN)/python -m pytest -q

test-fast: $(BIN)/.installed  ## the unit and stage tests (tests/unit, tests/stages), without their slow runs
	$(BIN)/python -m pytest -q -m "not slow" tests/unit tests/stages

demo: $(BIN)/.installed  ## the whole pipeline on a CPU-sized subset, as a DVC experiment; the workspace stays as it was
	dvc exp run --temp -n cpu-demo \
	  -S data.train_limit=2500 -S data.test_limit=1000 -S data.val_size=500 \
	  -S cnn.epochs=2 -S resnet34.epochs=1 -S resnet18.epochs=1 -S resnet18.image_size=64 \
	  $(DEMO_ARGS)
	dvc exp show --only-changed --keep test_acc --drop 'Created|.*/'

recipe: $(BIN)/.installed  ## one named recipe (recipes/$(R).yaml) as a DVC experiment; docs/recipes.md
	python -m cifar_pipeline.commands.recipes $(R) $(RECIPE_ARGS)

ui: $(BIN)/.installed  ## browse the runs: mlflow ui on 127.0.0.1:5000; open the address it prints
	$(BIN)/python -m cifar_pipeline.commands.ui --port 5000

clean-venv:
	rm -rf $(VENV)

# Sweeps (docs/experiments.md#sweeps): a grid of params over DVC's queue, then its report.
.PHONY: sweep report
sweep: $(BIN)/.installed  ## a grid as DVC experiments: make sweep N=my-lr S="cnn.optimizer.lr=0.01,0.003 seed=0,1,2" [R=recipe] [J=jobs]
	python -m cifar_pipeline.commands.sweep $(N) $(S) $(if $(R),--recipe $(R)) $(if $(J),-j $(J))
	python -m cifar_pipeline.commands.report $(N)

report: $(BIN)/.installed  ## the report of sweep N: reports/sweeps/$(N).md, .csv, .png, also in MLflow
	python -m cifar_pipeline.commands.report $(N)
