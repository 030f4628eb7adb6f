#!/usr/bin/env bash
# The test suite once per Keras backend, the three runs at once (each its own
# process and temporary folder: on a 2-core machine a compiling JAX run leaves
# room for the others). Each run's log is printed whole when all have ended,
# then the three summary lines; the exit code is non-zero if any run failed.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -q -k rollout`; for one
# backend, run `KERAS_BACKEND=jax python -m pytest` yourself.
set -uo pipefail
cd "$(dirname "$0")/.."
logs=$(mktemp -d)
backends=(jax tensorflow torch)
pids=()
for backend in "${backends[@]}"; do
  cache=()  # a JAX compilation cache (CI sets one) only for the JAX run: JAX
  # processes that the other runs' tests start would write it at the same time
  [[ $backend == jax ]] || cache=(-u JAX_COMPILATION_CACHE_DIR)
  env "${cache[@]}" KERAS_BACKEND=$backend python -m pytest --basetemp="$logs/$backend" "$@" \
    > "$logs/$backend.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!backends[@]}"; do
  wait "${pids[$i]}" || status=1
done
for backend in "${backends[@]}"; do
  echo "=== KERAS_BACKEND=$backend"
  cat "$logs/$backend.log"
done
echo "=== summary"
for backend in "${backends[@]}"; do
  echo "$backend: $(tail -n 1 "$logs/$backend.log")"
done
exit $status
