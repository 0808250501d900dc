#!/usr/bin/env bash
# The training and decoding benchmark at the G2P sizes, one model kind at a time (each under the
# shared CPU lock, so that no other benchmark runs beside it), then merged into results.md / .json.
#   bash benchmarks/train/run.sh                 # every kind, quiet and contended, with profiles
#   KINDS="luong-general transformer" bash benchmarks/train/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
KINDS=${KINDS:-"none bahdanau luong-dot luong-general luong-concat local-m local-p hard transformer"}
LOCK=${LOCK:-/tmp/attnkit-cpu.lock}
PARTS=${PARTS:-$(mktemp -d)}
for kind in $KINDS; do
  echo "== $kind ($(cut -d' ' -f1-3 /proc/loadavg))"
  flock "$LOCK" python -m attnkit.bench.train run --kind "$kind" --profile --out "$PARTS" --stem "$kind"
done
python -m attnkit.bench.train merge $(for k in $KINDS; do echo "$PARTS/$k.json"; done) --out benchmarks/train --stem results
echo "results: benchmarks/train/results.md (parts in $PARTS)"
