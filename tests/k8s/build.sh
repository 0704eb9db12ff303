#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and a matching kubectl from the Go module proxy,
# once per machine.
#
# The binaries land in target/k8s/ with a stamp of go.mod, go.sum and the Go version; while the
# stamp matches, this script returns at once. A killed build leaves no half-written binary behind
# (it builds into a temporary folder and moves the results into place).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/target/k8s"
need_minor=26 # k8s.io/kubernetes v1.37 declares go 1.26.0

if ! command -v go >/dev/null 2>&1; then
  echo "error: Go is not installed. usher's integration tests build kube-apiserver from source;" >&2
  echo "       install Go 1.${need_minor} or newer (https://go.dev/dl/ or your package manager) and run again." >&2
  exit 3
fi
gov="$(go env GOVERSION)" # e.g. go1.26.8
minor="$(echo "$gov" | sed -E 's/^go1\.([0-9]+).*/\1/')"
if ! [[ "$minor" =~ ^[0-9]+$ ]] || (( minor < need_minor )); then
  echo "error: $gov is too old: building kube-apiserver v1.37 needs Go 1.${need_minor} or newer." >&2
  exit 3
fi

stamp="$( (cat "$here/go.mod" "$here/go.sum"; echo "$gov") | sha256sum | cut -d' ' -f1)"
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9 # one build at a time, even when several test binaries start together
if [[ -x "$out/kube-apiserver" && -x "$out/kube-controller-manager" && -x "$out/kubectl" && "$(cat "$out/.stamp" 2>/dev/null)" == "$stamp" ]]; then
  exit 0
fi

echo "building kube-apiserver, kube-controller-manager and kubectl ($gov, $(grep -m1 -E '^\s*k8s.io/kubernetes v' "$here/go.mod" | awk '{print $2}')); the first build takes 10-20 minutes..." >&2
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
(cd "$here" && go build -trimpath -ldflags="-s -w" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl)
mv -f "$tmp/kube-apiserver" "$tmp/kube-controller-manager" "$tmp/kubectl" "$out/"
echo "$stamp" >"$out/.stamp"
echo "built in $(( $(date +%s) - start ))s into $out" >&2
