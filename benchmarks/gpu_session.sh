#!/usr/bin/env bash
# One lent GPU session's work for issues 9 and 10, inside a fixed time budget (the device tool lends 15 minutes
# a session). The plan is the next session's; `git log -p benchmarks/gpu_session.sh` shows what earlier ones ran
# (2026-11-27, commit 9203ca0: the wide teacher, the fmnist-budget AT and wide-teacher cells, CIFAR throughput;
# commit 11e3254: fmnist-long, the width-2 students, AutoAttack standard on every cell, MobileNetV2 compile;
# commit 893448e: CUDA graphs at batch 128, the fmnist-budget levers' seed 0).
#
#   1. alone on the GPU, until PHASE_A s (issue 9's follow-up): `akd-edge distill` of the quickstart recipe with
#      CUDA graphs and without (same validation figures expected), then MobileNetV2 and ResNet-18 AKD at batch 512 with
#      torch.compile's CUDA graphs (train.compile_mode = "reduce-overhead"), beside the plain eager loop, to
#      decide whether the -b512 recipes should use them (compile default: 2,416 img/s for MobileNetV2);
#   2. then, under CUDA MPS, issue 10's levers: the shipped configuration at alpha 0.3 (`akd-a03-t2`, where the
#      wide teacher tied AT; the CPU's partial cells resume), seeds 1-2 of the teacher ensemble, a wide-teacher
#      run that keeps its per-epoch weights and then the checkpoint-ensemble cells, and the quickstart screen's
#      seeds 0-9 with AutoAttack standard on 2,000 images (the wide teacher is trained first where runs/ did
#      not survive);
#   3. at LIMIT - 25 s everything still running is stopped (cells keep last.pt and resume later);
#   4. results JSONs, logs and run directories (without per-epoch checkpoints) land in $OUT (at most 8 files).
#
# Prepare here (fills .gpu/, ignored by git: the data, the wheels' contents, and the run directories the
# evaluations need, without the resumable state of finished cells, so the carry stays under 64 MiB):
#     PREP=1 bash benchmarks/gpu_session.sh
# Run (device tool):  LIMIT=575 bash benchmarks/gpu_session.sh   carry [".gpu"], timeout 600 s.
# Afterwards here: copy $OUT/*.json to benchmarks/results/, `tar xzf runs.tgz`, `method_study.py report ...`.
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
    # (runs/ is not committed: where it did not survive, the session trains the wide teacher again first)
    for cells in runs/studies/fmnist-budget runs/studies/fmnist-screen/at runs/studies/fmnist-screen/akd-a09-t2; do
        [ -d "$cells" ] && tar cf - --exclude='*/epochs' "$cells" | tar xf - -C .gpu
    done
    for summary in .gpu/runs/studies/*/*/*/summary.json; do
        [ -f "$summary" ] && rm -f "$(dirname "$summary")/last.pt"
    done
    if [ -f runs/teachers/fmnist-teacher-wide/best.pt ]; then
        mkdir -p .gpu/runs/teachers/fmnist-teacher-wide
        cp -p runs/teachers/fmnist-teacher-wide/{best.pt,summary.json,recipe.toml,metrics.jsonl,.akd-edge.json} \
            .gpu/runs/teachers/fmnist-teacher-wide/
    fi
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
    SETS=(--set train.epochs=1 --set data.train_subset=256 --set eval.val_samples=64)
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/session.log"
$PY -c "import torch, pyautoattack, torch_pruning, akd_edge; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    2>&1 | tee -a "$OUT/session.log"

# 1. Issue 9's follow-up, alone on the GPU: each configuration in its own process (its compile included), beside the
# plain eager loop of the same step in the same process.
PHASE_A=${PHASE_A:-300}
# first, `akd-edge distill` itself with CUDA graphs (the benchmark above times the step, not the command):
# the quickstart recipe for 2 epochs compiled with reduce-overhead and eager, validation figures side by side
if [ "$PHASE_A" -gt 0 ]; then
    for mode in reduce-overhead eager; do
        graphs=()
        [ "$mode" = eager ] || graphs=(--set train.compile=true --set train.compile_mode="$mode")
        timeout $((PHASE_A - (SECONDS - T0))) $PY -m akd_edge distill -r fmnist-quickstart --device "$DEV" \
            --set train.epochs=2 "${SETS[@]}" "${graphs[@]}" --out "/tmp/graphs-$mode" >"$LOGS/distill-$mode.log" 2>&1
        log "distill ($mode) exit $?: $(grep -h -m1 -o 'val clean / robust (best).*' "$LOGS/distill-$mode.log")"
    done
fi
TINY=() BATCH="batch 512"
[ "$SMOKE" = 1 ] && TINY=(--tiny) BATCH="batch 4"  # --tiny: batch 4, one step
: >"$OUT/throughput.md"
for config in "mobilenetv2|--channels-last --compile-mode reduce-overhead" \
    "resnet18|--channels-last --compile-mode reduce-overhead"; do
    room=$((PHASE_A - (SECONDS - T0)))
    [ "$room" -gt 40 ] || break
    model=${config%%|*} options=${config#*|}
    log "throughput $model $options (GPU otherwise idle; at most $room s)"
    # shellcheck disable=SC2086  # options is a list of flags
    timeout "$room" $PY benchmarks/train_throughput.py --suite cifar --device "$DEV" --plain --batches 20 \
        --match "$model" --match "$BATCH" $options "${TINY[@]}" >>"$OUT/throughput.md" 2>>"$LOGS/throughput.log"
    log "throughput $model $options exit $?"
done

# 2. Issue 10's levers, sharing the GPU under CUDA MPS
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
wide_teacher() {  # wide_teacher DIR: train fmnist-teacher-wide into DIR (about 2 min), in its own process group
    setsid $PY -m akd_edge train-teacher -r fmnist-teacher-wide --device "$DEV" --out "$1" "${SETS[@]}" \
        >"$LOGS/teacher-$(basename "$1").log" 2>&1 &
    echo $! >>"$LOGS/groups"
    wait $!
    log "teacher $1 exit $?"
}

TEACHER=runs/teachers/fmnist-teacher-wide
TEACHER_EP=runs/teachers/fmnist-teacher-wide-ep
(
    if [ ! -f "$TEACHER/best.pt" ]; then  # runs/ did not survive: train the wide teacher again
        log "no $TEACHER/best.pt: training the wide teacher first"
        wide_teacher "$TEACHER"
    fi
    log "training starts"
    study fmnist-budget levers --only akd-a03-t2,akd-ens-a09-t2 --seeds 0,1,2 \
        --attacks pgd,aa-standard --n "$N" --jobs 6 --results "$RESULTS/fmnist-budget-aa.json"
) &
(  # the checkpoint ensemble needs a wide-teacher run that kept its per-epoch weights
    [ -f "$TEACHER_EP/epochs/epoch-015.pt" ] || [ "$SMOKE" = 1 ] || wide_teacher "$TEACHER_EP"
    [ "$SMOKE" = 1 ] || study fmnist-budget ckens --only akd-ckens-a09-t2 --attacks pgd,aa-standard \
        --n "$N" --jobs 3 --results "$RESULTS/fmnist-budget-aa.json"
) &
# the quickstart setting against AT: seeds 0-4 (trained on the CPU, carried) and 5-9, AutoAttack standard on 2,000
study fmnist-screen screen --only at,akd-a09-t2 --seeds 0,1,2,3,4,5,6,7,8,9 --attacks pgd,aa-standard --n "$N" \
    --jobs 4 --results "$RESULTS/fmnist-screen-aa.json" &
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

for f in fmnist-budget fmnist-budget-aa fmnist-screen-aa; do [ -e "$RESULTS/$f.json" ] && cp "$RESULTS/$f.json" "$OUT/"; done
tar czf "$OUT/runs.tgz" --exclude='*/epochs' "$RUNS" 2>>"$OUT/session.log"
tar czf "$OUT/logs.tgz" -C "$LOGS" . 2>>"$OUT/session.log"
ls -la "$OUT" >>"$OUT/session.log"
log "done"
