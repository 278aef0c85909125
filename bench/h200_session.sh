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
#   store     the static SAM automaton over CodeAlpaca's answers (from the carried data root)
#   head OUT PROMPTS... [-- EXTRA...]
#             `specbench train-head` on the staged target, prompts from the carried files (git-excluded
#             .bd2/ or .corpus/, e.g. .bd2/gsm8k-train.jsonl .bd2/new_codealpaca.json); rerun to resume.
#             Defaults sized for ~6 minutes on an H200 (docs/methods.md, "GPU budget of train-head"):
#             1,000 prompts per file x 256 new tokens answered at batch 128, then 10 epochs. $HEAD_ARGS
#             and EXTRA override them (train-head's last value wins), e.g. -- --max-prompts 500 --epochs 4
#   eval OUT SUITES METHODS [EXTRA...]
#             `specbench eval` on the staged target and questions, resumed if OUT exists
#   eval-head OUT SUITES METHODS HEAD [EXTRA...]
#             `eval` with --draft-head HEAD (eagle2, rasd/respec on the head, sam.fallback=eagle2)
#   chain     the whole head session in one background job, with the data root carried (below) for
#             the prompt files: prepare the staged 1.5B, build the SAM store, train the head while a
#             throwaway head (8 prompts, 1 epoch) runs a 2-question smoke eval of every method (it finds
#             GPU-only faults early and fills the compile caches), then the 3-repeat eval. $METHODS,
#             $SUITES and $HEAD_ARGS override its defaults; each stage's end is logged as "chain: ... done".
#   chain2    the next session's plan in one job: prepare, the SAM store, then the retrieval corpus and
#             stores (issue 13) generated while the head trains (both untimed, so they may share the
#             GPU), then the timed runs one after another: the retrieval evals, and one pass of the head
#             methods (METHODS2) with the device-resident tree. Needs /root/data and /root/cache (below).
#             Estimated ~28 min after staging (head and corpus ~10 in parallel, retrieval evals ~11, head
#             eval ~5): more than a session holds with staging, so set RET_EVALS to fewer evals.
#   retrieval [STEP...]
#             issue 13's comparison at size: bench/retrieval_at_scale.sh (default: all) on the staged
#             target, the data root carried as /root/data (a copy of shared/data: GSM8K, CodeAlpaca,
#             Spec-Bench), compiled engine, results under /root/res/ras
#   ras13     issue 13's comparison, then the fast methods 3 times (issue 15's spread, issue 9's ar):
#             prepare, the SAM store, the aligned corpus and its stores on the GPU while the code
#             corpus's REST store builds on the CPU (all untimed), then, one after another, the timed
#             retrieval evals and ar,pld,sam,recycle,suffix with --repeats 3 on the 48 + 20 questions.
#             Measured 2026-12-03 (BATCH=512 CODE_MAX_DOCS=10000): builds 5.5 min with the prepare,
#             retrieval evals 14.6 min, then the repeats until the session ended (1.8 passes in ~3.5 min).
#   keys      the dresd key pass on a real corpus of many short documents (GSM8K train's answers,
#             7,473): its manifest's tokens_per_s against the 75,966 of the 2026-12-03 aligned build
#   chain3    the next session's plan: prepare, the SAM store, the whole Spec-Bench with ar, pld and
#             sam (full480, ~11 min; killed with SIGKILL after $CUT seconds, default 240, then resumed,
#             and its answer lines counted), the fast methods 3 times on the 48 + 20 questions (~6
#             min), then `keys`, the 10M-key search p50 (dense_at_scale.py, target <= 0.5 ms) and a
#             step profile of ar, pld, recycle and sam (bench/profile_step.py: why a tree's verify
#             costs ~1 ms more than its bucket's forward, 2026-12-03 fast-repeats). ~24 min after
#             staging, so the last probes may be cut.
#   chain4    issue 9's draft models, for a session after chain3's: needs the 0.5B staged too
#             (.stage/q05, 9 pieces, to /root/m/q05). Prepare both models, one pass of ar, sps,
#             sps-tree and rasd with the 0.5B draft (the compiled draft step against levels x its
#             forward, predicted vs measured speedups), then the head trained as in `chain` and one
#             pass of ar, eagle2 and rasd on it (the device-resident tree). ~22 min after staging.
#   pre5      no model files (random weights of the real shape), for the first call of a session while
#             the staging calls run: bench/step_parts.py (a tree step's parts: forward, the verifier's
#             reads, the K/V move per layer vs fused) and dense_at_scale.py (the product's dresd build
#             key pass, target >= 100k tok/s; the 10M-key search, target p50 <= 0.5 ms). ~2-3 min.
#   chain5    after pre5: prepare, the SAM store, the fast methods 3 times on the 48 + 20 questions
#             (issue 15), the step profile, `keys`, and, when the 0.5B is staged too, one pass of ar,
#             sps, sps-tree and rasd with it (issue 9). Measured parts: the repeats ~5 min (the full
#             Spec-Bench's 1,238 answers took 3 min 58 s on 2026-12-03), the draft pass ~5 min.
#   dense     dense_at_scale.py alone (no model files): the dresd build's key pass and the 10M-key search
#   pre6      no model files, for the first call while the staging calls run: `dense`, then
#             bench/step_parts.py (the chunked top-k of row_topk.py against torch.topk on the GPU)
#   chain6    after `dense` (waits for it): prepare, ar and suffix 3 times on the 48 + 20
#             questions (issue 15: SuffixDecoding's spread once the collector is off the clock,
#             specbench_cli/quiet_gc.py), then the SAM store and the step profile. ~5 min after staging.
#   chain7    the next session's plan, started by the last staging call (1.5B and 0.5B staged): prepare
#             both, wait for pre6, issue 9's draft-model pass (ar, sps, sps-tree, rasd with the 0.5B; never measured on
#             the fast path yet), the step profile (where a tree verify's ~0.8 ms beyond its forward
#             goes), then every fast method 3 times with the collector off the clock (issue 15's run in
#             one piece). ~15 min after staging; each stage's results come back with the next poll.
#   pre8      no model files, for the next session's first call: `kernels` (the float32 check of the
#             graphs and the tree-attention kernel, which now reads the query in the model's layout,
#             and the per-kernel profile against the committed one), then bench/step_parts.py
#   chain8    the next session's plan (the 1.5B staged; the last staging call starts it): prepare,
#             wait for pre8, the SAM store, the fast methods 3 times (the chunked prefill: ar's prompts
#             over 128 tokens took 24-60 ms eagerly; row_topk in recycle/sam; the decode loop's host
#             work cut; rotary tables), a float32 check that they still give ar's tokens (the
#             verifier now reads the graph's logits uncopied), the step profile, then, when the 0.5B
#             is staged too, the draft-model pass. ~15 min after staging, ~8 more with the draft pass.
#   pre9      as pre8, for the next session's first call
#   chain9    the next session's plan (the 1.5B staged; the last staging call starts it): prepare, wait
#             for pre9, the SAM store, the fast methods 3 times with transformers' static-cache
#             generate beside them (issue 9: ar's ratio to it in the same run; ~4.5 min more), the
#             step profile, then the draft-model pass when the 0.5B is staged too. ~15 min after
#             staging without the draft pass, ~21 with it.
#   pre10     no model files, for the next session's first call: the tree-attention sweep of the
#             1.5B's shape with the split kernel's unmasked prefix loop (its table is updated from it
#             before the last staging call)
#   chain10   the next session's plan (the 1.5B staged; the last staging call starts it): prepare, wait
#             for pre10, `kernels` with the updated table (float32 check, per-kernel profile against
#             the seventh session's), the SAM store, the fast methods 3 times with transformers'
#             static-cache generate beside them, the draft-model pass when the 0.5B is staged, then
#             the step profile. ~22 min after staging with the draft pass.
#   f32       no model files: micro.py's float32 check alone (compiled graphs and the Triton kernel
#             against eager, random weights of the 1.5B's shape) into $RES/f32_check.json
#   chain11   a short session's plan (the 1.5B staged; the last staging call starts it): wait for the
#             conversion a staging call started and for `f32`, the SAM store, then one pass of the fast
#             methods with transformers' static-cache generate beside them. ~6 min after staging.
#   chain12   the next session's plan (the 1.5B and the 0.5B staged, .st/rest15 copied to
#             /root/stores/rest15; a staging call starts the 1.5B's conversion, the last one this): the
#             SAM and DReSD stores over CodeAlpaca's answers, the draft-model pass (~6 min), the fast
#             methods, sam without its fallback, rest and dresd 3 times with transformers'
#             static-cache generate beside them (~11 min), the float32 check through eval (~2 min),
#             the step profile. Measured 2026-12-03 (ninth session, nothing compiled on the machine
#             before): stores 1 min, the draft pass 10 min (8 before its first answer), the fast eval
#             ~7 min before its first answer; the session ended 85% into its first pass. With
#             REPEATS=1 the fast eval is one pass (~4 min after its compilation).
#   chain13   the session after the ninth's (staged as for chain12): the stores, then ONE eval of every
#             fast method, sam@none, rest, dresd, sps, sps-tree and rasd beside hf-static (one
#             compilation of the target instead of two; $REPEATS passes, default 1), then `kernels`
#             (the per-kernel profile) and the float32 check through eval
#   chain14   the session after the tenth's (the 1.5B staged, .st/rest15 copied; no draft model: the
#             tenth session measured the draft-model methods): the SAM and DReSD stores, then ONE eval of
#             the retrieval methods beside BOTH transformers baselines (hf-static and hf-eager, ~7 min of
#             the 68 answers at ~40 tok/s), then `kernels`. It measures what was built after the tenth
#             session: the uncopied cost probe, dresd's one-graph step search, suffix's pruned
#             cross-request search, the reused step-clock events; sam@none (SAM's own drafts) rides along,
#             and the step profile of ar, pld, recycle and sam comes last, if the time allows
#   chain15   the draft models again with the retrieval methods (the 1.5B and the 0.5B staged, as for
#             chain12): the SAM and DReSD stores, then ONE eval of ar, pld, recycle, sam, suffix, dresd,
#             sps, sps-tree and rasd (~15 min), then micro.py (the float32 check and the forward ratios
#             on random weights), the step profile of ar, dresd, sam and suffix, and the per-kernel
#             profile, as far as the time goes. It measures the device fills of forward_tensors (4-6
#             torch calls a tree level where there were 12) against the tenth session's draft-time
#             ratios; the ancestor closure by pointer jumping (session 14's profile: seven float32
#             129 x 129 products, 38 us of a 129-input forward) in the buckets pld (16), recycle and
#             sam (81) verify with and in the probe's t(129); suffix's and dresd's drafting after this
#             session's host work
#   poll [SECONDS]
#             a polling call: sleep (default 280), print the stage marks of $RES/chain.log, and pack
#             $RES into $OUT/res.tgz (niced; written under another name, then renamed)
#   count OUT lines and distinct (question, repeat) keys of every answer file of run folder OUT: a
#             resumed run must have as many lines as keys (nothing answered twice)
#   full480 OUT
#             the whole Spec-Bench (480 questions, both MT-Bench turns) with ar, pld and sam (+ the SAM
#             store), resumed if OUT exists: rerun it until every answer is in
set -u
RES=/root/res
mkdir -p "$RES"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export SPECBENCH_MODEL_QWEN2_5_CODER_1_5B=/root/m/q15/hf SPECBENCH_MODEL_QWEN2_5_CODER_0_5B=/root/m/q05/hf
# Suite files on a machine without a network: a copy of shared/data (carried as .data/) and of the
# pinned downloads (~/.cache/specbench/data, carried as .cache-data/data/), copied to these paths.
export SPECBENCH_DATA=${SPECBENCH_DATA:-/root/data} SPECBENCH_CACHE=${SPECBENCH_CACHE:-/root/cache}
BEFORE=bench/results/2026-12-04-h200-session14/profile.json  # session 14: the closure by float32 products
# The questions of every timed run since 2026-12-02: 20 HumanEval + 48 Spec-Bench (8 per task), carried in .bd2/.
suites=${SUITES:-humaneval:/root/bd/HumanEval-20.jsonl,jsonl:/root/bd/spec-bench-48.jsonl}
step=$1
shift
echo "== $(date +%T) $step $*"
run_eval() {
    local out=$1 suites=$2 methods=$3
    shift 3
    local resume=()
    [ -d "$out" ] && resume=(--resume)
    python3 -m specbench_cli eval --model qwen2.5-coder-1.5b --suite "$suites" --methods "$methods" \
        --max-new-tokens 256 --out "$out" "${resume[@]}" "$@"
}
prepare_target() { # the staged GGUF -> a safetensors folder, once per machine
    [ -f /root/m/q15/hf/specbench.json ] || python3 bench/device_prep.py prepare \
        --model qwen2.5-coder-1.5b=/root/m/q15/model.gguf --to /root/m/q15/hf
}
train_head_q15() { # the head of the chains: 1,500 GSM8K + 1,500 CodeAlpaca prompts (~7.5 min)
    bash "$0" head /root/heads/q15 "$SPECBENCH_DATA/gsm8k/train.jsonl" "$SPECBENCH_DATA/code_alpaca/new_codealpaca.json" \
        -- --max-prompts 1500 --batch-size 256 ${HEAD_ARGS:-}
}

prepare_draft() { # the 0.5B draft, staged like the target (.stage/q05 to /root/m/q05)
    [ -f /root/m/q05/hf/specbench.json ] || python3 bench/device_prep.py prepare \
        --model qwen2.5-coder-0.5b=/root/m/q05/model.gguf --to /root/m/q05/hf
}
prepared_target() { # the target's conversion a staging call started, finished (or done here)
    while pgrep -f "device_prep.py prepare" > /dev/null; do sleep 2; done
    prepare_target
}
dresd_store() { # the DReSD store over CodeAlpaca's answers (~30 s)
    python3 -m specbench_cli build-index --method dresd --model qwen2.5-coder-1.5b \
        --corpus "$SPECBENCH_DATA/code_alpaca/new_codealpaca.json" --text-key output --out /root/stores/dresd15 --force
}
code_alpaca_stores() { # the SAM and DReSD stores over CodeAlpaca's answers (rest15 comes staged)
    bash "$0" store
    dresd_store
}
draft_pass() { # issue 9: the draft-model methods with the 0.5B, one pass
    bash "$0" eval /root/res/draft05 "$suites" ar,sps,sps-tree,rasd --draft-model qwen2.5-coder-0.5b
}
step_profile() { # where a step's time goes, per method (bench/profile_step.py): [METHODS [OPTIONS]]
    local methods=${1:-ar,pld,recycle,sam}
    [ $# -gt 0 ] && shift
    python3 bench/profile_step.py --model qwen2.5-coder-1.5b --methods "$methods" \
        --datastore /root/stores/sam15 "$@" --out "$RES/profile_step.json"
}
kernel_profile() { # the per-kernel profile per size, compared with $BEFORE's
    python3 bench/profile_forward.py --out "$RES/profile.json" --shape qwen2.5-coder-1.5b \
        --variants tree:efficient:default --sizes 1,16,32,48,64,80,81,96,129 --context 1000 --compare "$BEFORE"
}
micro_run() { # the float32 check and the forward times on random weights
    python3 bench/micro.py --out "$RES/micro.json" --shape qwen2.5-coder-1.5b \
        --variants tree:efficient:default --time-budget 120
}
step_parts() { # a step's parts on random weights of the 1.5B's shape (no model files)
    python3 bench/step_parts.py --out "$RES/step_parts.json"
}
# The two helpers below run $FAST_METHODS (default the five fast methods) with the SAM store; extra
# eval options (more --datastore, --baselines) after.
lossless_f32() { # float32 on the GPU: every method's tokens must equal ar's (lossless 1.000)
    bash "$0" eval /root/res/f32 "$suites" "${FAST_METHODS:-ar,pld,sam,recycle,suffix}" \
        --datastore /root/stores/sam15 --dtype float32 --limit 2 --max-new-tokens 128 "$@"
}
fast_repeats() { # issue 15: every method $REPEATS times (default 3)
    bash "$0" eval /root/res/fast3 "$suites" "${FAST_METHODS:-ar,pld,sam,recycle,suffix}" \
        --datastore /root/stores/sam15 --repeats "${REPEATS:-3}" "$@"
}

case $step in
sweep)
    python3 bench/attention_sweep.py --out "$RES/sweep.json" --shapes 2x6x128
    ;;
kernels) # the per-kernel profile first (the tenth session's time ran out before it), then micro
    kernel_profile
    micro_run
    ;;
store)
    python3 -m specbench_cli build-index --method sam --model qwen2.5-coder-1.5b \
        --corpus "$SPECBENCH_DATA/code_alpaca/new_codealpaca.json" --text-key output --out /root/stores/sam15 --force
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
    python3 -m specbench_cli train-head --model qwen2.5-coder-1.5b --device cuda --out "$out" \
        "${prompts[@]}" --max-prompts 1000 --max-new-tokens 256 --batch-size 128 --epochs 10 \
        --train-batch 8 ${HEAD_ARGS:-} "$@"
    ;;
eval)
    run_eval "$@"
    ;;
eval-head)
    out=$1 suites=$2 methods=$3 head=$4
    shift 4
    run_eval "$out" "$suites" "$methods" --draft-head "$head" "$@"
    ;;
chain)
    methods=${METHODS:-ar,pld,sam,recycle,suffix,eagle2,rasd,respec,respec@strict,sam@eagle}
    head_eval=(--datastore /root/stores/sam15 --method-opt sam@eagle.fallback=eagle2
        --method-opt respec@strict.relaxed=false --baselines hf-static)
    prepare_target || exit 1
    echo "chain: prepare done $(date +%T)"
    bash "$0" store
    echo "chain: store done $(date +%T)"
    (bash "$0" head /root/heads/tiny "$SPECBENCH_DATA/gsm8k/train.jsonl" -- --max-prompts 8 --max-new-tokens 32 --epochs 1 &&
        bash "$0" eval-head /root/res/smoke "$suites" "$methods" /root/heads/tiny "${head_eval[@]}" --limit 2 &&
        echo "chain: smoke done $(date +%T)") > "$RES/smoke.log" 2>&1 &
    train_head_q15
    echo "chain: head done $(date +%T)"
    wait
    bash "$0" eval-head /root/res/run1 "$suites" "$methods" /root/heads/q15 "${head_eval[@]}" --repeats 3
    echo "chain: eval done $(date +%T)"
    ;;
chain14)
    prepared_target || exit 1
    code_alpaca_stores
    echo "chain14: stores done $(date +%T)"
    # hf-eager's 68 answers take ~7-9 minutes (31.6-39.6 tok/s in micro.py's runs): the longest part
    bash "$0" eval /root/res/all14 "$suites" ar,pld,sam,sam@none,recycle,suffix,rest,dresd \
        --datastore /root/stores/sam15 --datastore /root/stores/rest15 --datastore /root/stores/dresd15 \
        --baselines hf-static,hf-eager --repeats "${REPEATS:-1}" --method-opt sam@none.fallback=none
    echo "chain14: the retrieval methods with both baselines done $(date +%T)"
    bash "$0" kernels
    echo "chain14: kernels done $(date +%T)"
    step_profile  # where a tree step's time goes beyond its forward (recycle, sam), if time is left
    echo "chain14: step profile done $(date +%T)"
    ;;
chain15)
    prepared_target || exit 1
    prepare_draft || exit 1
    code_alpaca_stores
    echo "chain15: stores done $(date +%T)"
    bash "$0" eval /root/res/all15 "$suites" ar,pld,recycle,sam,suffix,dresd,sps,sps-tree,rasd \
        --draft-model qwen2.5-coder-0.5b --datastore /root/stores/sam15 --datastore /root/stores/dresd15
    echo "chain15: the eval done $(date +%T)"
    micro_run
    echo "chain15: micro done $(date +%T)"
    # Where dresd's and sam's host time goes beyond their forward (the closing note's limits), if time is left
    step_profile ar,dresd,sam,suffix --datastore /root/stores/dresd15
    echo "chain15: step profile done $(date +%T)"
    kernel_profile
    echo "chain15: profile done $(date +%T)"
    ;;
retrieval)
    prepare_target || exit 1
    DATA=$SPECBENCH_DATA OUT=/root/res/ras EVAL_ARGS="--engine compiled" \
        bash bench/retrieval_at_scale.sh "${@:-all}"
    ;;
chain2)
    methods=${METHODS2:-ar,pld,sam,eagle2,rasd,respec@strict,sam@eagle}
    prepare_target || exit 1
    bash "$0" store
    (bash "$0" retrieval corpus stores && echo "chain2: retrieval stores done $(date +%T)") \
        > "$RES/ras-build.log" 2>&1 &
    train_head_q15
    echo "chain2: head done $(date +%T)"
    wait
    # shellcheck disable=SC2086
    bash "$0" retrieval ${RET_EVALS:-eval-dresd-protocol eval-math eval-humaneval-code}
    echo "chain2: retrieval evals done $(date +%T)"
    bash "$0" eval-head /root/res/run2 "$suites" "$methods" /root/heads/q15 --datastore /root/stores/sam15 \
        --method-opt sam@eagle.fallback=eagle2 --method-opt respec@strict.relaxed=false
    echo "chain2: eval done $(date +%T)"
    ;;
ras13)
    prepare_target || exit 1
    bash "$0" store
    (nice -n 10 bash "$0" retrieval code-store && echo "ras13: code store done $(date +%T)") \
        > "$RES/code-store.log" 2>&1 &
    bash "$0" retrieval corpus stores
    wait
    echo "ras13: stores done $(date +%T)"
    bash "$0" retrieval eval-dresd-protocol eval-math eval-humaneval-code
    echo "ras13: retrieval evals done $(date +%T)"
    fast_repeats
    echo "ras13: fast repeats done $(date +%T)"
    ;;
keys)
    python3 -m specbench_cli build-index --method dresd --model qwen2.5-coder-1.5b \
        --corpus "$SPECBENCH_DATA/gsm8k/train.jsonl" --text-key answer --out /root/stores/dresd-gsm8k --force
    ;;
chain3)
    # Issue 15's two runs first (they close it); the short probes after, where a cut costs least.
    prepare_target || exit 1
    bash "$0" store
    timeout -s KILL "${CUT:-240}" bash "$0" full480 /root/res/full480
    echo "chain3: full480 killed after ${CUT:-240} s $(date +%T)"
    bash "$0" count /root/res/full480
    bash "$0" full480 /root/res/full480
    echo "chain3: full480 done $(date +%T)"
    bash "$0" count /root/res/full480
    fast_repeats
    echo "chain3: fast repeats done $(date +%T)"
    bash "$0" keys
    echo "chain3: keys done $(date +%T)"
    python3 bench/dense_at_scale.py --device cuda --sizes 10000000 --extract-tokens 200000 \
        --out "$RES/dense_at_scale.json"
    echo "chain3: 10M-key search done $(date +%T)"
    step_profile
    echo "chain3: step profile done $(date +%T)"
    ;;
chain4)
    prepare_target || exit 1
    prepare_draft || exit 1
    draft_pass
    echo "chain4: draft-model pass done $(date +%T)"
    train_head_q15
    echo "chain4: head done $(date +%T)"
    bash "$0" eval-head /root/res/head1 "$suites" ar,eagle2,rasd /root/heads/q15
    echo "chain4: head pass done $(date +%T)"
    ;;
pre5)
    # No model files: run by the first call while the staging calls copy the model (they use no GPU).
    step_parts
    echo "pre5: step parts done $(date +%T)"
    python3 bench/dense_at_scale.py --device cuda --sizes 10000000 --out "$RES/dense_at_scale.json"
    echo "pre5: dense at scale done $(date +%T)"
    ;;
chain5)
    # After pre5 (waits for it): issue 15's 3 repeats first, then the step profile and the key pass,
    # then issue 9's draft-model pass when the 0.5B was staged too (.stage/q05 to /root/m/q05).
    while pgrep -f "h200_session.sh pre5" > /dev/null; do sleep 5; done
    prepare_target || exit 1
    bash "$0" store
    fast_repeats
    echo "chain5: fast repeats done $(date +%T)"
    step_profile
    echo "chain5: step profile done $(date +%T)"
    bash "$0" keys
    echo "chain5: keys done $(date +%T)"
    if [ -f /root/m/q05/model.gguf ]; then
        prepare_draft || exit 1
        draft_pass
        echo "chain5: draft-model pass done $(date +%T)"
    fi
    ;;
pre8)
    bash "$0" kernels
    echo "pre8: kernels done $(date +%T)"
    step_parts
    echo "pre8: step parts done $(date +%T)"
    ;;
pre6)
    bash "$0" dense
    echo "pre6: dense at scale done $(date +%T)"
    step_parts
    echo "pre6: step parts done $(date +%T)"
    ;;
dense)
    python3 bench/dense_at_scale.py --device cuda --sizes 10000000 --out "$RES/dense_at_scale.json"
    ;;
chain6)
    while pgrep -f "h200_session.sh dense" > /dev/null; do sleep 5; done
    prepare_target || exit 1
    bash "$0" eval /root/res/suffix3 "$suites" ar,suffix --repeats 3
    echo "chain6: suffix repeats done $(date +%T)"
    bash "$0" store
    step_profile
    echo "chain6: step profile done $(date +%T)"
    ;;
chain7)
    prepare_target || exit 1
    prepare_draft || exit 1
    while pgrep -f "h200_session.sh pre6" > /dev/null; do sleep 5; done # its timings alone on the GPU
    draft_pass
    echo "chain7: draft-model pass done $(date +%T)"
    bash "$0" store
    step_profile
    echo "chain7: step profile done $(date +%T)"
    fast_repeats
    echo "chain7: fast repeats done $(date +%T)"
    ;;
chain8)
    prepare_target || exit 1
    while pgrep -f "h200_session.sh pre8" > /dev/null; do sleep 5; done # its timings alone on the GPU
    bash "$0" store
    fast_repeats
    echo "chain8: fast repeats done $(date +%T)"
    lossless_f32
    echo "chain8: float32 lossless check done $(date +%T)"
    step_profile
    echo "chain8: step profile done $(date +%T)"
    if [ -f /root/m/q05/model.gguf ]; then # the 0.5B staged too (.stage/q05 to /root/m/q05)
        prepare_draft || exit 1
        draft_pass
        echo "chain8: draft-model pass done $(date +%T)"
    fi
    ;;
pre9)
    bash "$0" kernels
    echo "pre9: kernels done $(date +%T)"
    step_parts
    echo "pre9: step parts done $(date +%T)"
    ;;
chain9)
    prepare_target || exit 1
    while pgrep -f "h200_session.sh pre9" > /dev/null; do sleep 5; done # its timings alone on the GPU
    bash "$0" store
    fast_repeats --baselines hf-static
    echo "chain9: fast repeats with hf-static done $(date +%T)"
    step_profile
    echo "chain9: step profile done $(date +%T)"
    if [ -f /root/m/q05/model.gguf ]; then
        prepare_draft || exit 1
        draft_pass
        echo "chain9: draft-model pass done $(date +%T)"
    fi
    ;;
pre10)
    bash "$0" sweep
    echo "pre10: sweep done $(date +%T)"
    ;;
chain10)
    prepared_target || exit 1
    while pgrep -f "h200_session.sh pre10" > /dev/null; do sleep 5; done # its timings alone on the GPU
    bash "$0" kernels
    echo "chain10: kernels done $(date +%T)"
    bash "$0" store
    fast_repeats --baselines hf-static
    echo "chain10: fast repeats with hf-static done $(date +%T)"
    if [ -f /root/m/q05/model.gguf ]; then
        prepare_draft || exit 1
        draft_pass
        echo "chain10: draft-model pass done $(date +%T)"
    fi
    step_profile
    echo "chain10: step profile done $(date +%T)"
    ;;
f32)
    python3 -c 'import json, sys; sys.path.insert(0, "bench"); import micro
r = micro.correctness("qwen2.5-coder-1.5b", "cuda", 2048); print(r); json.dump(r, open(sys.argv[1], "w"))' "$RES/f32_check.json"
    ;;
chain11)
    prepared_target || exit 1
    while pgrep -f "h200_session.sh f32" > /dev/null; do sleep 2; done # its GPU work done first
    bash "$0" store
    bash "$0" eval /root/res/fast1 "$suites" ar,pld,sam,recycle,suffix --datastore /root/stores/sam15 --baselines hf-static
    echo "chain11: fast methods with hf-static done $(date +%T)"
    ;;
chain12)
    # rest's store is built here (no pydivsufsort there) and carried as .st/rest15; dresd's needs the
    # target's hidden states, so it is built there, from the same CodeAlpaca answers as SAM's.
    prepared_target || exit 1
    code_alpaca_stores
    echo "chain12: stores done $(date +%T)"
    if [ -f /root/m/q05/model.gguf ]; then
        prepare_draft || exit 1
        draft_pass
        echo "chain12: draft-model pass done $(date +%T)"
    fi
    # sam@none: SAM's own chains with no fallback tree (what its speedup / MAT is without the 81-input
    # Token Recycling tree on the steps no match drafts)
    FAST_METHODS=ar,pld,sam,sam@none,recycle,suffix,rest,dresd fast_repeats --datastore /root/stores/rest15 \
        --datastore /root/stores/dresd15 --baselines hf-static --method-opt sam@none.fallback=none
    echo "chain12: fast repeats with hf-static done $(date +%T)"
    FAST_METHODS=ar,pld,sam,recycle,suffix,rest lossless_f32 --datastore /root/stores/rest15
    echo "chain12: float32 lossless check done $(date +%T)"
    step_profile
    echo "chain12: step profile done $(date +%T)"
    ;;
chain13)
    # The next session's plan (the 1.5B and the 0.5B staged, .st/rest15 copied to /root/stores/rest15):
    # ONE eval of every fast method, rest, dresd, sam@none and the draft-model methods beside hf-static,
    # so that the target compiles and captures once (the ninth session's two evals each spent 7-8
    # minutes before their first answer); then the per-kernel profile and the float32 check.
    prepared_target || exit 1
    prepare_draft || exit 1
    code_alpaca_stores
    echo "chain13: stores done $(date +%T)"
    bash "$0" eval /root/res/all13 "$suites" ar,pld,sam,sam@none,recycle,suffix,rest,dresd,sps,sps-tree,rasd \
        --datastore /root/stores/sam15 --datastore /root/stores/rest15 --datastore /root/stores/dresd15 \
        --draft-model qwen2.5-coder-0.5b --baselines hf-static --method-opt sam@none.fallback=none \
        --repeats "${REPEATS:-1}"
    echo "chain13: every method with hf-static done $(date +%T)"
    bash "$0" kernels
    echo "chain13: kernels done $(date +%T)"
    FAST_METHODS=ar,pld,sam,recycle,suffix,rest lossless_f32 --datastore /root/stores/rest15
    echo "chain13: float32 lossless check done $(date +%T)"
    ;;
poll)
    # A polling call (in the foreground, $OUT set by the device tool): wait, show the stage marks, and
    # bring back everything finished so far (answers included: the report runs here), the tar niced
    # so it does not slow the eval's host work, renamed only when complete.
    sleep "${1:-280}"
    grep -a "^== \|done\|killed\|answered twice" "$RES/chain.log" | tail -20
    nice -n 19 tar czf "$OUT/.res.tgz" -C "$RES" . && mv "$OUT/.res.tgz" "$OUT/res.tgz"
    ;;
count)
    python3 - "$1" <<'EOF'
import collections, json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("answers/*/*.jsonl")):
    lines = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    keys = collections.Counter((r["question_id"], r.get("repeat", 0)) for r in lines)
    print(f"{f.parent.name}/{f.name}: {len(lines)} lines, {len(keys)} answers, {sum(n > 1 for n in keys.values())} answered twice")
EOF
    ;;
full480)
    run_eval "$1" spec-bench ar,pld,sam --datastore /root/stores/sam15
    ;;
*)
    echo "unknown step $step" >&2
    exit 2
    ;;
esac
echo "== $(date +%T) $step done ($?)"
