#!/usr/bin/env bash
# The study's runs, in the order its questions need them: the primary cell (lr 1e-5, BCE and CE,
# 10 seeds, seed-major), then the other learning rates. Resumable: run it again after an
# interruption and it skips completed runs and continues the rest (resume=true).
#   studies/bce_vs_ce/run.sh DATA [OUT]     e.g. studies/bce_vs_ce/run.sh ../shared/data/kermany224
set -euo pipefail
DATA=${1:?"name the Kermany-layout folder: studies/bce_vs_ce/run.sh DATA [OUT]"}
OUT=${2:-logs/bce_vs_ce}
PY=${PY:-python}
shift $(( $# > 1 ? 2 : 1 ))
for lrs in 1e-5 1e-4,1e-3; do
    "$PY" -m xray_loss.train -m experiment=bce_vs_ce "data.root=$DATA" "lr=$lrs" \
        "hydra.sweep.dir=$OUT/lr=$lrs" resume=true "$@"
done
