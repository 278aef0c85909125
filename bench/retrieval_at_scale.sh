#!/usr/bin/env bash
# The retrieval comparison at size (issue 13, item 4), as product commands only: pld, rest, dresd and
# sam on stores built from one aligned corpus (the target's own answers to GSM8K's training questions
# and CodeAlpaca's instructions, >= 10k prompts), on the DReSD paper's protocol and on Spec-Bench's
# math_reasoning, plus rest on a large code corpus for HumanEval. bench/README.md has the recipe.
#
#   bash bench/retrieval_at_scale.sh STEP...        (all = every step in order)
#
# Steps (each skips what an earlier run finished: stores that exist, evals resumed):
#   corpus               the aligned generate: corpus (answers cached under $OUT/stores/generated),
#                        made by the SAM store's build; prints the generated tokens/s
#   stores               rest and dresd from that same corpus (the answers are reused, not regenerated)
#   code-store           rest over the Python files of $CODE_CORPUS (--glob '**/*.py'); CPU only, so it
#                        may run beside the GPU's corpus step
#   eval-dresd-protocol  CodeAlpaca's seeded subset + MT-Bench turn 1, "Question: ...\nAnswer:\n"
#                        prompt, $NEW_TOKENS new tokens, greedy: ar, pld, rest, dresd, sam
#   eval-math            Spec-Bench math_reasoning with the same (GSM8K-aligned) stores
#   eval-humaneval-code  HumanEval: ar, pld and rest on the code corpus
#
# Settings (environment): the defaults are the GPU run; the CPU toy run of bench/README.md shrinks them.
set -eu
PY=${PYTHON:-python3}
MODEL=${MODEL:-qwen2.5-coder-1.5b}
DEVICE=${DEVICE:-auto}
OUT=${OUT:-results/retrieval-at-scale}
DATA=${DATA:-${SPECBENCH_DATA:-../shared/data}}
GSM8K=${GSM8K:-$DATA/gsm8k/train.jsonl}                        # 7,473 prompts ("question")
CODEALPACA=${CODEALPACA:-$DATA/code_alpaca/new_codealpaca.json} # 4,535 prompts (instruction + input)
MAX_DOCS=${MAX_DOCS:-}                # prompts per source; empty = all (12,008)
BATCH=${BATCH:-}                      # prompts generated at once; empty = 256 on a GPU, 64 on a CPU
NEW_TOKENS=${NEW_TOKENS:-128}         # corpus answers and eval answers (DReSD: 128)
PROMPT_FORMAT=${PROMPT_FORMAT:-plain} # corpus and the two retrieval evals: DReSD's Question/Answer
QUESTIONS=${QUESTIONS:-100}           # CodeAlpaca's seeded subset (MT-Bench has 80: all of them)
MATH_QUESTIONS=${MATH_QUESTIONS:-}    # empty = all 80 math_reasoning questions
HUMANEVAL_QUESTIONS=${HUMANEVAL_QUESTIONS:-}  # empty = all 164
SEED=${SEED:-0}                       # picks CodeAlpaca's subset
CODE_CORPUS=${CODE_CORPUS:-$($PY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')}
CODE_MAX_DOCS=${CODE_MAX_DOCS:-}      # .py files of the code corpus; empty = all
DRESD_OPTS=${DRESD_OPTS:-}            # e.g. "--opt dim=64"
EVAL_ARGS=${EVAL_ARGS:-}              # e.g. "--engine compiled --repeats 3"

STORES=$OUT/stores
RUNS=$OUT/runs
ALIGNED="generate:$GSM8K,$CODEALPACA"
METHODS=ar,pld,rest,dresd,sam
mkdir -p "$STORES" "$RUNS"
limit() { [ -n "$1" ] && echo "$2 $1"; true; }

specbench() { $PY -m specbench_cli "$@"; }

aligned_store() { # KIND [EXTRA...]: a store from the aligned corpus, unless it is there already
    local kind=$1
    shift
    [ -f "$STORES/$kind/manifest.json" ] && { echo "$STORES/$kind: built already"; return; }
    # shellcheck disable=SC2046
    specbench build-index --method "$kind" --model "$MODEL" --device "$DEVICE" --corpus "$ALIGNED" \
        --prompt-format "$PROMPT_FORMAT" $(limit "$BATCH" --batch-size) --max-new-tokens "$NEW_TOKENS" \
        $(limit "$MAX_DOCS" --max-docs) --out "$STORES/$kind" "$@"
}

generated_tokens() { # every answer token in the corpus cache (a resumed corpus step counts only new ones)
    $PY - "$STORES/generated" <<'EOF'
import json, pathlib, sys
folder = pathlib.Path(sys.argv[1])
print(sum(json.loads(line)["new_tokens"] for f in folder.glob("*.jsonl") for line in f.open() if line.strip()))
EOF
}

run_eval() { # NAME [EVAL ARGS...]: `specbench eval` into $RUNS/NAME, resumed if it exists
    local out=$RUNS/$1
    shift
    local resume=()
    [ -d "$out" ] && resume=(--resume)
    # shellcheck disable=SC2086
    specbench eval --model "$MODEL" --device "$DEVICE" --temperature 0 --max-new-tokens "$NEW_TOKENS" \
        --out "$out" "${resume[@]}" "$@" $EVAL_ARGS
}

step() {
    echo "== $(date +%T) $1"
    case $1 in
    corpus)
        before=$(generated_tokens 2>/dev/null || echo 0)
        t0=$(date +%s.%N)
        aligned_store sam
        t1=$(date +%s.%N)
        after=$(generated_tokens)
        $PY -c "n=$after-$before; s=$t1-$t0; print(f'corpus: {n:,} answer tokens generated in {s:.1f} s: {n/max(s,1e-9):,.0f} tokens/s (model load and the SAM build included)')"
        ;;
    stores)
        aligned_store rest
        # shellcheck disable=SC2086
        aligned_store dresd $DRESD_OPTS
        ;;
    code-store)
        if [ -f "$STORES/code-rest/manifest.json" ]; then
            echo "$STORES/code-rest: built already"
        else
            # shellcheck disable=SC2046
            specbench build-index --method rest --model "$MODEL" --corpus "$CODE_CORPUS" --glob '**/*.py' \
                $(limit "$CODE_MAX_DOCS" --max-docs) --out "$STORES/code-rest"
        fi
        ;;
    eval-dresd-protocol)
        # --limit takes CodeAlpaca's first $QUESTIONS after the seeded shuffle, and MT-Bench's 80 (or
        # fewer, spread over its categories); --max-turns 1: MT-Bench's first turn only.
        run_eval dresd-protocol --suite code-alpaca,mt-bench --limit "$QUESTIONS" --seed "$SEED" \
            --max-turns 1 --prompt-format "$PROMPT_FORMAT" --methods "$METHODS" \
            --datastore "$STORES/rest" --datastore "$STORES/dresd" --datastore "$STORES/sam"
        ;;
    eval-math)
        # shellcheck disable=SC2046
        run_eval math --suite 'spec-bench#math_reasoning' $(limit "$MATH_QUESTIONS" --limit) \
            --prompt-format "$PROMPT_FORMAT" --methods "$METHODS" \
            --datastore "$STORES/rest" --datastore "$STORES/dresd" --datastore "$STORES/sam"
        ;;
    eval-humaneval-code)
        # shellcheck disable=SC2046
        run_eval humaneval-code --suite humaneval $(limit "$HUMANEVAL_QUESTIONS" --limit) \
            --methods ar,pld,rest --datastore "$STORES/code-rest"
        ;;
    all)
        for s in corpus stores code-store eval-dresd-protocol eval-math eval-humaneval-code; do step $s; done
        ;;
    *)
        echo "unknown step $1; choose from: corpus stores code-store eval-dresd-protocol eval-math eval-humaneval-code all" >&2
        exit 2
        ;;
    esac
    echo "== $(date +%T) $1 done"
}

[ $# -gt 0 ] || { sed -n 2,25p "$0"; exit 2; }
for s in "$@"; do step "$s"; done
