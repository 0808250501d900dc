#!/usr/bin/env bash
# The training and decoding benchmark at the G2P sizes, a few model kinds at a time (each group under
# the shared CPU lock, so that no other benchmark runs beside it, and each well under 10 minutes),
# then merged into results.md / .json.
#   bash benchmarks/train/run.sh                       # every kind, quiet and contended, with profiles
#   GROUPS_="luong-general,transformer@quiet" bash benchmarks/train/run.sh   # KINDS[@MODE] per group
# The Transformer runs in two pieces, and its plain nn.Transformer (no key/value cache: 9 words/s with
# beam 5, quiet) is not timed decoding under contention, to keep each piece under 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
GROUPS_=${GROUPS_:-"none,bahdanau luong-dot,luong-general,luong-general-nofeed luong-concat,local-m local-p,hard transformer@quiet transformer@contended"}
LOCK=${LOCK:-/tmp/attnkit-cpu.lock}
PARTS=${PARTS:-$(mktemp -d)}
parts=()
for group in $GROUPS_; do
  kinds=${group%@*} mode="" args=()
  [[ $group == *@* ]] && mode=${group#*@}
  [[ $kinds == *transformer* ]] && args+=(--contended-no-decode plain)
  for kind in ${kinds//,/ }; do args+=(--kind "$kind"); done
  case $group in
    *@contended) args+=(--mode contended --no-memory) ;;
    *@quiet) args+=(--mode quiet --profile) ;;
    *) args+=(--profile) ;;
  esac
  stem=${kinds//,/+}${mode:+-$mode}
  echo "== $group (load $(cut -d' ' -f1-3 /proc/loadavg))"
  flock "$LOCK" python -m attnkit.cli.train_bench run "${args[@]}" --out "$PARTS" --stem "$stem"
  parts+=("$PARTS/$stem.json")
done
python -m attnkit.cli.train_bench merge "${parts[@]}" --out benchmarks/train --stem results
echo "results: benchmarks/train/results.md (parts in $PARTS)"
