"""Plant each rule's boundary mutants in turn and run the rules' own unit tests
on every backend: each mutant must fail a test on each backend.

    python scripts/boundary_mutants.py --output docs/results/boundary_mutants.json

A mutant is one text substitution in `adaswitch_keras/strategies.py` (a
strict/non-strict swap, or an off-by-one in a window, a position or a rank),
applied to a copy of the package in a temporary folder that goes first on
PYTHONPATH; the rest of the code is the checkout's. mutmut
(scripts/mutation.sh) mutates everything on one backend; this checks the
edges the rules are read for on all three.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from provenance import git_commit  # noqa: E402

# (name, text in strategies.py, its replacement): each text occurs exactly once.
MUTANTS = [
    (
        "AdaSwitch: >= K x mean (non-strict)",
        "spike = values > self.k",
        "spike = values >= self.k",
    ),
    (
        "AdaSwitch: first eligible i = L + 1",
        "eligible = response_positions(mask) >= self.window",
        "eligible = response_positions(mask) > self.window",
    ),
    (
        "AdaSwitch: first eligible i = L - 1",
        "eligible = response_positions(mask) >= self.window",
        "eligible = response_positions(mask) >= self.window - 1",
    ),
    (
        "AdaSwitch: window of L - 1 past values",
        "range(1, min(self.window, length) + 1)",
        "range(1, min(self.window, length))",
    ),
    (
        "AdaSwitch: window holds d_i itself",
        "range(1, min(self.window, length) + 1)",
        "range(0, min(self.window, length))",
    ),
    (
        "Switch: >= tau(t) (non-strict)",
        "above = ops.greater(scores,",
        "above = ops.greater_equal(scores,",
    ),
    (
        "Switch: t counted from 1",
        "self.threshold(response_positions(mask))",
        "self.threshold(response_positions(mask) + 1)",
    ),
    (
        "SKD: ties count against the proposal",
        "teacher_logits > proposal_logit",
        "teacher_logits >= proposal_logit",
    ),
    (
        "SKD: the teacher writes from rank top_k + 1",
        "ops.greater_equal(scores, self.top_k)",
        "ops.greater(scores, self.top_k)",
    ),
    (
        "FixedSwitch: the teacher writes from p + 1",
        "ops.greater_equal(response_positions(mask), self.position)",
        "ops.greater(response_positions(mask), self.position)",
    ),
]
TESTS = "tests/test_strategies.py"


def run_tests(package_parent, backend):
    """pytest on the rules' tests, run from `package_parent` so that its
    (mutated) package is the one imported: (passed, the first failing test)."""
    env = {**os.environ, "KERAS_BACKEND": backend}
    tests = os.path.join(ROOT, TESTS)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", tests]
        + ["-k", "not docstring"],  # the rules' own tests: no model to build
        cwd=package_parent,  # `python -m` puts the working directory first on sys.path
        env=env,
        capture_output=True,
        text=True,
    )
    failed = re.search(r"^FAILED (\S+?)::(\S+)", done.stdout, re.MULTILINE)
    if not failed:
        return done.returncode == 0, None
    where = os.path.relpath(os.path.join(package_parent, failed.group(1)), ROOT)
    return False, f"{where}::{failed.group(2)}"  # relative to the checkout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    source = os.path.join(ROOT, "adaswitch_keras", "strategies.py")
    with open(source) as f:
        original = f.read()
    results = {"commit": git_commit(), "tests": TESTS, "mutants": []}
    with tempfile.TemporaryDirectory() as folder:
        shutil.copytree(
            os.path.join(ROOT, "adaswitch_keras"), os.path.join(folder, "adaswitch_keras")
        )
        where = subprocess.run(
            [sys.executable, "-c", "import adaswitch_keras; print(adaswitch_keras.__file__)"],
            cwd=folder,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if not where.startswith(folder):
            sys.exit(f"The copy is not the package imported ({where}).")
        for backend in args.backends:  # the unmutated code passes first
            passed, failed = run_tests(folder, backend)
            if not passed:
                sys.exit(f"The rules' tests fail unmutated on {backend}: {failed}")
        for name, text, replacement in MUTANTS:
            if original.count(text) != 1:
                sys.exit(f"{name}: {text!r} occurs {original.count(text)} times, not once")
            with open(os.path.join(folder, "adaswitch_keras", "strategies.py"), "w") as f:
                f.write(original.replace(text, replacement))
            killed_by = {}
            for backend in args.backends:
                passed, failed = run_tests(folder, backend)
                killed_by[backend] = None if passed else failed
                print(f"{name:<48} {backend:<10} {'SURVIVED' if passed else failed}", flush=True)
            results["mutants"].append(
                {"name": name, "text": text, "replacement": replacement, "killed_by": killed_by}
            )
    with open(args.output, "w") as f:
        json.dump(results, f, indent=1)
    survivors = [m["name"] for m in results["mutants"] if None in m["killed_by"].values()]
    print(f"{len(MUTANTS) - len(survivors)} of {len(MUTANTS)} killed on every backend")
    sys.exit(1 if survivors else 0)


if __name__ == "__main__":
    main()
