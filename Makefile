# Two commands set everything up: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SAMPLE := data/sample
SIZE   ?= 160

export DAGSTER_HOME := $(CURDIR)/dagster_home
export XRAY_DATA_DIR ?= $(CURDIR)/$(SAMPLE)
export XRAY_STORAGE_DIR ?= $(CURDIR)/storage
export YOLO_CONFIG_DIR ?= $(CURDIR)/.ultralytics
export YOLO_OFFLINE := 1

.PHONY: demo test ui serve bench install sample-data clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(SAMPLE)/.complete: | $(STAMP)
	$(BIN)/xray-assets sample-data $(SAMPLE) --size $(SIZE)
	touch $@

sample-data: $(SAMPLE)/.complete

demo: $(STAMP) $(SAMPLE)/.complete
	$(BIN)/xray-assets materialize --profile demo

test: $(STAMP)
	$(BIN)/python -m pytest

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

clean:
	rm -rf storage $(SAMPLE) dagster_home/storage dagster_home/history dagster_home/schedules dagster_home/*.db
