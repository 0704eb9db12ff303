#!/usr/bin/env bash
# `make run`: a throwaway control plane, the CRDs, examples/, and `usher run` with the embedded
# defaults (SQLite in target/run/usher.db, mail as .eml files in outbox/). Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
cp_dir=target/run/control-plane
mkdir -p target/run outbox
target/debug/control-plane down "$cp_dir" >/dev/null
target/debug/control-plane up "$cp_dir" >target/run/control-plane.log 2>&1 &
cp_pid=$!
cleanup() {
  kill "$usher_pid" 2>/dev/null || true
  wait "$usher_pid" 2>/dev/null || true
  target/debug/control-plane down "$cp_dir" >/dev/null || true
}
usher_pid=""
trap cleanup EXIT
trap 'exit 130' INT TERM
target/debug/control-plane wait "$cp_dir" >/dev/null || { cat target/run/control-plane.log; exit 1; }
export KUBECONFIG="$PWD/$cp_dir/kubeconfig"
kubectl=target/k8s/kubectl
target/debug/usher crds | $kubectl apply -f - >/dev/null
$kubectl wait --for condition=established crd --all --timeout=60s >/dev/null
$kubectl apply -f examples/ >/dev/null

cat <<MSG

  usher is running against a throwaway cluster.

    export KUBECONFIG=$KUBECONFIG
    $kubectl get systemusers -n acme        # who has not accepted yet
    ls outbox/                                     # the invitation mails (.eml)
    open http://127.0.0.1:8080/accept              # the acceptance page (the mails link here)

  Ctrl-C stops usher and the cluster. The store is target/run/usher.db.

MSG
target/debug/usher run --store sqlite://target/run/usher.db --mail file://outbox &
usher_pid=$!
wait "$usher_pid"
