# Two commands set everything up: `make demo` and `make test` (see README.md).
PYTHON ?= python3
PYTHON312 ?= python3.12
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := constraints.txt
SAMPLE := data/sample
SIZE   ?= 140
PROFILE ?= demo

export DAGSTER_HOME := $(CURDIR)/dagster_home
export XRAY_DATA_DIR ?= $(CURDIR)/$(SAMPLE)
export XRAY_STORAGE_DIR ?= $(CURDIR)/storage
export YOLO_CONFIG_DIR ?= $(CURDIR)/.ultralytics
# nothing reaches the network (xray_assets sets these itself; `mlflow ui` does not import it)
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
# Python writes each module's bytecode the first time it is imported (the install skips compiling,
# below). A shell with PYTHONDONTWRITEBYTECODE set would make every run's process compile dagster,
# pandas, torch and ultralytics from source again: seconds per run, about 90 s over `make demo`.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test test-fast lint ui serve annotate bench fuzz install sample-data lock clean

# The lock pins every package, so the pip a new venv ships (23.2 on Python 3.11) installs it
# without backtracking; no pip upgrade, no download of pip itself. --no-compile: Python compiles a
# module when it is first imported (a minute less of install; torch alone has thousands of files).
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar off --no-compile -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Label Studio in its own environment and lock (its pins conflict with ours: pyarrow<25, pytz<2023,
# numpy<2.3 through its SDK); the tests start it as a real service like PostgreSQL
LS_VENV  := .venv-label-studio
LS_LOCK  := annotate/constraints.txt
LS_STAMP := $(LS_VENV)/.installed
$(LS_STAMP): $(LS_LOCK)
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install --progress-bar off --no-compile -c $(LS_LOCK) label-studio==1.23.2
	touch $(LS_STAMP)

# Label Studio on 127.0.0.1:8090, offline; its database and service.json (URL, admin, generated
# password and token; or XRAY_LABEL_STUDIO_USER, _PASSWORD and _TOKEN) under $(XRAY_STORAGE_DIR)/label-studio/,
# where `make ui` finds it
annotate: $(STAMP) $(LS_STAMP)
	$(BIN)/xray-assets annotate --venv $(LS_VENV)

$(SAMPLE)/.complete: | $(STAMP)
	$(BIN)/xray-assets sample-data $(SAMPLE) --size $(SIZE)
	touch $@

sample-data: $(SAMPLE)/.complete

demo: $(STAMP) $(SAMPLE)/.complete
	$(BIN)/xray-assets materialize --profile $(PROFILE)

test: $(STAMP) $(LS_STAMP) lint
	$(BIN)/python -m pytest

# ruff (settings in pyproject.toml): the formatting and the lint set; `make test` fails on a violation
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

# everything but the end-to-end tests that train through the instance (the `slow` marker), on two
# workers, one test file per worker (tests/test_assets.py runs its assets in order): under two minutes on 2 cores
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -n 2 --dist loadfile

ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(XRAY_STORAGE_DIR)/mlflow/mlflow.db \
		--default-artifact-root $(XRAY_STORAGE_DIR)/mlflow/artifacts --host 127.0.0.1 --port 5000 & \
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

serve: $(STAMP)
	$(BIN)/xray-assets serve --host 127.0.0.1 --port 8080

# the real VinBigData table when the shared folder is beside the checkout, else the sample data
bench: $(STAMP) $(SAMPLE)/.complete
	XRAY_REAL_DATA=$${XRAY_REAL_DATA:-$$(test -d ../shared/data/real && cd ../shared/data/real && pwd)} \
		$(BIN)/python benchmarks/run_all.py

# The fuzz harness's long round: at least 20,000 mutated genuine files through every reader of outside
# bytes (the real files beside the checkout), a table of cases per reader and outcome. CASES=N for more.
CASES ?= 20000
fuzz: $(STAMP)
	XRAY_REAL_DATA=$${XRAY_REAL_DATA:-$$(test -d ../shared/data/real && cd ../shared/data/real && pwd)} \
		$(BIN)/python tests/fuzzing.py --cases $(CASES)

# Regenerate the lock: resolve pyproject.toml in a fresh 3.11 venv with the newest pip, write its
# freeze, then check that Python 3.12 resolves to exactly the same pins (a dry run, nothing installed).
lock:
	rm -rf .lock && mkdir .lock
	$(PYTHON) -m venv .lock/py311
	.lock/py311/bin/pip install -q --upgrade pip
	.lock/py311/bin/pip install -q --progress-bar off -e '.[dev]'
	{ grep '^#' $(LOCK); .lock/py311/bin/pip freeze --all --exclude-editable \
		| grep -v -e '^pip==' -e '^xray-assets' -e '^wheel==' | LC_ALL=C sort -f; } > .lock/constraints.txt
	$(PYTHON312) -m venv .lock/py312
	.lock/py312/bin/pip install -q --upgrade pip
	.lock/py312/bin/pip install -q --dry-run --ignore-installed --report .lock/py312.json \
		-c .lock/constraints.txt -e '.[dev]'
	$(PYTHON) -c "import json, re, sys; \
		pins = dict(l.strip().lower().split('==') for l in open('.lock/constraints.txt') if '==' in l); \
		got = {i['metadata']['name'].lower(): i['metadata']['version'] for i in json.load(open('.lock/py312.json'))['install']}; \
		norm = lambda n: re.sub(r'[-_.]+', '-', n); pins = {norm(k): v for k, v in pins.items()}; \
		extra = sorted(n for n in map(norm, got) if n not in pins and n != 'xray-assets'); \
		assert not extra, f'3.12 needs packages the 3.11 lock lacks: {extra}'; print('3.12 resolves within the lock')"
	mv .lock/constraints.txt $(LOCK)
	rm -rf .lock

clean:
	rm -rf storage $(SAMPLE) dagster_home/storage dagster_home/history dagster_home/schedules dagster_home/*.db
