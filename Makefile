# usher — see README.md. `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
CP_DIR := target/control-plane
CONTROL_PLANE := target/debug/control-plane

##@ General
.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*?##/ {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2} /^##@/ {printf "\n\033[1m%s\033[0m\n", substr($$0, 5)}' $(MAKEFILE_LIST)

##@ Development
.PHONY: build
build: ## Build usher (debug)
	$(CARGO) build --workspace

.PHONY: fmt
fmt: ## Format the Rust code
	$(CARGO) fmt --all

.PHONY: lint
lint: ## rustfmt check and clippy with warnings denied
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: crds
crds: ## Regenerate crds/ from the Rust types
	$(CARGO) run --quiet -- crds --dir crds

.PHONY: k8s-bins
k8s-bins: ## Build kube-apiserver, kube-controller-manager and kubectl once (cached in target/k8s)
	bash tests/k8s/build.sh

.PHONY: test
test: k8s-bins ## Every test, unit and integration, against a real control plane
	$(CARGO) test --workspace --no-fail-fast

##@ Control plane
.PHONY: control-plane
control-plane: k8s-bins ## Start a throwaway kube-apiserver + etcd + controller manager in the background
	$(CARGO) build --quiet -p usher-testenv
	@mkdir -p $(CP_DIR)
	@$(CONTROL_PLANE) down $(CP_DIR) >/dev/null
	@nohup $(CONTROL_PLANE) up $(CP_DIR) >$(CP_DIR)/log 2>&1 &
	@$(CONTROL_PLANE) wait $(CP_DIR)

.PHONY: control-plane-stop
control-plane-stop: ## Stop the control plane started by `make control-plane`
	@if [ -x $(CONTROL_PLANE) ]; then $(CONTROL_PLANE) down $(CP_DIR); fi
