# Every target is one CLI call, so this file doubles as a tour of the CLI.
PY ?= python3
STAMP := .make-stamp-install
DEMO_OUT ?= results/demo

.PHONY: install test demo lint format report clean bench-rest bench-gpu

# CPU torch first: `torch==2.13.0` resolves to the local CPU build here; with it installed,
# pip leaves torch alone instead of pulling a CUDA build.
install: $(STAMP)
$(STAMP): pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest tests --durations=15

# One torch thread: on a 2-core box a second OpenMP thread gains little for a 135M model, and when
# anything else holds a core, multi-token forwards with 2 threads stall at OpenMP barriers (10x slower).
demo: install
	rm -rf $(DEMO_OUT)
	$(PY) -m specbench_cli eval --model smollm2-135m --suite mt-bench,humaneval --methods ar,pld \
		--limit 3 --max-new-tokens 128 --threads 1 --out $(DEMO_OUT)

report:
	$(PY) -m specbench_cli report $(DEMO_OUT)

lint: install
	$(PY) -m ruff check specbench_cli tests bench
	$(PY) -m ruff format --check specbench_cli tests bench

format:
	$(PY) -m ruff format specbench_cli tests bench
	$(PY) -m ruff check --fix specbench_cli tests bench

bench-rest: install
	$(PY) bench/rest_peer.py

# On a GPU machine with the models staged (bench/README.md): the methods on the compiled engine beside
# transformers' eager and static-cache generate, one run folder (answers + report) under $(BENCH_OUT).
BENCH_OUT ?= results/gpu
STORES ?= /root/work
bench-gpu:
	PYTHONUNBUFFERED=1 $(PY) -m specbench_cli eval --model qwen2.5-coder-1.5b --draft-model qwen2.5-coder-0.5b \
		--suite jsonl:.benchdata/spec-bench.jsonl,jsonl:.benchdata/humaneval.jsonl,jsonl:.benchdata/code-alpaca.jsonl \
		--methods ar,pld,rest,dresd,sps --baselines hf-eager,hf-static \
		--datastore $(STORES)/rest --datastore $(STORES)/dresd --engine compiled \
		--max-new-tokens 128 --out $(BENCH_OUT)

clean:
	rm -rf $(STAMP) build *.egg-info .pytest_cache .ruff_cache
