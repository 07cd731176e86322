#!/usr/bin/env bash
# One lent GPU session's work for issues 9 and 10, inside a fixed time budget (the device tool lends 15 minutes
# a session). The plan is the next session's; `git log -p benchmarks/gpu_session.sh` shows what earlier ones ran
# (2026-11-27, commit 9203ca0: the wide teacher, the fmnist-budget AT and wide-teacher cells, CIFAR throughput).
#
#   1. training, all at once: the fmnist-long cells (40 epochs, step schedule: robust overfitting) and the
#      fmnist-budget student-size cells (width 2: AT, AKD, then AdaAD), then its batch-512 and shipped-teacher cells;
#   2. beside them, one process evaluates finished fmnist-budget cells with AutoAttack (standard) on 2,000
#      test images, one cell at a time (evaluations in several processes sharing the GPU did not finish);
#   3. at LIMIT - 170 s everything still running is stopped (cells keep last.pt and resume later), and
#      train_throughput.py times MobileNetV2 with torch.compile alone on the GPU (issue 9);
#   4. results JSONs, logs and run directories (without per-epoch checkpoints) land in $OUT (at most 8 files).
#
# CUDA MPS is started when the driver has it, so the many small processes share the GPU instead of taking turns.
# Carry: .gpu (data and wheels' contents, see below), runs/studies/fmnist-budget, runs/teachers/fmnist-teacher-wide.
# Prepare here:  mkdir -p .gpu/data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz .gpu/data/fashion-mnist/
#                pip install --no-deps --target .gpu/site torch-pruning==1.6.1 tomli-w pyautoattack  (drop examples/)
# Smoke check on the CPU (tiny settings, seconds per cell):  SMOKE=1 DEV=cpu OUT=/tmp/gpu-smoke bash benchmarks/gpu_session.sh
set -u
T0=$SECONDS
LIMIT=${LIMIT:-560}
DEV=${DEV:-cuda}
SMOKE=${SMOKE:-0}
OUT=${OUT:-/tmp/gpu-session}
LOGS=${LOGS:-/tmp/gpu-session-logs}
mkdir -p "$OUT" "$LOGS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/.gpu/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d .gpu/data ] && export AKD_EDGE_DATA="$PWD/.gpu/data"
PY=${PY:-python3}

log() { echo "[$((SECONDS - T0)) s] $*" | tee -a "$OUT/session.log"; }
left() { echo $((LIMIT - (SECONDS - T0))); }

RUNS=runs/studies
RESULTS=benchmarks/results  # the committed results travel with the tree and come back with the new cells merged in
N=2000
SETS=()
if [ "$SMOKE" = 1 ]; then
    RUNS=/tmp/gpu-smoke/studies RESULTS=/tmp/gpu-smoke/results N=100
    SETS=(--set train.epochs=1 --set data.train_subset=256 --set eval.val_samples=64)
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/session.log"
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
$PY -c "import torch, pyautoattack, torch_pruning, akd_edge; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    2>&1 | tee -a "$OUT/session.log"

study() {  # study NAME LOGNAME ARGS...: one method_study invocation in its own process group
    local name=$1 logname=$2
    shift 2
    setsid $PY benchmarks/method_study.py run "$name" --device "$DEV" --n "$N" --eval-batch 2000 --runs "$RUNS" \
        --results "$RESULTS/$name.json" "${SETS[@]}" "$@" >>"$LOGS/$logname.log" 2>&1 &
    echo $! >>"$LOGS/groups"  # setsid in a background job keeps its pid: the pid is the process group
    wait $!
}
STOP="$LOGS/.stop"
rm -f "$STOP"

TEACHER=runs/teachers/fmnist-teacher-wide
if [ ! -f "$TEACHER/best.pt" ]; then  # runs/ is not committed: a fresh checkout trains it again (about 2 min)
    log "no $TEACHER/best.pt: training the wide teacher first"
    $PY -m akd_edge train-teacher -r fmnist-teacher-wide --device "$DEV" --out "$TEACHER" "${SETS[@]}" \
        >"$LOGS/teacher.log" 2>&1
    log "teacher exit $?"
fi
log "training starts"
study fmnist-long long --only at,akd-wide-a09-t2 --attacks pgd --jobs 6 &
(
    study fmnist-budget width --only at-w2,akd-wide-a09-t2-w2 --attacks pgd --jobs 6
    [ -e "$STOP" ] || study fmnist-budget width-adaad --only adaad-wide-w2 --attacks pgd --jobs 3
    [ -e "$STOP" ] || study fmnist-budget b512 --only akd-a09-t2-b512,akd-a09-t2 --attacks pgd --jobs 6
) &
(  # AutoAttack standard, one cell at a time, for every finished fmnist-budget cell, until the deadline
    while [ ! -e "$STOP" ]; do
        study fmnist-budget aa --eval-only --attacks pgd,aa-standard --jobs 1 \
            --results "$RESULTS/fmnist-budget-aa.json"
        sleep 20
    done
) &
while [ "$(left)" -gt 170 ]; do
    sleep 5
done
log "deadline: stopping what still runs"
touch "$STOP"
stop_all() {  # SIGNAL: every process group this script started
    local group
    for group in $(cat "$LOGS/groups" 2>/dev/null); do kill "-$1" -- "-$group" 2>/dev/null; done
}
stop_all TERM
sleep 5
stop_all KILL
[ "$DEV" = cuda ] && command -v nvidia-cuda-mps-control >/dev/null && echo quit | nvidia-cuda-mps-control
unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY

# Issue 9: MobileNetV2 is launch-bound (2,329 img/s at batch 512 on an H200): does torch.compile (on in the -b512
# recipes) lift it past 2,400?
log "throughput with torch.compile (GPU otherwise idle)"
TINY=()
[ "$SMOKE" = 1 ] && TINY=(--tiny)
timeout "$(( $(left) > 40 ? $(left) - 25 : 15 ))" $PY benchmarks/train_throughput.py --suite cifar --device "$DEV" --plain \
    --match mobilenetv2 --match "batch 512" --channels-last --compile "${TINY[@]}" >"$OUT/throughput-compile.md" 2>&1
log "throughput (compile) exit $?"

for f in fmnist-long fmnist-budget fmnist-budget-aa; do [ -e "$RESULTS/$f.json" ] && cp "$RESULTS/$f.json" "$OUT/"; done
tar czf "$OUT/runs.tgz" --exclude='*/epochs' "$RUNS" 2>>"$OUT/session.log"
tar czf "$OUT/logs.tgz" -C "$LOGS" . 2>>"$OUT/session.log"
ls -la "$OUT" >>"$OUT/session.log"
log "done"
