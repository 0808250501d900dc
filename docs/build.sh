#!/usr/bin/env bash
# Build the documentation site into docs/_build/html (open docs/_build/html/index.html).
# Warnings are errors (-W), all of them reported in one pass (--keep-going). Needs the docs extra:
#   pip install -e '.[docs]'
set -euo pipefail
cd "$(dirname "$0")"
export MPLBACKEND=Agg
# the gallery's examples (docs/examples/plot_*.py) run on the CPU with one thread each
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m sphinx -b html -W --keep-going -j 1 . _build/html "$@"
echo "built: $(pwd)/_build/html/index.html"
