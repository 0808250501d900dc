#!/usr/bin/env bash
# The training and decoding benchmark at the G2P sizes, a few model kinds at a time (each group under
# the shared CPU lock, so that no other benchmark runs beside it, and each well under 10 minutes),
# then merged into results.md / .json.
#   bash benchmarks/train/run.sh                       # every kind, quiet and contended, with profiles
#   GROUPS_="luong-general,transformer" bash benchmarks/train/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
GROUPS_=${GROUPS_:-"none,bahdanau luong-dot,luong-general luong-concat,local-m local-p,hard transformer"}
LOCK=${LOCK:-/tmp/attnkit-cpu.lock}
PARTS=${PARTS:-$(mktemp -d)}
parts=()
for group in $GROUPS_; do
  args=()
  for kind in ${group//,/ }; do args+=(--kind "$kind"); done
  stem=${group//,/+}
  echo "== $group (load $(cut -d' ' -f1-3 /proc/loadavg))"
  flock "$LOCK" python -m attnkit.bench.train run "${args[@]}" --profile --out "$PARTS" --stem "$stem"
  parts+=("$PARTS/$stem.json")
done
python -m attnkit.bench.train merge "${parts[@]}" --out benchmarks/train --stem results
echo "results: benchmarks/train/results.md (parts in $PARTS)"
