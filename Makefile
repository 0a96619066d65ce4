# The whole set-up on a fresh machine is `make convert MODEL=...` or `make test`:
# the first use creates .venv and installs everything into it.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch and torchvision first, pinned to the builds this machine keeps on disk.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

MODEL   ?=
CKPT    ?=
WEIGHTS ?=
OUT     ?=
STAGES  ?=
PYTEST_ARGS ?=
QUICK   ?=
ARCH    ?= $(shell uname -m)

# Without MODEL: a Hugging Face folder (or hf:…) names its own architecture; anything else means ViT-B-16.
HF_CKPT = $(filter hf:%,$(CKPT))$(if $(CKPT),$(wildcard $(CKPT)/config.json))
CONVERT_MODEL = $(or $(MODEL),$(if $(HF_CKPT),,ViT-B-16))
CONVERT_ARGS = $(CONVERT_MODEL) \
	$(if $(CKPT),--checkpoint $(CKPT)) \
	$(if $(filter random stress,$(WEIGHTS)),--checkpoint $(WEIGHTS)) \
	$(if $(OUT),--out $(OUT)) \
	$(if $(STAGES),--stages $(STAGES))

.PHONY: help venv convert parity bench client client-packages parity-client sophgo-env test test-fast test-sophgo clean

help:
	@echo "make convert MODEL=ViT-B-16 [CKPT=path.pt | CKPT=hf-folder | CKPT=hf:OWNER/NAME | WEIGHTS=random | WEIGHTS=stress] [OUT=dir] [STAGES=onnx-fp32,onnx-sim,onnx-int8]"
	@echo "make parity  MODEL=ViT-B-16 [OUT=dir]   (or OUT=dir alone: the bundle names its model)"
	@echo "make bench   MODEL=ViT-B-16 [CKPT=path.pt | WEIGHTS=random] [OUT=dir] [QUICK=1]  (converts first if needed)"
	@echo "make client  [ARCH=x86_64|aarch64]   (the C++ reference client, build/client/ARCH/cnclip-embed; ncnn built from its sdist once)"
	@echo "make parity-client OUT=dir [ARCH=aarch64]   (parity plus the client's rows; aarch64 runs under qemu)"
	@echo "make sophgo-env   (tpu-mlir's own Python 3.10 environment for the bm1684x-* stages; made on first use, 6.4 GB)"
	@echo "make test    (all tests, full-size ones included)"
	@echo "make test-fast (tiny architectures only, the BM1684X simulators included)"
	@echo "make test-sophgo (the BM1684X stages and simulator runtime alone)"
	@echo "models: $$(ls converters/export/configs | sed 's/\.yaml//' | tr '\n' ' ')"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The bm1684x stages run tpu-mlir from its own environment, made the first time they are asked for.
NEEDS_SOPHGO_ENV = $(if $(findstring bm1684x,$(STAGES)),sophgo-env)

convert: $(STAMP) $(NEEDS_SOPHGO_ENV)
	$(PY) -m converters convert $(CONVERT_ARGS)

parity: $(STAMP)
	$(PY) -m converters parity $(or $(MODEL),$(if $(OUT),,ViT-B-16)) $(if $(OUT),--out $(OUT))

# Converting first skips every stage already done and writes parity.json, which the goals read.
# A parity failure (exit 3) still gets benchmarked: the goals count passing artifacts only.
bench: $(STAMP) $(NEEDS_SOPHGO_ENV)
	$(PY) -m converters convert $(CONVERT_ARGS) || [ $$? -eq 3 ]
	$(PY) -m converters bench $(or $(MODEL),$(if $(OUT),,ViT-B-16)) $(if $(OUT),--out $(OUT)) $(if $(QUICK),--quick)

# The C++ client's build tools and libraries, from Debian's packages (arm64 multiarch ones to cross-build).
CLIENT_PACKAGES_x86_64  := cmake g++ libjpeg62-turbo-dev libpng-dev libssl-dev nlohmann-json3-dev
CLIENT_PACKAGES_aarch64 := cmake g++-aarch64-linux-gnu qemu-user nlohmann-json3-dev \
	libjpeg62-turbo-dev:arm64 libpng-dev:arm64 libssl-dev:arm64
client-packages:
	$(if $(CLIENT_PACKAGES_$(ARCH)),,$(error ARCH=$(ARCH): the client builds for x86_64 or aarch64))
	@dpkg -s $(CLIENT_PACKAGES_$(ARCH)) >/dev/null 2>&1 || { \
	  $(if $(filter aarch64,$(ARCH)),dpkg --add-architecture arm64 &&) \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CLIENT_PACKAGES_$(ARCH)); }

client: $(STAMP) client-packages
	$(PY) clients/cpp/build.py --arch $(ARCH)

parity-client: client
	$(PY) -m converters parity $(or $(MODEL),$(if $(OUT),,ViT-B-16)) $(if $(OUT),--out $(OUT)) --client $(ARCH)

# tpu-mlir (the BM1684X compiler and simulators) needs Python 3.10 and pins of its own: a venv outside the
# clone, keyed by version (converters/export/sophgo_env.py says what the recipe fixes).
sophgo-env: $(STAMP)
	$(PY) -m converters.export.sophgo_env

# The browser test drives Debian's Chromium through Selenium: installed on first use, from Debian's packages.
CHROMEDRIVER := /usr/bin/chromedriver
$(CHROMEDRIVER):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver

# The tests build the x86 client themselves (tests/clients): they need its packages.
test: $(STAMP) $(CHROMEDRIVER) client-packages sophgo-env
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) $(CHROMEDRIVER) client-packages sophgo-env
	$(PY) -m pytest -m "not fullsize" $(PYTEST_ARGS)

test-sophgo: $(STAMP) sophgo-env
	$(PY) -m pytest tests/app/runtimes/test_bm1684x.py tests/export/stages/test_bm1684x.py $(PYTEST_ARGS)

clean:
	rm -rf artifacts
