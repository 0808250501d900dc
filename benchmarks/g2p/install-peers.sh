#!/usr/bin/env bash
# Installs the G2P peers that benchmarks/g2p/peers.py compares attnkit with, into the active venv
# (run it with the venv activated; running it twice does nothing the second time):
#
# - Phonetisaurus: `pip install phonetisaurus==0.3.0`, a wheel that bundles the binaries
#   (phonetisaurus-train, -align, -g2pfst, OpenFst, MITLM) under site-packages/phonetisaurus/bin;
#   peers.py puts them on PATH with phonetisaurus.guess_environment().
# - Sequitur G2P: built from its PyPI source distribution, because its wheel does not run here. Needs
#   a C++ compiler and SWIG (Debian: apt-get install -y swig). Two patches, applied in a temp dir:
#   1. NumPy 2 removed np.sometrue: sequitur.py's `num.sometrue(` becomes `num.any(`.
#   2. SWIG 4: the objects that EstimationGraphBuilder.create, EvidenceStore.makeSequenceModelEstimator
#      and Translator.nBestInit return can come back as bare SwigPyObjects, and sequitur.py's
#      `x.thisown = True` on them raises "AttributeError: 'SwigPyObject' object has no attribute
#      'thisown'" (in the first ramp-up step). Those lines are dropped and the three functions are
#      declared %newobject in sequitur.i, so that Python owns what they return (the fix upstream
#      made in sequitur-g2p pull requests #111 and #112, not yet in the PyPI release).
set -euo pipefail

SEQUITUR_VERSION=1.0.1668.30
PHONETISAURUS_VERSION=0.3.0

python -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' || { echo "activate the venv first" >&2; exit 1; }

if ! python -c "import importlib.metadata as m; assert m.version('phonetisaurus') == '$PHONETISAURUS_VERSION'" 2>/dev/null; then
    pip install "phonetisaurus==$PHONETISAURUS_VERSION"
fi

installed=$(python -c 'import sequitur; print(sequitur.__file__)' 2>/dev/null || true)
if [ -n "$installed" ] && ! grep -q 'sometrue\|thisown = True' "$installed"; then
    echo "sequitur-g2p (patched) already installed"
    exit 0
fi

command -v swig >/dev/null || { echo "sequitur-g2p needs SWIG: apt-get install -y swig" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# --no-binary for this one package only: with ":all:" pip would also build numpy from source to
# prepare the sdist's metadata, which fails.
pip download "sequitur-g2p==$SEQUITUR_VERSION" --no-binary sequitur-g2p --no-deps -d "$tmp"
tar -xzf "$tmp"/sequitur_g2p-*.tar.gz -C "$tmp"
src=$(echo "$tmp"/sequitur_g2p-*/)

sed -i 's/num\.sometrue(/num.any(/' "$src/sequitur.py"
sed -i '/^ *[a-z]*\.thisown = True$/d' "$src/sequitur.py"
python - "$src/sequitur.i" <<'EOF'
import sys

path = sys.argv[1]
text = open(path).read()
newobject = (
    "%newobject EstimationGraphBuilder::create;\n"
    "%newobject EvidenceStore::makeSequenceModelEstimator;\n"
    "%newobject Translator::nBestInit;\n"
)
anchor = "class EstimationGraph {"
assert anchor in text and "%newobject" not in text, "sequitur.i is not the one this script patches"
open(path, "w").write(text.replace(anchor, newobject + anchor, 1))
EOF
if grep -q 'sometrue\|thisown = True' "$src/sequitur.py"; then
    echo "patching sequitur.py failed" >&2
    exit 1
fi
# The sdist ships a sequitur_.py that an older SWIG generated; remove it so the build regenerates it.
rm -f "$src/sequitur_.py"
pip install "$src"
python -c 'import sequitur, Evaluation, SequiturTool; print("sequitur-g2p", sequitur.__file__)'
