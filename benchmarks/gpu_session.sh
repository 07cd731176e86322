#!/usr/bin/env bash
# One lent GPU session's work for issues 9 and 10, inside a fixed time budget (the device tool lends 15 minutes).
#
#   1. the wide Fashion-MNIST teacher (fmnist-teacher-wide), alongside the fmnist-budget study's AT cells,
#      then its batch-512 cells, then its shipped-teacher AKD cells (three at a time);
#   2. as soon as the teacher has finished: the cells distilled from it;
#   3. at LIMIT - 150 s every study process still running is stopped (cells keep their last.pt and resume
#      later), and benchmarks/train_throughput.py times the CIFAR-shape students (akd-edge's step and a plain
#      eager loop of the same step) alone on the GPU;
#   4. the results JSON, the logs and the run directories (without per-epoch checkpoints) land in $OUT
#      (seven files: the device tool brings back eight at most).
#
# Every cell is evaluated as it finishes: PGD-20 and AutoAttack (standard) on the first 2,000 test images.
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
TEACHER=runs/teachers/fmnist-teacher-wide
RESULTS=benchmarks/results/fmnist-budget.json
N=2000
SETS=()
if [ "$SMOKE" = 1 ]; then
    RUNS=/tmp/gpu-smoke/studies TEACHER=runs/teachers/fmnist-teacher-wide RESULTS=/tmp/gpu-smoke/fmnist-budget.json N=100
    SETS=(--set train.epochs=1 --set data.train_subset=256 --set eval.val_samples=64)
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/session.log"
$PY -c "import torch, pyautoattack, torch_pruning, akd_edge; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    2>&1 | tee -a "$OUT/session.log"

study() {  # study LOGNAME ARGS...: one method_study invocation in its own process group
    local name=$1
    shift
    setsid $PY benchmarks/method_study.py run fmnist-budget --device "$DEV" --attacks pgd,aa-standard --n "$N" \
        --eval-batch 2000 --runs "$RUNS" --results "$RESULTS" "${SETS[@]}" "$@" >"$LOGS/$name.log" 2>&1 &
    echo $! >>"$LOGS/groups"  # setsid in a background job keeps its pid: the pid is the process group
    wait $!
}

if [ "$DEV" = cuda ]; then  # issue 11: NCCL under torchrun with one process (a few seconds of GPU)
    timeout 150 $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m akd_edge distill -r fmnist-quickstart \
        --device cuda --out /tmp/ddp-check --set train.epochs=1 --set data.train_subset=4096 >"$LOGS/ddp.log" 2>&1 &
fi
log "teacher and the AT cells start"
setsid $PY -m akd_edge train-teacher -r fmnist-teacher-wide --device "$DEV" --out "$TEACHER" "${SETS[@]}" \
    >"$LOGS/teacher.log" 2>&1 &
TEACHER_PID=$!
echo $TEACHER_PID >>"$LOGS/groups"
STOP="$LOGS/.stop"
rm -f "$STOP"
(  # three at a time beside the teacher, then beside the cells distilled from it
    study study-at --only at --jobs 3
    [ -e "$STOP" ] || study study-b512 --only akd-a09-t2-b512 --jobs 3
    [ -e "$STOP" ] || study study-akd --only akd-a09-t2 --jobs 3
) &
SHIPPED_PID=$!

WIDE_PID=
while [ "$(left)" -gt 150 ]; do
    if [ -z "$WIDE_PID" ] && ! kill -0 "$TEACHER_PID" 2>/dev/null; then
        wait "$TEACHER_PID"
        log "teacher finished (exit $?): cells from it start"
        study study-wide --only akd-wide-a09-t2,adaad-wide --jobs 6 &
        WIDE_PID=$!
    fi
    if [ -n "$WIDE_PID" ] && ! kill -0 "$WIDE_PID" 2>/dev/null && ! kill -0 "$SHIPPED_PID" 2>/dev/null; then
        break
    fi
    sleep 3
done
log "study phase over; stopping what still runs"
touch "$STOP"
stop_all() {  # SIGNAL: every process group this script started (study runners with their workers, teacher)
    local group
    for group in $(cat "$LOGS/groups" 2>/dev/null); do kill "-$1" -- "-$group" 2>/dev/null; done
}
stop_all TERM
sleep 5
stop_all KILL
sleep 1

log "throughput (GPU otherwise idle)"
TINY=()
[ "$SMOKE" = 1 ] && TINY=(--tiny)
budget() { local s=$(($(left) - $1)); echo $((s > 10 ? s : 10)); }
timeout "$(budget 60)" $PY benchmarks/train_throughput.py --suite cifar --device "$DEV" --plain --match student "${TINY[@]}" \
    >"$OUT/throughput.md" 2>&1
log "throughput (bf16) exit $?"
timeout "$(budget 15)" $PY benchmarks/train_throughput.py --suite cifar --device "$DEV" --plain --match student \
    --match "batch 512" --channels-last "${TINY[@]}" >"$OUT/throughput-cl.md" 2>&1
log "throughput (channels_last) exit $?"

cp "$RESULTS" "$OUT/" 2>/dev/null
tar czf "$OUT/runs.tgz" --exclude='*/epochs' "$RUNS/fmnist-budget" 2>>"$OUT/session.log"
KEEP=()
[ -f "$TEACHER/summary.json" ] && KEEP=(--exclude="$TEACHER/last.pt")  # finished: best.pt is the teacher
tar czf "$OUT/teacher.tgz" --exclude='*/epochs' "${KEEP[@]}" "$TEACHER" 2>>"$OUT/session.log"
tar czf "$OUT/logs.tgz" -C "$LOGS" . 2>>"$OUT/session.log"
ls -la "$OUT" >>"$OUT/session.log"
log "done"
