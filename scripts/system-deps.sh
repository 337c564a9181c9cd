#!/usr/bin/env bash
# The system packages the test suite needs, on Debian: make, git, chromium (the MLflow UI
# test), postgresql (the tracking server's backend) and kubectl (tests/k8s render k8s/
# with `kubectl kustomize`). Installed with apt when missing and running as root;
# otherwise one line says what is missing and how to install it. A test whose package is
# missing skips, or fails under CI=true; so does this script (exit 1) under CI=true.
set -euo pipefail

PACKAGES="make git chromium postgresql kubectl"
ON_CI=false
case "${CI:-}" in 1 | true | TRUE | True | yes) ON_CI=true ;; esac

present() {  # what the tests look for, however it was installed
  case $1 in
    chromium) [ -x /usr/bin/chromium ] ;;
    postgresql) compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null ;;
    *) command -v "$1" >/dev/null ;;
  esac
}

missing() {
  local p out=""
  for p in $PACKAGES; do present "$p" || out="$out $p"; done
  echo "${out# }"
}

# Debian's own kubernetes-client (1.20, kustomize 2) is too old: only the package named kubectl.
KUBECTL_HINT="kubectl comes from Kubernetes' apt repository: https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/"

give_up() {  # $1: what was done; $2: what is still missing; $3: how to get it
  local hint=$3
  case " $2 " in *" kubectl "*) hint="$hint; $KUBECTL_HINT" ;; esac
  echo "system-deps: ${1}missing $2 ($hint); the tests that need it skip, or fail under CI=true" >&2
  if $ON_CI; then exit 1; fi
  exit 0
}

need=$(missing)
if [ -z "$need" ]; then
  echo "system-deps: all present ($PACKAGES)"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  give_up "" "$need" "install them with this system's package manager"
fi
if [ "$(id -u)" != 0 ]; then
  give_up "" "$need" "sudo apt-get install $need"
fi

log=$(mktemp -t system-deps.XXXXXX.log)
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >"$log" 2>&1 || give_up "apt-get update failed, see $log; " "$need" "apt-get install $need"
# One at a time: a package this machine's apt sources lack (kubectl, outside Kubernetes'
# repository) would fail the install of all the others.
for p in $need; do
  apt-get install -y -qq --no-install-recommends "$p" >>"$log" 2>&1 || true
done
still=$(missing)
installed=""
for p in $need; do case " $still " in *" $p "*) ;; *) installed="$installed $p" ;; esac; done
if [ -n "$still" ]; then
  give_up "installed${installed:- nothing}; apt could not install the rest, see $log; " "$still" "apt-get install $still"
fi
rm -f "$log"
echo "system-deps: installed${installed}"
