# The two set-up commands of the README. Each creates .venv/ on first use and is idempotent.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.segkit-installed
SAMPLE := datasets/cityscapes_sample
DEMO_OUT := demo_out
export NO_ALBUMENTATIONS_UPDATE := 1

WEB_RUNTIME := .web/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs

.PHONY: install test test-fast lint demo sample clean web-runtime

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

lint: install
	$(PY) -m ruff check .

# onnxruntime-web for the in-browser app (segkit.web) and its tests: the version pinned in .web/package.json and
# .web/package-lock.json, from the npm registry into the git-ignored .web/node_modules (no CDN at run time)
web-runtime: $(WEB_RUNTIME)

$(WEB_RUNTIME): .web/package.json .web/package-lock.json
	cd .web && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

test: install lint web-runtime
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# the edit-test loop: everything but the tests marked slow (subprocess commands, DDP, export fixtures)
test-fast: install lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

sample: install
	$(PY) -m segkit.data.sample --out $(SAMPLE) --train 24 --val 8 --height 256 --width 512 --seed 0

demo: sample
	$(PY) train_seg.py experiment=demo hydra.run.dir=$(DEMO_OUT)/train
	$(PY) -m segkit.export checkpoint=$(DEMO_OUT)/train/checkpoints/best.pt output=$(DEMO_OUT)/model.onnx \
		quantize=int8 calibration.root=$(SAMPLE) calibration.images=8 input_size=[256,512]
	$(PY) infer_seg.py checkpoint=$(DEMO_OUT)/model.onnx input=$(SAMPLE)/leftImg8bit/val \
		output=$(DEMO_OUT)/overlays save=overlay
	$(PY) infer_seg.py checkpoint=$(DEMO_OUT)/model.onnx input=$(SAMPLE)/leftImg8bit/val \
		output=$(DEMO_OUT)/overlay.mp4 save=overlay as_video=true

clean:
	rm -rf $(DEMO_OUT) $(SAMPLE) outputs multirun
