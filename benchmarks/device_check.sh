#!/usr/bin/env bash
# The one-call accelerator check (benchmarks/device_check.py), on a machine with JAX and NumPy but no
# TensorFlow and no Keras: installs the wheels carried in .whl/ (docs/backends.md, "Checking a GPU in one call")
# into /tmp/site, then runs the check under Keras on JAX. Arguments go to device_check.py.
# Usage, from the repository root: bash benchmarks/device_check.sh [--plan_json=...] [--max_seconds=300]
set -euo pipefail
cd "$(dirname "$0")/.."
site=""
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  site=/tmp/site
fi
export PYTHONPATH="${site:+$site:}$PWD/lib${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
exec python3 benchmarks/device_check.py "$@"
