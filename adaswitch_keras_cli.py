"""Entry point of the `adaswitch-keras` command.

It lives outside the `adaswitch_keras` package on purpose: importing the
package imports Keras, and `--backend` must set KERAS_BACKEND before that.
"""

import os
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    for index, arg in enumerate(argv):
        if arg.startswith("--backend="):
            os.environ["KERAS_BACKEND"] = arg.split("=", 1)[1]
        elif arg == "--backend" and index + 1 < len(argv):
            os.environ["KERAS_BACKEND"] = argv[index + 1]
    from adaswitch_keras import cli  # quietly: see adaswitch_keras/quiet.py

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
