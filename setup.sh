#!/usr/bin/env bash
# Installs frobnolab and everything it needs into ./.venv on a fresh Debian/Ubuntu machine:
#   the OSMesa library (headless OpenGL on a CPU), the CPU build of torch, then the project itself (with JupyterLab,
#   for the gallery notebook).
# Usage: bash setup.sh          (the lab; add Ray with: .venv/bin/pip install -e ".[ray]")
#        bash setup.sh --dev    (the lab, Ray and the test tools)
set -euo pipefail
cd "$(dirname "$0")"

extras=""
[ "${1:-}" = "--dev" ] && extras="[dev,ray]"  # the tests run Ray too

if ! ldconfig -p 2>/dev/null | grep -q libOSMesa; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing libosmesa6 (apt)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libosmesa6 libgl1 >/dev/null
fi

if [ -n "$extras" ] && [ ! -x /usr/bin/chromium ]; then
  # the gallery's browser tests drive Debian's Chromium (Playwright is told where it is; it downloads nothing)
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing chromium (apt, for the gallery tests)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
# torch first, pinned, so that pip takes the CPU build on this machine instead of pulling a CUDA one.
.venv/bin/python -c "import torch" 2>/dev/null || pip install torch==2.13.0
pip install -e ".${extras}"
.venv/bin/python -c "import frobnolab.scenes.render" >/dev/null
echo "setup: ok ($(.venv/bin/python --version), frobnolab in .venv)"
