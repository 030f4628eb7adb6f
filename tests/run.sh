#!/usr/bin/env bash
# The test suite once per Keras backend; stops at the first failing backend.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -q -k rollout`.
set -euo pipefail
cd "$(dirname "$0")/.."
for backend in jax tensorflow torch; do
  echo "=== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend python -m pytest "$@"
done
