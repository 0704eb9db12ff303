#!/usr/bin/env bash
# Builds the helm binary that the chart tests (tests/it/chart.rs) run, from the Go module proxy,
# once per machine.
#
# The version is pinned by go.mod and go.sum beside this script. The binary lands in
# target/helm/helm with a stamp of go.mod, go.sum and the Go version; while the stamp matches,
# this script returns at once. A killed build leaves no half-written binary behind (it builds
# into a temporary folder and moves the result into place), and a lock keeps two builds apart
# when several test binaries start together.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/target/helm"
need_minor=26 # helm.sh/helm/v3 v3.22 declares go 1.26.0

if ! command -v go >/dev/null 2>&1; then
  echo "error: Go is not installed. usher's chart tests build helm from source;" >&2
  echo "       install Go 1.${need_minor} or newer (https://go.dev/dl/ or your package manager) and run again." >&2
  exit 3
fi
gov="$(go env GOVERSION)" # e.g. go1.26.8
minor="$(echo "$gov" | sed -E 's/^go1\.([0-9]+).*/\1/')"
if ! [[ "$minor" =~ ^[0-9]+$ ]] || (( minor < need_minor )); then
  echo "error: $gov is too old: building helm needs Go 1.${need_minor} or newer." >&2
  exit 3
fi

stamp="$( (cat "$here/go.mod" "$here/go.sum" "${BASH_SOURCE[0]}"; echo "$gov") | sha256sum | cut -d' ' -f1)"
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9 # one build at a time
if [[ -x "$out/helm" && "$(cat "$out/.stamp" 2>/dev/null)" == "$stamp" ]]; then
  exit 0
fi

# What helm's own release build stamps in: its version, and the Kubernetes version it assumes
# when no cluster is asked (`helm template`, `helm lint`), taken from the client-go it links
# (v0.37.x -> 1.37), as helm's Makefile does.
cd "$here"
helm_version="$(go list -m -f '{{.Version}}' helm.sh/helm/v3)"
client_go="$(go list -m -f '{{.Version}}' k8s.io/client-go)" # e.g. v0.37.0
k8s_major=$(( $(echo "$client_go" | sed -E 's/^v([0-9]+)\..*/\1/') + 1 ))
k8s_minor="$(echo "$client_go" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')"
ldflags="-s -w"
ldflags+=" -X helm.sh/helm/v3/internal/version.version=$helm_version"
ldflags+=" -X helm.sh/helm/v3/internal/version.metadata="
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$k8s_major"
ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor"
ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$k8s_major"
ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor"

echo "building helm $helm_version ($gov); the first build takes a few minutes..." >&2
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$tmp/helm" helm.sh/helm/v3/cmd/helm
mv -f "$tmp/helm" "$out/helm"
echo "$stamp" >"$out/.stamp"
echo "built in $(( $(date +%s) - start ))s into $out" >&2
