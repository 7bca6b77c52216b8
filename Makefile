# The same targets locally and in CI. `make run` and `make test` install what they need.
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
PERF_STAMP := .venv/.installed-perf
FERRETDB := .tools/bin/ferretdb

.PHONY: run test lint typecheck bench deps ferretdb system-deps clean

run: deps
	.venv/bin/cloudpacs run

test: deps system-deps
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Debian packages the tests run for real: HAProxy, Prometheus/promtool, ApacheBench,
# shellcheck, systemd-analyze, and Orthanc + its DICOMweb plugin (the source `cloudpacs
# migrate` is tested against).
system-deps:
	scripts/install-system-deps.sh haproxy prometheus prometheus-node-exporter apache2-utils shellcheck systemd openssl orthanc orthanc-dicomweb

lint: $(VENV_STAMP)
	.venv/bin/ruff check cloudpacs tests perf
	.venv/bin/ruff format --check cloudpacs tests perf

typecheck: $(VENV_STAMP)
	.venv/bin/mypy cloudpacs

# The whole comparison (perf/RESULTS.md): cloudpacs on one node and on N nodes behind
# HAProxy, and Orthanc, on the same corpus; ratios, plots, results in perf/results/.
bench: deps $(PERF_STAMP)
	scripts/install-system-deps.sh apache2-utils haproxy orthanc orthanc-dicomweb
	$(PY) perf/bench_core.py --with-orthanc --nodes 2 --publish

$(PERF_STAMP): $(VENV_STAMP)
	.venv/bin/pip install -q -e '.[dev,perf]'
	touch $(PERF_STAMP)

deps: $(VENV_STAMP) ferretdb

ferretdb: $(FERRETDB)

$(FERRETDB): tools/ferretdb/go.mod tools/ferretdb/go.sum tools/ferretdb/main.go
	scripts/build-ferretdb.sh

$(VENV_STAMP): pyproject.toml
	test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -e '.[dev]'
	touch $(VENV_STAMP)

clean:
	rm -rf .venv .tools var
