#!/usr/bin/env bash
# The test suite once per Keras backend; stops at the first failing backend.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -q -k rollout`.
# Ends with one line that adds up the three runs: "total: N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "$0")/.."
reports=$(mktemp -d)
for backend in jax tensorflow torch; do
  echo "=== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend python -m pytest --junitxml="$reports/$backend.xml" "$@"
done
python - "$reports" <<'PY'
import pathlib, sys, xml.etree.ElementTree as ET
totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for report in pathlib.Path(sys.argv[1]).glob("*.xml"):
    for suite in ET.parse(report).getroot().iter("testsuite"):
        for key in totals:
            totals[key] += int(suite.get(key, 0))
failed = totals["failures"] + totals["errors"]
passed = totals["tests"] - failed - totals["skipped"]
print(f"total: {passed} passed, {failed} failed, {totals['skipped']} skipped")
PY
