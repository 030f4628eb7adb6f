"""The git commit a results file was written at, for benchmarks and scripts."""

import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit():
    """HEAD's short hash, with "-dirty" when tracked files have uncommitted
    changes (untracked files, such as the results being written, do not
    count)."""

    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO).stdout

    commit = git("rev-parse", "--short", "HEAD").strip()
    return commit + (
        "-dirty" if git("status", "--porcelain", "--untracked-files=no").strip() else ""
    )


def environment():
    """The backend, library versions and machine a results file was made on."""
    import platform

    import keras
    import keras_hub
    import numpy as np

    return {
        "backend": keras.backend.backend(),
        "versions": {
            "keras": keras.__version__,
            "keras_hub": keras_hub.__version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
