#!/usr/bin/env bash
# `make run`: a throwaway control plane, the CRDs, examples/, and `usher run` with the embedded
# defaults (SQLite in target/run/usher.db, mail as .eml files in outbox/). Ctrl-C stops it all.
#
# USHER_RUN_DIR (default target/run), USHER_OUTBOX (default outbox), and usher's own USHER_LISTEN,
# USHER_PROBE_LISTEN and USHER_PUBLIC_URL move it elsewhere; the `make run` test uses them to run beside a developer's
# own `make run`.
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir=$(realpath -m "${USHER_RUN_DIR:-target/run}")
outbox=${USHER_OUTBOX:-outbox}
public_url=${USHER_PUBLIC_URL:-http://127.0.0.1:8080}
cp_dir=$run_dir/control-plane
mkdir -p "$run_dir" "$outbox"
target/debug/control-plane down "$cp_dir" >/dev/null
target/debug/control-plane up "$cp_dir" >"$run_dir/control-plane.log" 2>&1 &
cleanup() {
  if [ -n "$usher_pid" ]; then
    kill "$usher_pid" 2>/dev/null || true
    wait "$usher_pid" 2>/dev/null || true
  fi
  target/debug/control-plane down "$cp_dir" >/dev/null || true
}
usher_pid=""
trap cleanup EXIT
trap 'exit 130' INT TERM
target/debug/control-plane wait "$cp_dir" >/dev/null || { cat "$run_dir/control-plane.log"; exit 1; }
export KUBECONFIG="$cp_dir/kubeconfig"
kubectl=target/k8s/kubectl
target/debug/usher crds | $kubectl apply -f - >/dev/null
$kubectl wait --for condition=established crd --all --timeout=60s >/dev/null
$kubectl apply -f examples/ >/dev/null

cat <<MSG

  usher is running against a throwaway cluster. In another terminal, in this folder:

    export KUBECONFIG=$KUBECONFIG
    $kubectl get systemusers -n acme     # who has not accepted yet
    cat $outbox/*.eml    # the invitation mails
    $public_url/accept   # the acceptance page the mails link to

  Ctrl-C stops usher and the cluster. The store is $run_dir/usher.db.

MSG
target/debug/usher run --store "sqlite://$run_dir/usher.db" --mail "file://$outbox" --public-url "$public_url" &
usher_pid=$!
wait "$usher_pid"
