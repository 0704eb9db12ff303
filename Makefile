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
crds: ## Regenerate crds/ from the Rust types (and their copy in the Helm chart)
	$(CARGO) run --quiet -- crds --dir crds
	cp crds/usher.dev_*.yaml charts/usher/crds/

.PHONY: k8s-bins
k8s-bins: ## Build kube-apiserver, kube-controller-manager and kubectl once (cached in target/k8s)
	bash tests/k8s/build.sh

.PHONY: helm-bin
helm-bin: ## Build helm once for the chart tests (cached in target/helm)
	bash tests/helm/build.sh

.PHONY: test-peers
test-peers: ## The real servers and tools tests talk to: aiosmtpd, scim2-server and django-scim2 (venv in target/venv), Better Auth's SCIM plugin (npm, target/better-auth-scim), PostgreSQL, Chromium + chromedriver, promtool, Lua 5.1
	@missing=""; \
	command -v chromedriver >/dev/null || missing="$$missing chromium chromium-driver"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v lua5.1 >/dev/null || missing="$$missing lua5.1"; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	python3 -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else echo "install Debian's$$missing (sudo apt-get install$$missing)"; exit 1; fi; fi
	@if [ ! -x target/venv/bin/python ] || ! target/venv/bin/python -c "import aiosmtpd, scim2_server, django, django_scim" 2>/dev/null; then \
		python3 -m venv target/venv && target/venv/bin/pip install --quiet --disable-pip-version-check aiosmtpd scim2-server 'django>=5.2,<6' 'django-scim2==0.23.*'; fi
	@if [ ! -d target/better-auth-scim/node_modules ] || ! cmp -s testenv/peers/better-auth-scim/package-lock.json target/better-auth-scim/package-lock.json; then \
		mkdir -p target/better-auth-scim && \
		cp testenv/peers/better-auth-scim/package.json testenv/peers/better-auth-scim/package-lock.json target/better-auth-scim/ && \
		npm ci --prefix target/better-auth-scim --no-audit --no-fund --nodedir=/usr; fi

.PHONY: test
test: k8s-bins helm-bin test-peers ## Every test, unit and integration, against a real control plane and real peers
	$(CARGO) build --workspace  # target/debug/control-plane, which the `make run` test runs
	$(CARGO) test --workspace --no-fail-fast

.PHONY: test-reliability
test-reliability: k8s-bins test-peers ## The full reliability run: 1,000 people, 20 SIGKILLs, mail/store/API server outages, secrets (prints the counts)
	USHER_RELIABILITY_USERS=1000 USHER_RELIABILITY_KILLS=20 $(CARGO) test --test it -- --nocapture --test-threads 2 reliability:: secrets:: hostile::

.PHONY: bench
bench: k8s-bins test-peers ## N = 10,000 users on a real control plane; prints the table and writes BENCHMARKS.md
	$(CARGO) bench --bench scale -- --users 10000 --write BENCHMARKS.md

.PHONY: bench-quick
bench-quick: k8s-bins test-peers ## The same at N = 1,000, a smoke run (CI); prints the table only
	$(CARGO) bench --bench scale -- --users 1000

##@ Run
.PHONY: run
run: k8s-bins ## Throwaway control plane + CRDs + examples/ + `usher run` with embedded defaults (Ctrl-C stops all)
	$(CARGO) build --quiet --workspace
	@bash hack/run.sh

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
