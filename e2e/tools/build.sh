#!/usr/bin/env bash
# Builds the cluster's third-party binaries (Kubernetes, etcd, helm) from the pinned Go
# modules beside this script, into a cache outside the checkout keyed by each module's
# go.mod + go.sum, so a warm run only checks a stamp. Prints the bin directory.
#
#   e2e/tools/build.sh            build what is missing, print the bin dir
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${HOTLOAD_CACHE:-$HOME/.cache/hotload}"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

# module_version DIR MODULE: the version DIR/go.mod requires of MODULE.
module_version() { awk -v m="$2" '$1 == m || ($1 == "require" && $2 == m) {print $NF; exit}' "$1/go.mod"; }

# build_module NAME OUTDIR LDFLAGS PKG...: go build each PKG into OUTDIR unless the stamp matches.
build_module() {
	local name="$1" out="$2" ldflags="$3"; shift 3
	local key; key="$(cat "$here/$name/go.mod" "$here/$name/go.sum" "$0" | sha256sum | cut -c1-16)"
	if [[ -f "$out/.stamp" && "$(cat "$out/.stamp")" == "$key" ]]; then return; fi
	mkdir -p "$out"
	echo "building $name into $out (first run takes a while)" >&2
	(cd "$here/$name" && go build -trimpath -ldflags "-s -w $ldflags" -o "$out/" "$@")
	echo "$key" > "$out/.stamp"
}

k8s="$(module_version "$here/kubernetes" k8s.io/kubernetes)"
major="${k8s#v}"; major="${major%%.*}"
minor="${k8s#v*.}"; minor="${minor%%.*}"
vflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	vflags+=" -X $pkg.gitVersion=$k8s -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
	vflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
bin="$cache/bin"
build_module kubernetes "$bin/kubernetes-$k8s" "$vflags" \
	k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl

etcd="$(module_version "$here/etcd" go.etcd.io/etcd/server/v3)"
build_module etcd "$bin/etcd-$etcd" "-X go.etcd.io/etcd/api/v3/version.Version=${etcd#v}" .

helm="$(module_version "$here/helm" helm.sh/helm/v3)"
build_module helm "$bin/helm-$helm" "-X helm.sh/helm/v3/internal/version.version=$helm" helm.sh/helm/v3/cmd/helm

# One directory of links, so callers put a single entry on PATH.
mkdir -p "$bin/current"
for f in "$bin/kubernetes-$k8s"/* "$bin/etcd-$etcd"/* "$bin/helm-$helm"/*; do
	ln -sfn "$f" "$bin/current/$(basename "$f")"
done
echo "$bin/current"
