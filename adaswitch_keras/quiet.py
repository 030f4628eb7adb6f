"""A quiet start: TensorFlow, which Keras and KerasHub import on every
backend, writes absl and CUDA-stub lines ("All log messages before
absl::InitializeLog() is called", "Could not find cuda drivers", and
"failed call to cuInit" when it first looks for devices) straight to file
descriptor 2, where `TF_CPP_MIN_LOG_LEVEL` does not reach.
`import adaswitch_keras` imports TensorFlow and lists its devices first,
with that descriptor pointed at /dev/null; `ADASWITCH_VERBOSE=1` keeps the
lines. Python's own warnings and errors are untouched: the descriptor is
restored before the import returns or raises.
"""

import contextlib
import os
import sys


@contextlib.contextmanager
def native_stderr_silenced():
    """File descriptor 2 on /dev/null inside the block (native libraries'
    direct writes), back on the terminal after it."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow_quietly():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's own logs, later on
    if "tensorflow" in sys.modules or os.environ.get("ADASWITCH_VERBOSE") == "1":
        return
    with native_stderr_silenced():
        import tensorflow

        tensorflow.config.list_physical_devices()  # "failed call to cuInit", once, now
