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
"$PY" -m xray_loss.train -m experiment=bce_vs_ce "data.root=$DATA" lr=1e-5 \
    "hydra.sweep.dir=$OUT/primary" resume=true "$@"
"$PY" -m xray_loss.train -m experiment=bce_vs_ce "data.root=$DATA" lr=1e-4,1e-3 \
    "hydra.sweep.dir=$OUT/lr_grid" resume=true "$@"
