#!/usr/bin/env bash
# One step of a GPU session, meant to run in the background on the device machine (bench/README.md,
# "Time on the machine"): calls that only poll stay short while this keeps the GPU busy.
#
#   setsid nohup bash bench/h200_session.sh STEP [ARGS...] >> /root/res/session.log 2>&1 &
#
# Steps:
#   kernels   random-weight Qwen2.5-1.5B shape (no model files): float32 compiled-vs-eager check of the
#             graphs and the Triton kernel, then the per-kernel profile per bucket, compared with the
#             profile committed before this round's kernel and fusion changes
#   eval OUT METHODS [EXTRA...]
#             `specbench eval` on the staged models and questions, resumed if OUT exists
#   head OUT PROMPTS... [-- EXTRA...]
#             `specbench train-head` for the staged 1.5B on the prompt files given (carried in the tree
#             under the git-excluded .bd2/, e.g. .bd2/gsm8k-train.jsonl .bd2/new_codealpaca.json), rerun
#             to resume. Defaults sized for ~6 minutes on an H200 (docs/methods.md, "Training the head"):
#             1,000 prompts per file x 256 new tokens answered at batch 128, then 10 epochs; EXTRA
#             overrides them (train-head's last value wins), e.g. -- --max-prompts 500 --epochs 4
#   eval-head OUT METHODS HEAD [EXTRA...]
#             `eval` with --draft-head HEAD (eagle2, rasd/respec on the head, sam.fallback=eagle2)
set -u
RES=/root/res
mkdir -p "$RES"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export SPECBENCH_MODEL_QWEN2_5_CODER_1_5B=/root/m/q15/hf SPECBENCH_MODEL_QWEN2_5_CODER_0_5B=/root/m/q05/hf
BEFORE=bench/results/2026-12-02-h200-gpu-checks/profile-random-qwen1.5b-after-merge-fix.json
step=$1
shift
echo "== $(date +%T) $step $*"
run_eval() {
    local out=$1 methods=$2
    shift 2
    local resume=()
    [ -d "$out" ] && resume=(--resume)
    python3 -m specbench_cli eval --model qwen2.5-coder-1.5b --draft-model qwen2.5-coder-0.5b \
        --suite jsonl:/root/bd/spec-bench-48.jsonl,jsonl:/root/bd/humaneval-20.jsonl \
        --methods "$methods" --max-new-tokens 256 --draft-compile none --out "$out" "${resume[@]}" "$@"
}

case $step in
kernels)
    python3 bench/micro.py --out "$RES/micro.json" --shape qwen2.5-coder-1.5b \
        --variants tree:efficient:default,tree:efficient:default:nofuse --time-budget 200
    python3 bench/profile_forward.py --out "$RES/profile.json" --shape qwen2.5-coder-1.5b \
        --variants tree:efficient:default --sizes 1,16,32,64,129 --context 1000 --compare "$BEFORE"
    ;;
eval)
    run_eval "$@"
    ;;
eval-head)
    out=$1 methods=$2 head=$3
    shift 3
    run_eval "$out" "$methods" --draft-head "$head" "$@"
    ;;
head)
    out=$1
    shift
    prompts=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do
        prompts+=(--prompts "$1")
        shift
    done
    [ $# -gt 0 ] && shift # the "--"
    # Progress (generation tokens/s every 10 s, loss every 50 steps, validation per epoch) goes to the log.
    python3 -m specbench_cli train-head --model qwen2.5-coder-1.5b "${prompts[@]}" --out "$out" \
        --device cuda --max-prompts 1000 --max-new-tokens 256 --batch-size 128 --epochs 10 \
        --train-batch 8 "$@"
    ;;
*)
    echo "unknown step $step" >&2
    exit 2
    ;;
esac
echo "== $(date +%T) $step done ($?)"
