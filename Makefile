# The whole set-up on a fresh machine is `make convert MODEL=...` or `make test`: the first use creates
# .venv and installs what that command needs into it. `make system-deps` (root) installs the Debian
# packages that the C++ client and the browser test need; `make test` asks for them, `make test-core` does not.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch and torchvision first, pinned to the builds this machine keeps on disk.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
# One stamp per set of extras, each on top of the one before: the core (index, search, serve; no torch),
# [convert] (convert, parity, bench, sensitivity, levers), and [convert,test,cluster] (the tests).
CORE_STAMP    := $(VENV)/.installed-core
CONVERT_STAMP := $(VENV)/.installed-convert
TEST_STAMP    := $(VENV)/.installed

MODEL   ?=
CKPT    ?=
WEIGHTS ?=
OUT     ?=
STAGES  ?=
PYTEST_ARGS ?=
QUICK   ?=
ARCH    ?= $(shell uname -m)
STAGE   ?=
PHOTOS  ?=
INDEX   ?=
Q       ?=
PORT    ?= 8000

# A misspelt WEIGHTS would otherwise be dropped and the official checkpoint downloaded instead.
ifneq ($(strip $(WEIGHTS)),$(filter random stress,$(firstword $(WEIGHTS))))
$(error WEIGHTS='$(WEIGHTS)' is unknown: use WEIGHTS=random or WEIGHTS=stress, or CKPT=... for a checkpoint)
endif
ifneq ($(and $(WEIGHTS),$(CKPT)),)
$(error WEIGHTS=$(WEIGHTS) and CKPT=$(CKPT) both name the weights: give one)
endif

# Without MODEL: a Hugging Face folder (or hf:…) names its own architecture; anything else means ViT-B-16.
HF_CKPT = $(filter hf:%,$(CKPT))$(if $(CKPT),$(wildcard $(CKPT)/config.json))
CONVERT_MODEL = $(or $(MODEL),$(if $(HF_CKPT),,ViT-B-16))
CONVERT_ARGS = $(CONVERT_MODEL) \
	$(if $(CKPT),--checkpoint $(CKPT)) \
	$(if $(WEIGHTS),--checkpoint $(WEIGHTS)) \
	$(if $(OUT),--bundle $(OUT)) \
	$(if $(STAGES),--stages $(STAGES))
# parity, bench, sensitivity and levers: MODEL's bundle, or the bundle at OUT (which names its model).
BUNDLE_ARGS = $(or $(MODEL),$(if $(OUT),,ViT-B-16)) $(if $(OUT),--bundle $(OUT))

.PHONY: help venv system-deps client-packages browser-packages sophgo-env rknn-env convert parity bench sensitivity levers \
	client parity-client index search serve loadtest embed immich immich-serve test test-core test-fast test-sophgo test-rknn test-client test-browser test-cluster search-scale clean

help:
	@echo "Set-up (each target below makes .venv with what it needs on first use):"
	@echo "make system-deps [ARCH=x86_64|aarch64]   (root: Debian's chromium, chromium-driver and the C++ client's build packages)"
	@echo "make client-packages [ARCH=...] | browser-packages   (either half of system-deps)"
	@echo "make venv    (.venv with the [convert] and [test] extras; torch and torchvision pinned to this machine's builds)"
	@echo "make sophgo-env   (tpu-mlir's own Python 3.10 environment for the bm1684x-* stages; made on first use, 6.4 GB)"
	@echo "make rknn-env     (rknn-toolkit2's own Python 3.11 environment for the rknn-* stages; made on first use, 30 s, 630 MB)"
	@echo "Convert and check:"
	@echo "make convert MODEL=ViT-B-16 [CKPT=path.pt | CKPT=hf-folder | CKPT=hf:OWNER/NAME | WEIGHTS=random | WEIGHTS=stress] [OUT=dir] [STAGES=onnx-fp32,onnx-sim,onnx-int8]"
	@echo "make parity  MODEL=ViT-B-16 [OUT=dir]   (or OUT=dir alone: the bundle names its model)"
	@echo "make bench   MODEL=ViT-B-16 [CKPT=path.pt | WEIGHTS=random] [OUT=dir] [QUICK=1]  (converts first if needed)"
	@echo "make sensitivity MODEL=ViT-B-16 [OUT=dir] STAGE=onnx-int8|onnx-int4|ncnn-int8   (each layer's quantization cost, alone)"
	@echo "make levers  MODEL=ViT-B-16 [OUT=dir] [STAGES=onnx-int8,ncnn-int8,onnx-int4]   (what each quantization setting does)"
	@echo "make client  [ARCH=x86_64|aarch64]   (the C++ reference client, build/client/ARCH/cnclip-embed; ncnn built from its sdist once)"
	@echo "make parity-client OUT=dir [ARCH=aarch64]   (parity plus the client's rows; aarch64 runs under qemu)"
	@echo "Search photos (the core install: no torch; on a machine that only searches, pip install . is enough):"
	@echo "make index   PHOTOS=folder|URL [OUT=bundle dir | MODEL=ViT-B-16] [STAGE=onnx-int8] [INDEX=dir]   (a new index needs OUT or MODEL)"
	@echo "make search  Q='海边的日落' [INDEX=dir]"
	@echo "make serve   [INDEX=dir] [PORT=8000]   (the search as a web page on 127.0.0.1)"
	@echo "make embed   PHOTOS=folder|URL [OUT=bundle dir] [STAGE=onnx-int8] [INDEX=dir] [RAY=address]   (embed on a Ray cluster into the index)"
	@echo "make immich  IMMICH_OUT=folder [OUT=bundle dir] [PRECISION=int8] [IMMICH_CACHE=dir]   (Immich's model folder, checked)"
	@echo "make immich-serve [OUT=bundle dir] [STAGE=ncnn-int8] [HOST=addr NO_AUTH=1] [IMMICH_PORT=3003]   (Immich's /predict)"
	@echo "make loadtest OUT=bundle [PHOTOS_N=100000] [USERS=32] [SECONDS=120] [NO_PAUSE=1] [WITH_INDEX=1]   (serve under load, loopback)"
	@echo "make search-scale [SIZES=1000000,5000000] [BACKEND=int8|hnsw|exact|faiss] [STORED=1]   (top-10 search on synthetic vectors)"
	@echo "Tests:"
	@echo "make test    (all tests, full-size ones included; needs system-deps, hence root, and sophgo-env)"
	@echo "make test-core (every test that needs neither root, sophgo-env, the client's build nor Chromium; names what it left out)"
	@echo "make test-fast (tiny architectures only, the BM1684X simulators included)"
	@echo "make test-sophgo | test-rknn | test-client | test-browser | test-cluster   (the tests marked sophgo, rknn, client, browser or cluster alone)"
	@echo "make clean   (removes artifacts/)"
	@echo "Every option of a command: $(PY) -m converters COMMAND --help (after any target above; the system python3 lacks the packages)"
	@echo "models: $$(ls converters/export/configs | sed 's/\.yaml//' | tr '\n' ' ')"

$(CORE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e .
	touch $@

$(CONVERT_STAMP): $(CORE_STAMP)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[convert]'
	touch $@

$(TEST_STAMP): $(CONVERT_STAMP)
	$(PY) -m pip install --quiet -e '.[convert,test,cluster]'
	touch $@

venv: $(TEST_STAMP)

# The bm1684x stages run tpu-mlir from its own environment, made the first time they are asked for.
NEEDS_SOPHGO_ENV = $(if $(findstring bm1684x,$(STAGES)),sophgo-env)
NEEDS_RKNN_ENV = $(if $(findstring rknn,$(STAGES)),rknn-env)

convert: $(CONVERT_STAMP) $(NEEDS_SOPHGO_ENV) $(NEEDS_RKNN_ENV)
	$(PY) -m converters convert $(CONVERT_ARGS)

parity: $(CONVERT_STAMP)
	$(PY) -m converters parity $(BUNDLE_ARGS)

# Converting first skips every stage already done and writes parity.json, which the goals read.
# A parity failure (exit 3) still gets benchmarked: the goals count passing artifacts only.
bench: $(CONVERT_STAMP) $(NEEDS_SOPHGO_ENV) $(NEEDS_RKNN_ENV)
	$(PY) -m converters convert $(CONVERT_ARGS) || [ $$? -eq 3 ]
	$(PY) -m converters bench $(BUNDLE_ARGS) $(if $(QUICK),--quick)

sensitivity: $(CONVERT_STAMP)
	$(PY) -m converters sensitivity $(BUNDLE_ARGS) --stage $(or $(STAGE),$(error make sensitivity needs STAGE=onnx-int8, onnx-int4 or ncnn-int8))

levers: $(CONVERT_STAMP)
	$(PY) -m converters levers $(BUNDLE_ARGS) $(if $(STAGES),--stages $(STAGES))

# The search side needs the core install only: no torch. Without OUT or MODEL, index keeps the bundle the index has.
index: $(CORE_STAMP)
	$(PY) -m converters index $(or $(PHOTOS),$(error make index needs PHOTOS=folder or URL)) \
		$(if $(or $(OUT),$(MODEL)),--bundle $(or $(OUT),artifacts/$(MODEL))) $(if $(STAGE),--stage $(STAGE)) $(if $(INDEX),--index $(INDEX))

search: $(CORE_STAMP)
	$(PY) -m converters search $(if $(Q),'$(Q)',$(error make search needs Q='words to look for')) $(if $(INDEX),--index $(INDEX))

serve: $(CORE_STAMP)
	$(PY) -m converters serve --port $(PORT) $(if $(INDEX),--index $(INDEX))

# A library too large for one machine, embedded on a Ray cluster (RAY=HOST:PORT of its head; none: a Ray of its own) into the index.
embed: $(TEST_STAMP)
	$(PY) -m converters embed $(or $(PHOTOS),$(error make embed needs PHOTOS=folder or URL)) \
		--bundle $(or $(OUT),artifacts/$(or $(MODEL),ViT-B-16)) $(if $(STAGE),--stage $(STAGE)) $(if $(INDEX),--index $(INDEX)) \
		$(if $(RAY),--ray $(RAY))

# Immich's model folder for a bundle (PRECISION=fp32|fp16|int8), checked as Immich loads it; IMMICH_CACHE installs it.
immich: $(CONVERT_STAMP)
	$(PY) -m converters immich --bundle $(or $(OUT),artifacts/$(or $(MODEL),ViT-B-16)) --precision $(or $(PRECISION),int8) \
		--out $(or $(IMMICH_OUT),$(error make immich needs IMMICH_OUT=folder)) $(if $(IMMICH_CACHE),--install $(IMMICH_CACHE))

# A bundle's stage behind Immich's /predict, for Immich's machine learning URL (loopback unless HOST=… NO_AUTH=1).
immich-serve: $(CORE_STAMP)
	$(PY) -m converters immich-serve --bundle $(or $(OUT),artifacts/$(or $(MODEL),ViT-B-16)) $(if $(STAGE),--stage $(STAGE)) \
		$(if $(HOST),--host $(HOST)) $(if $(NO_AUTH),--no-auth) --port $(or $(IMMICH_PORT),3003)

# serve under load on loopback: 32 paced users (or NO_PAUSE=1: the saturation run), with index writing meanwhile.
loadtest: $(TEST_STAMP)
	$(PY) -m converters.search.loadtest --bundle $(or $(OUT),$(error make loadtest needs OUT=bundle dir)) \
		$(if $(PHOTOS_N),--photos $(PHOTOS_N)) $(if $(USERS),--users $(USERS)) $(if $(SECONDS),--seconds $(SECONDS)) \
		$(if $(NO_PAUSE),--no-pause) $(if $(WITH_INDEX),--with-index)

# The search engine alone at sizes no photo folder here reaches: synthetic vectors, a table naming the CPU.
search-scale: $(CORE_STAMP)
	$(PY) -m converters search-scale $(if $(SIZES),--sizes $(SIZES)) $(if $(BACKEND),--backend $(BACKEND)) $(if $(STORED),--stored)

# The C++ client's build tools and libraries, from Debian's packages (arm64 multiarch ones to cross-build).
CLIENT_PACKAGES_x86_64  := cmake g++ libjpeg62-turbo-dev libpng-dev libssl-dev nlohmann-json3-dev
CLIENT_PACKAGES_aarch64 := cmake g++-aarch64-linux-gnu qemu-user nlohmann-json3-dev \
	libjpeg62-turbo-dev:arm64 libpng-dev:arm64 libssl-dev:arm64
# The browser test drives Debian's Chromium through Selenium.
BROWSER_PACKAGES := chromium chromium-driver

# Installs the Debian packages of $(1) that are missing; without root, names them and stops.
define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || printf '%s ' $$p; done); \
	[ -z "$$missing" ] || { \
	  [ "$$(id -u)" = 0 ] || { echo "missing Debian packages: $$missing(installing them needs root: sudo make system-deps ARCH=$(ARCH); make test-core runs the tests that need none of them)" >&2; exit 1; }; \
	  $(if $(filter aarch64,$(ARCH)),dpkg --add-architecture arm64 &&) \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; }
endef

CHECK_ARCH = $(if $(CLIENT_PACKAGES_$(ARCH)),,$(error ARCH=$(ARCH): the client builds for x86_64 or aarch64))

# One apt-get for both lists: two at once would wait on each other's lock (.ci/run makes the set-ups side by side).
system-deps:
	$(CHECK_ARCH)
	$(call apt_install,$(CLIENT_PACKAGES_$(ARCH)) $(BROWSER_PACKAGES))

client-packages:
	$(CHECK_ARCH)
	$(call apt_install,$(CLIENT_PACKAGES_$(ARCH)))

browser-packages:
	$(call apt_install,$(BROWSER_PACKAGES))

client: $(CORE_STAMP) client-packages
	$(PY) clients/cpp/build.py --arch $(ARCH)

parity-client: $(CONVERT_STAMP) client
	$(PY) -m converters parity $(BUNDLE_ARGS) --client $(ARCH)

# tpu-mlir (the BM1684X compiler and simulators) needs Python 3.10 and pins of its own: a venv outside the
# clone, keyed by version and revision (converters/export/sophgo_env.py says what the recipe fixes).
sophgo-env: $(CORE_STAMP)
	$(PY) -m converters.export.sophgo_env

# rknn-toolkit2 (Rockchip's converter and simulator) needs Python 3.11 and pins of its own: a venv outside the
# clone, keyed by version and revision (converters/export/rknn_env.py says what the recipe fixes). It installs in about 30 s,
# so make test makes it and runs the rknn tests.
rknn-env: $(CORE_STAMP)
	$(PY) -m converters.export.rknn_env

# The tests build the x86 client themselves (tests/clients) and drive Chromium: system-deps installs both.
# Two pytest workers, a test file each at a time (a file's tests share its fixtures and its servers): most tests
# wait on a subprocess, a server or the disk part of the time, so one process kept 1.3 of CI's 2 cores busy.
TEST_WORKERS ?= 2
test: $(TEST_STAMP) system-deps sophgo-env rknn-env
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: $(TEST_STAMP) system-deps sophgo-env rknn-env
	$(PY) -m pytest -m "not fullsize" $(PYTEST_ARGS)

# The markers (pyproject.toml) say what a test needs; pytest ends by naming the marked tests it left out.
test-core: $(TEST_STAMP)
	$(PY) -m pytest -m "not sophgo and not client and not browser" $(PYTEST_ARGS)

test-sophgo: $(TEST_STAMP) sophgo-env
	$(PY) -m pytest -m sophgo $(PYTEST_ARGS)

test-rknn: $(TEST_STAMP) rknn-env
	$(PY) -m pytest -m rknn $(PYTEST_ARGS)

test-client: $(TEST_STAMP) client-packages
	$(PY) -m pytest -m client $(PYTEST_ARGS)

test-browser: $(TEST_STAMP) browser-packages
	$(PY) -m pytest -m browser $(PYTEST_ARGS)

# A two-node Ray cluster on loopback; Ray Data comes with the [cluster] extra (about a minute to install).
test-cluster: $(TEST_STAMP)
	$(PY) -m pytest -m cluster $(PYTEST_ARGS)

clean:
	rm -rf artifacts
