#!/usr/bin/env bash
# OpenNMT-py, the training benchmark's optional peer, beside torch 2.13.0: it pins torch<2.3, so it
# is installed without its dependencies, then the ones it needs to import its models and train them
# from Python (none of these asks for torch). Not needed to run it: ctranslate2, tensorboard, flask,
# waitress (its converters, logging and server).
set -euo pipefail
pip install --no-deps "OpenNMT-py==3.5.1"
pip install pyonmttok configargparse pyyaml six spacy rapidfuzz pyahocorasick fasttext-wheel regex sacrebleu
python -c "import torch, onmt.model_builder; print('OpenNMT-py', onmt.__version__, 'with torch', torch.__version__)"
