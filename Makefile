# The developer interface of EdgeFleet. Every target installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CLUSTER_DIR := .cluster
# Python would otherwise put the working directory first on sys.path, where the
# top-level operator/ folder shadows the standard library's operator module.
export PYTHONSAFEPATH := 1

.PHONY: help venv test test-unit lint crds docs protos example-models cluster-up cluster-down testbin \
	helm s3 chart-files prometheus \
	demo demo-down clean

help:
	@echo "make demo          local control plane + operator + examples, then kubectl get em,ed"
	@echo "make demo-down     stop the demo (operator and control plane)"
	@echo "make test          lint, unit and integration tests (builds the control plane once)"
	@echo "make cluster-up    start etcd + kube-apiserver on loopback; kubeconfig in .cluster/"
	@echo "make cluster-down  stop it and delete its state"
	@echo "make crds          regenerate crds/ from operator/resources.py (the chart's copies, docs)"
	@echo "make docs          regenerate docs/reference.md, the field reference, from crds/"
	@echo "make chart-files   copy crds/, monitoring/ alerts and dashboards into the cloud chart"
	@echo "make helm          build helm of the pinned release (for the chart tests)"
	@echo "make s3            build SeaweedFS's weed, the S3-compatible server the dataset tests use"
	@echo "make protos        regenerate the Python code of protos/*.proto"
	@echo "make example-models  rebuild the ONNX models in examples/models"

# The virtual environment is rebuilt whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

testbin:
	bash hack/testbin/build.sh >/dev/null

helm:
	bash hack/helmbin/build.sh >/dev/null

s3:
	bash hack/s3bin/build.sh >/dev/null

prometheus:
	bash hack/ensure-prometheus.sh

crds: venv
	$(PY) -m edgefleet.operator.crdgen crds
	$(MAKE) chart-files
	$(MAKE) docs

# docs/reference.md is generated from crds/ (`hack/fieldref.py --check` says when it is
# stale, and so does a test).
docs: venv
	$(PY) hack/fieldref.py

# The cloud chart carries copies of the CRDs, dashboards and alert rules (a chart
# cannot read files outside its folder); a test fails when they drift.
chart-files:
	cp crds/*.yaml helm/edgefleet/crds/
	cp monitoring/alerts.yaml helm/edgefleet/files/alerts.yaml
	cp monitoring/dashboards/*.json helm/edgefleet/files/dashboards/

protos: venv
	$(PY) hack/gen_protos.py

example-models: venv
	$(PY) hack/testmodels.py examples/models

lint: venv
	$(VENV)/bin/ruff check operator edge_runtime trainer tests hack benchmarks
	$(VENV)/bin/lint-imports

test-unit: venv
	$(PY) -m pytest tests/unit -q

test: venv testbin helm s3 prometheus lint
	$(PY) -m pytest tests -q -ra --durations=25

cluster-up: venv
	$(PY) hack/localcluster.py up --dir $(CLUSTER_DIR)

cluster-down:
	$(PYTHON) hack/localcluster.py down --dir $(CLUSTER_DIR)

demo: venv prometheus
	$(PY) hack/demo.py up

demo-down:
	$(PYTHON) hack/demo.py down

clean: cluster-down
	rm -rf $(VENV) build dist *.egg-info
