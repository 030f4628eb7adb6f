#!/usr/bin/env bash
# Build the documentation site into site/ with warnings as errors.
#
# MkDocs only reads pages under docs/, so the tutorials (jupytext
# percent-format scripts in tutorials/) are first copied to docs/tutorials/,
# a generated, git-ignored folder; mkdocs-jupyter renders them unexecuted.
# Extra arguments go to `mkdocs build`, e.g. `bash docs/build.sh --site-dir /tmp/site`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p docs/tutorials
rm -f docs/tutorials/*.py
cp tutorials/[0-9][0-9]_*.py docs/tutorials/
# MathJax 2 from the jupyter-server-mathjax package (docs extra), so that the
# equations render without a network (docs/javascripts/mathjax.js loads it).
rm -rf docs/javascripts/mathjax
cp -r "$(python -c 'import jupyter_server_mathjax, os; print(os.path.dirname(jupyter_server_mathjax.__file__))')/static" docs/javascripts/mathjax
export NO_MKDOCS_2_WARNING=1  # Material's end-of-life banner, not a build problem
mkdocs build --strict "$@"
