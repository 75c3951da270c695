# Each target creates .venv and installs requirements.txt first if needed (about 4 minutes once).
VENV ?= .venv
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: repro test test-fast demo exp show recipe ui clean-venv

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

# The demo's size: the whole pipeline in minutes on a CPU. Offline, or for other -S options on every demo-sized
# run, export DEMO_ARGS once per shell (README, docs/setup.md#offline-use); later -S options win.
DEMO_SIZE := -S data.train_limit=2500 -S data.test_limit=1000 -S data.val_size=500 \
  -S cnn.epochs=2 -S resnet34.epochs=1 -S resnet18.epochs=1 -S resnet18.image_size=64
# `make show` leaves out the keys the demo and DEMO_ARGS set (the same in every demo-sized experiment), `progress`
# and the queue's State and Executor columns, so the
# table fits 120 columns; --no-pager keeps it out of `less`.
SHOW_DROP := Created|State|Executor|progress|.*/|data\.|.*\.epochs|resnet18\.(image_size|weights)
# `dvc exp run` without the warning DVC prints for each output when the commit has no dvc.lock
EXP_RUN := $(BIN)/python -m cifar_pipeline.commands.experiment

demo: $(BIN)/.installed  ## the whole pipeline at demo size, as the DVC experiment cpu-demo in a temp copy: params.yaml stays as it is
	$(EXP_RUN) --temp -n cpu-demo $(DEMO_SIZE) $(DEMO_ARGS)
	@$(MAKE) --no-print-directory show

exp: $(BIN)/.installed  ## one more demo-sized experiment: make exp N=<name> S='<key>=<value> ...'; Q=1 queues it
	$(if $(N),,$(error name the experiment: make exp N=<name> S='<key>=<value> ...'))
	$(EXP_RUN) $(if $(Q),--queue,--temp) -n $(N) $(DEMO_SIZE) $(DEMO_ARGS) $(addprefix -S ,$(S))
	$(if $(Q),,@$(MAKE) --no-print-directory show)

show: $(BIN)/.installed  ## test accuracy per model and the params that differ, per experiment
	@dvc exp show --no-pager --only-changed --keep test_acc --drop '$(SHOW_DROP)'

recipe: $(BIN)/.installed  ## one named recipe (recipes/$(R).yaml) as a DVC experiment; docs/recipes.md
	python -m cifar_pipeline.commands.recipes $(R) $(RECIPE_ARGS)

ui: $(BIN)/.installed  ## browse the runs: mlflow ui on 127.0.0.1:5000; prints the address once the server answers
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
