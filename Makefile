# EdgeShrink — every target creates the virtual environment first if it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL  ?= mobilenet_v3_small
HOST   ?=
REMOTE_PYTHON ?=
TARGET ?= host
EPOCHS ?= 30
# Values reach recipes through the environment and are used as "$$VAR": never pasted into a shell line.
export MODEL TARGET HOST REMOTE_PYTHON FINETUNE_EPOCHS DATA MACS SCOPES EPOCHS FPS ZOO_MODELS ZOO_SIZE ZOO_OUT SOURCE

.PHONY: setup setup-litert setup-quant test test-slow deploy bench sweep train zoo clean help

help:
	@echo "make deploy TARGET=host MODEL=mobilenet_v3_small   prune + INT8 + convert + verify + benchmark -> dist/<model>-<target>/"
	@echo "make test                                         the test suite (tiny real models, real converters and runtimes)"
	@echo "make bench [MODEL=..] [TARGET=..]                 re-benchmark a bundle: table + dist/<model>-<target>/bench.json"
	@echo "make train MODEL=mobilenet_v3_small EPOCHS=30     train a model card's architecture on its dataset"
	@echo "make setup                                        every venv: .venv, .venv-litert (second TFLite converter), .venv-quant (INT8 fallback)"
	@echo "make test-slow                                    end-to-end runs on the real data (minutes)"
	@echo "make zoo [ZOO_MODELS=a,b] [ZOO_SIZE=64]            prune/reload/ONNX/parity over torchvision classifiers -> dist/zoo/zoo.json"
	@echo "make zoo SOURCE=timm [ZOO_MODELS=a,b]              every timm family + MONAI 2-D segmentation nets through the deploy"
	@echo "                                                  chain (resumable) -> dist/zoo/zoo_timm.json (SOURCE=monai: MONAI only);"
	@echo "                                                  ZOO_OUT=docs/zoo resumes the committed table"

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)


# The litert-torch converter venv (toolkit/convert/litert_child.py runs in it): torch pinned first, then
# held by a constraint, so that resolving litert-torch cannot swap it.
LITERT_VENV  := .venv-litert
LITERT_STAMP := $(LITERT_VENV)/.installed
$(LITERT_STAMP): requirements-litert.txt
	@test -x $(LITERT_VENV)/bin/python || $(PYTHON) -m venv $(LITERT_VENV)
	$(LITERT_VENV)/bin/python -m pip install -q --upgrade pip
	grep -E '^(torch|torchvision)==' requirements.txt > $(LITERT_VENV)/torch-pins.txt
	$(LITERT_VENV)/bin/python -m pip install -q -r $(LITERT_VENV)/torch-pins.txt
	$(LITERT_VENV)/bin/python -m pip install -q -r requirements-litert.txt -c $(LITERT_VENV)/torch-pins.txt
	$(LITERT_VENV)/bin/python -c "import litert_torch, ai_edge_quantizer, torch; print('litert venv ready, torch', torch.__version__)"
	@touch $(LITERT_STAMP)

setup-litert: $(LITERT_STAMP)

# The ai-edge-quantizer venv (toolkit/quantize/aeq_child.py runs in it): no torch, ~300 MB.
QUANT_VENV  := .venv-quant
QUANT_STAMP := $(QUANT_VENV)/.installed
$(QUANT_STAMP): requirements-quant.txt
	@test -x $(QUANT_VENV)/bin/python || $(PYTHON) -m venv $(QUANT_VENV)
	$(QUANT_VENV)/bin/python -m pip install -q --upgrade pip
	$(QUANT_VENV)/bin/python -m pip install -q -r requirements-quant.txt
	$(QUANT_VENV)/bin/python -c "import ai_edge_quantizer, ai_edge_litert; print('quantizer venv ready')"
	@touch $(QUANT_STAMP)

setup-quant: $(QUANT_STAMP)

# Every venv the pipeline uses: the main one, both TFLite converters' (onnx2tf in .venv, litert-torch in
# .venv-litert: the fallback when one fails or fails parity) and the INT8 fallback's quantizer.
# (After the stamp variables: make expands a rule's prerequisites when it reads the rule.)
setup: $(STAMP) $(LITERT_STAMP) $(QUANT_STAMP)

test: setup
	@tests/prereqs.sh --install
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

deploy: setup
	$(BIN)/edgeshrink run --model "$$MODEL" --target "$$TARGET" \
	  $${FINETUNE_EPOCHS:+--finetune-epochs "$$FINETUNE_EPOCHS"} $${DATA:+--data "$$DATA"} \
	  $${HOST:+--host "$$HOST"} $${REMOTE_PYTHON:+--remote-python "$$REMOTE_PYTHON"}

bench: setup
	$(BIN)/edgeshrink bench "dist/$$MODEL-$$TARGET"

sweep: setup
	$(BIN)/edgeshrink sweep --model "$$MODEL" --target "$$TARGET" \
	  $${MACS:+--macs "$$MACS"} $${SCOPES:+--scopes "$$SCOPES"} \
	  $${FINETUNE_EPOCHS:+--finetune-epochs "$$FINETUNE_EPOCHS"} $${DATA:+--data "$$DATA"}

train: setup
	$(BIN)/edgeshrink train --model "$$MODEL" --epochs "$$EPOCHS"

zoo: setup
	$(BIN)/python -m toolkit.studies.zoo --threads 1 $${SOURCE:+--source "$$SOURCE"} $${ZOO_MODELS:+--models "$$ZOO_MODELS"} \
	  $${ZOO_SIZE:+--size "$$ZOO_SIZE"} --out "$${ZOO_OUT:-dist/zoo}"

clean:
	rm -rf dist .pytest_cache
