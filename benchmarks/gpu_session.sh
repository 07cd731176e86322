#!/usr/bin/env bash
# One lent GPU session's work, inside a fixed time budget (the device tool lends 15 minutes a session). The plan
# is the next session's; `git log -p benchmarks/gpu_session.sh` shows what earlier ones ran (2026-11-27, commits
# 9203ca0, 11e3254 and 893448e: issues 9 and 10, the fmnist-budget, fmnist-long and fmnist-screen cells).
#
# This plan: issue 22's fmnist-fewlabel grid, every cell trained and evaluated with AutoAttack standard on 2,000
# test images, the processes sharing the GPU under CUDA MPS:
#   1. the teachers trained on the 2,000 labels only (fmnist-fewlabel-teachers, seeds 0-2), then the cells that
#      need them (akd-rest-own, seeds 0-2);
#   2. beside them, the AKD cells on the shipped teacher (akd-2k, akd-rest: seeds 0-2) and the label sweep
#      (at-1k, rst-rest-1k, at-5k, rst-rest-5k, akd-all: seed 0);
#   each group trains with the PGD-20 screen into fmnist-fewlabel.json (--retrain: cells whose run directory did
#   not survive are trained again), then AutoAttack standard into fmnist-fewlabel-aa.json;
#   3. at LIMIT - 25 s everything still running is stopped (cells keep last.pt and resume later);
#   4. results JSONs, logs and run directories (without per-epoch checkpoints) land in $OUT (at most 8 files).
#
# Prepare here (fills .gpu/, ignored by git: the data, the wheels' contents, and the run directories that exist,
# without the resumable state of finished cells, so the carry stays under 64 MiB):
#     PREP=1 bash benchmarks/gpu_session.sh
# Run (device tool):  LIMIT=575 bash benchmarks/gpu_session.sh   carry [".gpu"], timeout 600 s.
# Afterwards here: copy $OUT/*.json to benchmarks/results/, `tar xzf runs.tgz`, `python benchmarks/readme_numbers.py`.
# Smoke check on the CPU (tiny settings, seconds per cell):
#     mkdir -p /tmp/gpu-smoke/results && SMOKE=1 DEV=cpu LIMIT=300 OUT=/tmp/gpu-smoke-out bash benchmarks/gpu_session.sh
set -u
T0=$SECONDS
LIMIT=${LIMIT:-560}
DEV=${DEV:-cuda}
SMOKE=${SMOKE:-0}
OUT=${OUT:-/tmp/gpu-session}
LOGS=${LOGS:-/tmp/gpu-session-logs}
PY=${PY:-python3}

if [ "${PREP:-0}" = 1 ]; then  # here, before the call: what travels in .gpu
    set -e
    mkdir -p .gpu/data/fashion-mnist
    cp -u "${FMNIST:-/usr/share/datasets/fashion-mnist}"/*.gz .gpu/data/fashion-mnist/
    [ -d .gpu/site/pyautoattack ] || pip install -q --no-deps --target .gpu/site torch-pruning==1.6.1 tomli-w pyautoattack
    rm -rf .gpu/site/examples .gpu/runs
    mkdir -p .gpu/runs/studies
    # finished cells travel without last.pt (optimiser state for resuming); unfinished ones keep it
    # (runs/ is not committed: cells whose run directory did not survive are trained again, --retrain)
    for cells in runs/studies/fmnist-fewlabel runs/studies/fmnist-fewlabel-teachers; do
        [ -d "$cells" ] && tar cf - --exclude='*/epochs' "$cells" | tar xf - -C .gpu
    done
    for summary in .gpu/runs/studies/*/*/*/summary.json; do
        [ -f "$summary" ] && rm -f "$(dirname "$summary")/last.pt"
    done
    du -sh .gpu
    exit 0
fi

mkdir -p "$OUT" "$LOGS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/.gpu/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d .gpu/data ] && export AKD_EDGE_DATA="$PWD/.gpu/data"
[ -d .gpu/runs ] && mkdir -p runs && cp -an .gpu/runs/. runs/  # never over a run here

log() { echo "[$((SECONDS - T0)) s] $*" | tee -a "$OUT/session.log"; }
left() { echo $((LIMIT - (SECONDS - T0))); }

RUNS=runs/studies
RESULTS=benchmarks/results  # the committed results travel with the tree and come back with the new cells merged in
N=2000
SETS=()
if [ "$SMOKE" = 1 ]; then
    RUNS=/tmp/gpu-smoke/studies RESULTS=/tmp/gpu-smoke/results N=100
    SETS=(--set train.epochs=1 --set data.train_subset=256 --set data.labeled=128 --set eval.val_samples=64)
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/session.log"
$PY -c "import torch, pyautoattack, torch_pruning, akd_edge; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    2>&1 | tee -a "$OUT/session.log"

# The cells share the GPU under CUDA MPS
if [ "$DEV" = cuda ] && command -v nvidia-cuda-mps-control >/dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    if nvidia-cuda-mps-control -d && $PY -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
        log "CUDA MPS started"
    else
        echo quit | nvidia-cuda-mps-control 2>/dev/null
        unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
        log "CUDA MPS did not work: without it"
    fi
else
    log "no CUDA MPS"
fi

study() {  # study NAME LOGNAME ARGS...: one method_study invocation in its own process group
    local name=$1 logname=$2
    shift 2
    setsid $PY benchmarks/method_study.py run "$name" --device "$DEV" --eval-batch 2000 --runs "$RUNS" \
        "${SETS[@]}" "$@" >>"$LOGS/$logname.log" 2>&1 &
    echo $! >>"$LOGS/groups"  # setsid in a background job keeps its pid: the pid is the process group
    wait $!
}
grid() {  # grid LOGNAME STUDY-ARGS...: train with the PGD-20 screen, then AutoAttack standard on $N test images
    local logname=$1
    shift
    study fmnist-fewlabel "$logname" --retrain "$@" --results "$RESULTS/fmnist-fewlabel.json"
    log "$logname: training and screen exit $?"
    study fmnist-fewlabel "$logname" --eval-only "$@" --attacks pgd,aa-standard --n "$N" \
        --results "$RESULTS/fmnist-fewlabel-aa.json"
    log "$logname: AutoAttack exit $? (143 or 137: stopped at the deadline)"
}

(  # the teachers on the 2,000 labels, then the cells distilled from them
    study fmnist-fewlabel-teachers teachers --retrain --seeds 0,1,2 --jobs 3 \
        --results "$RESULTS/fmnist-fewlabel-teachers.json"
    log "teachers exit $?"
    # the spec names the teachers' folder under runs/studies: the smoke check (other --runs) stops here
    [ "$SMOKE" = 1 ] || grid own --only akd-rest-own --seeds 0,1,2 --jobs 3
) &
grid shipped --only akd-2k,akd-rest --seeds 0,1,2 --jobs 6 &
grid sweep --only at-1k,rst-rest-1k,at-5k,rst-rest-5k,akd-all --seeds 0 --jobs 5 &
while [ "$(left)" -gt 25 ] && [ -n "$(jobs -r)" ]; do
    sleep 2
done
log "deadline or done: stopping what still runs"
stop_all() {  # SIGNAL: every process group this script started
    local group
    for group in $(cat "$LOGS/groups" 2>/dev/null); do kill "-$1" -- "-$group" 2>/dev/null; done
}
stop_all TERM
sleep 4
stop_all KILL
[ -n "${CUDA_MPS_PIPE_DIRECTORY:-}" ] && echo quit | nvidia-cuda-mps-control
unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY

for f in fmnist-fewlabel fmnist-fewlabel-aa fmnist-fewlabel-teachers; do [ -e "$RESULTS/$f.json" ] && cp "$RESULTS/$f.json" "$OUT/"; done
tar czf "$OUT/runs.tgz" --exclude='*/epochs' "$RUNS" 2>>"$OUT/session.log"
tar czf "$OUT/logs.tgz" -C "$LOGS" . 2>>"$OUT/session.log"
ls -la "$OUT" >>"$OUT/session.log"
log "done"
