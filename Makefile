# Every target is one CLI call, so this file doubles as a tour of the CLI.
PY ?= python3
STAMP := .make-stamp-install
DEMO_OUT ?= results/demo

.PHONY: install test demo lint format report clean bench-rest

# CPU torch first: `torch==2.13.0` resolves to the local CPU build here; with it installed,
# pip leaves torch alone instead of pulling a CUDA build.
install: $(STAMP)
$(STAMP): pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest tests -q --durations=15

demo: install
	rm -rf $(DEMO_OUT)
	$(PY) -m specbench_cli eval --model smollm2-135m --suite mt-bench,humaneval --methods ar,pld \
		--limit 3 --max-new-tokens 128 --out $(DEMO_OUT)

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

clean:
	rm -rf $(STAMP) build *.egg-info .pytest_cache .ruff_cache
