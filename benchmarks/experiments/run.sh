#!/usr/bin/env bash
# The full run of each experiment (`attnkit experiment NAME`, no --quick), one after another, each
# into benchmarks/experiments/NAME/ (NAME.json, NAME.png, NAME.md: committed). Runs take from
# minutes (parallel) to hours (bottleneck) on the project's 2-core CPU: start it in the background.
# A stopped run continues when started again: each experiment's trainings resume from their
# checkpoints in NAME/NAME-work (removed once its results are written).
#
#   nohup bash benchmarks/experiments/run.sh [NAME ...] > runs/experiments.log 2>&1 &
#
# One thread per run (OMP_NUM_THREADS, default 1), so a second job can use the other core;
# parallel times training steps: run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
for name in "${@:-scaling parallel hardsoft parameters alignment bottleneck}"; do
    for one in $name; do
        echo "== $one: $(date -u +%FT%TZ)"
        attnkit experiment "$one" --out "benchmarks/experiments/$one"
    done
done
echo "== done: $(date -u +%FT%TZ)"
