#!/usr/bin/env bash
# One step of a GPU session, meant to run in the background on the device machine (bench/README.md,
# "Time on the machine"): calls that only poll stay short while this keeps the GPU busy.
#
#   setsid nohup bash bench/h200_session.sh STEP [ARGS...] >> /root/res/session.log 2>&1 &
#
# Steps:
#   sweep     the Triton tree-attention configurations per tree size (bench/attention_sweep.py)
#   kernels   random-weight Qwen2.5-1.5B shape (no model files): float32 compiled-vs-eager check of the
#             graphs and the Triton kernel, then the per-kernel profile per bucket, compared with the
#             profile committed before this round's kernel changes
#   store     the static SAM automaton over CodeAlpaca's answers (carried in .corpus/)
#   head OUT PROMPTS...
#             `specbench train-head` on the staged target, prompts from the carried files
#   eval OUT SUITES METHODS [EXTRA...]
#             `specbench eval` on the staged target and questions, resumed if OUT exists
set -u
RES=/root/res
mkdir -p "$RES"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export SPECBENCH_MODEL_QWEN2_5_CODER_1_5B=/root/m/q15/hf SPECBENCH_MODEL_QWEN2_5_CODER_0_5B=/root/m/q05/hf
BEFORE=bench/results/2026-12-02-h200-fast-path/profile-random-qwen1.5b-fused.json
step=$1
shift
echo "== $(date +%T) $step $*"
case $step in
sweep)
    python3 bench/attention_sweep.py --out "$RES/sweep.json" --shapes 2x6x128
    ;;
kernels)
    python3 bench/micro.py --out "$RES/micro.json" --shape qwen2.5-coder-1.5b \
        --variants tree:efficient:default --time-budget 120
    python3 bench/profile_forward.py --out "$RES/profile.json" --shape qwen2.5-coder-1.5b \
        --variants tree:efficient:default --sizes 1,16,32,48,64,80,96,129 --context 1000 --compare "$BEFORE"
    ;;
store)
    python3 -m specbench_cli build-index --method sam --model qwen2.5-coder-1.5b \
        --corpus .corpus/new_codealpaca.json --text-key output --out /root/stores/sam15 --force
    ;;
head)
    out=$1
    shift
    prompts=()
    for p in "$@"; do prompts+=(--prompts "$p"); done
    python3 -m specbench_cli train-head --model qwen2.5-coder-1.5b --device cuda --out "$out" \
        "${prompts[@]}" ${HEAD_ARGS:-}
    ;;
eval)
    out=$1 suites=$2 methods=$3
    shift 3
    resume=()
    [ -d "$out" ] && resume=(--resume)
    python3 -m specbench_cli eval --model qwen2.5-coder-1.5b --suite "$suites" --methods "$methods" \
        --max-new-tokens 256 --out "$out" "${resume[@]}" "$@"
    ;;
*)
    echo "unknown step $step" >&2
    exit 2
    ;;
esac
echo "== $(date +%T) $step done ($?)"
