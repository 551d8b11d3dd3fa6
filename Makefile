# Two commands set up everything on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch 2.13.0 is pinned in pyproject.toml: on CPU machines that is a local CPU wheel.
EXTRAS ?= train,serve,dev
STAMP := $(VENV)/.installed-$(shell echo $(EXTRAS) | tr , -)

DATA ?= data/synthetic
IMPRESSIONS ?= 300000
RUN ?= runs/default
MODELS ?= models
MODEL_NAME ?= esmm
# The default model is trained from named tables and their feature spec (docs/spec.md), and
# served by ids: its item table and embedded user store are built beside it, in STORES.
# ROUTE=aliccp trains on the same impressions in the Ali-CCP layout instead (served by features).
ROUTE ?= spec
SPEC ?= $(DATA)/tables/spec.yaml
STORES ?= stores

.PHONY: install redis-server wrk promtool test train run bench bench-train loadtest compose-test chaos overload compare lint clean gpu-wheels gpu-check gpu-image

install: $(STAMP)

# A new top-level package needs a reinstall too: an editable install maps the packages it saw.
$(STAMP): pyproject.toml $(wildcard */__init__.py)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

# Redis tests start their own redis-server on a free port; install the binary where missing.
redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

# The serving benchmark's load comes from wrk, a C load generator (loadtest/wrk.py): on 2 cores
# the Python driver's millisecond of CPU per request would be load taken from the server.
wrk:
	@command -v wrk >/dev/null || { \
	  echo "installing wrk"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }

# The calibration rules (deploy/prometheus/rules.yml) are tested with promtool, from Debian's
# prometheus package (the binaries only: nothing is started).
promtool:
	@command -v promtool >/dev/null || { \
	  echo "installing promtool"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends prometheus; }

test: install redis-server wrk promtool
	$(PY) -m pytest -q --durations=15

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The default model: a generated data set (named tables with their spec, and the same
# impressions in the Ali-CCP layout), ESMM trained on it, wide & deep (each head blended with
# its L2 logistic regression: docs/model-evidence.md), exported to models/NAME/VERSION; with
# ROUTE=spec also its item table and embedded user store, for ranking by ids. ROUTE=aliccp
# trains on the Ali-CCP files; where the combination fields' learned rules rebuild them (the
# generator's do), the model leaves them out and rebuilds them from ids by aligned matches:
# above the model that reads them, and servable by ids (docs/model-evidence.md).
train: install
	test -f $(SPEC) -a -f $(DATA)/sample_skeleton_train.csv || \
	  $(VENV)/bin/ranker generate --out $(DATA) --impressions $(IMPRESSIONS) --seed 0 --layout both
ifeq ($(ROUTE),spec)
	$(VENV)/bin/ranker train --spec $(SPEC) --out $(RUN) --model esmm
	mkdir -p $(STORES)
	$(VENV)/bin/ranker items build --spec $(SPEC) --out $(STORES)/items.npz
	$(VENV)/bin/ranker users build --spec $(SPEC) --out $(STORES)/users.npz
else
	$(VENV)/bin/ranker train --data $(DATA) --out $(RUN) --model esmm
endif
	$(VENV)/bin/ranker export --run $(RUN) --out $(MODELS)/$(MODEL_NAME)/$$(date -u +%Y%m%dT%H%M%SZ)

# Serving benchmark: raw item-scorer ceiling, /rank over HTTP by ids and by features (hit,
# miss), naive baseline. BENCH_VS=DIR also times another model's decode and encode of the same
# traffic in this run (a model of the other route: field numbers against names).
BENCH_VS ?=
bench: install redis-server wrk
	@test -n "$$(find $(MODELS) -name manifest.json -print -quit 2>/dev/null)" || $(MAKE) train
	$(VENV)/bin/ranker bench --model-dir $(MODELS) $(if $(BENCH_VS),--vs $(BENCH_VS),)

# Locust, headless, against a running ranker (start one with `make run`); every request
# (requests.csv), Locust's CSV and HTML report, summary.{json,md} and, for MODE=step, the step
# schedule and latency.png under loadtest/results/ (git-ignored). summarize.py computes each
# step's figures from that step's requests (Locust's history CSV accumulates from the start).
#   MODE=closed USERS=16 | MODE=step STEP_USERS=2 STEP_SECONDS=20 STEPS=8 | MODE=open RATE=40
#   BY=ids (default) | BY=features
HOST ?= http://127.0.0.1:8000
MODE ?= closed
USERS ?= 16
DURATION ?= 60s
STEP_USERS ?= 2
STEP_SECONDS ?= 20
STEPS ?= 8
RATE ?= 40
P99_MS ?= 250
# BY=ids (the default: id-only requests, the stores of `make run`) or BY=features
BY ?= ids
LOCUST_CLASS = $(if $(filter open,$(MODE)),OpenLoop,)$(if $(filter features,$(BY)),Feature,)Recommender
LOCUST_TIME = $(if $(filter step,$(MODE)),$$(( $(STEP_SECONDS) * $(STEPS) + 5 ))s,$(DURATION))
loadtest: install
	$(PY) -m pip install --quiet -e '.[loadtest]'
	rm -rf loadtest/results && mkdir -p loadtest/results
	cd loadtest && LOADTEST_MODE=$(MODE) LOADTEST_RATE=$(RATE) LOADTEST_STEP_USERS=$(STEP_USERS) \
	  LOADTEST_STEP_SECONDS=$(STEP_SECONDS) LOADTEST_STEPS=$(STEPS) \
	  ../$(VENV)/bin/locust -f locustfile.py $(LOCUST_CLASS) --headless --host $(HOST) \
	  -u $(USERS) -r $(USERS) -t $(LOCUST_TIME) --csv results/run --html results/report.html \
	  --only-summary
	$(PY) loadtest/summarize.py --results loadtest/results --p99-ms $(P99_MS)

# Faults under load (loadtest/chaos.py): Redis killed and restarted, the model reloaded, then
# SIGTERM; prints requests by status and the p99, fails on any failed request. CI: CHAOS_SECONDS=20.
CHAOS_SECONDS ?= 60
chaos: install redis-server
	@test -n "$$(find $(MODELS) -name manifest.json -print -quit 2>/dev/null)" || $(MAKE) train
	$(VENV)/bin/ranker chaos --models $(MODELS) --seconds $(CHAOS_SECONDS)

# Saturation, then twice that offered open-loop (loadtest/overload.py): accepted p99, refusals,
# 5xx and RSS into runs/overload/overload.{json,md}. Run alone: it measures the machine.
overload: install
	@test -n "$$(find $(MODELS) -name manifest.json -print -quit 2>/dev/null)" || $(MAKE) train
	$(VENV)/bin/ranker overload --models $(MODELS)

# The compose stack built and run for real under Podman (see tests/compose/stack.sh).
compose-test: install
	bash tests/compose/stack.sh

# Training benchmark: 1M generated impressions, ESMM and BASE, export; figures into README.md.
bench-train: install
	$(VENV)/bin/ranker bench-train --impressions 1000000 --models esmm,base --out runs/bench

# Evidence like the ESMM paper's Table 2 (training/compare.py): every model of COMPARE_MODELS
# (`lr`: the logistic references, one per head, the row every other is differenced against;
# `lr-strong`: L2 logistic regressions by L-BFGS, their strength chosen on validation)
# trained with COMPARE_SEEDS seeds on one generated set (a named regime of training/generate.py's
# PRESETS, with ESM2's action label; COMPARE_SET adds --set NAME=VALUE overrides). The table,
# JSON and plot go to COMPARE_OUT; finished runs there are reused. Run alone: about 1.5 minutes
# of both cores per run at 2M impressions.
COMPARE_PRESET ?= shared
COMPARE_SET ?=
COMPARE_IMPRESSIONS ?= 2000000
COMPARE_DATA ?= data/compare-$(COMPARE_PRESET)
COMPARE_SEEDS ?= 5
# the sparse regime adds the item table's numeric columns (items=) and the paper's ESMM loss
# (the two-tower kinds are blended with their regressions by default; wide=none: the towers alone)
COMPARE_DEFAULT_MODELS = lr-strong,base:wide=none,esmm-ns,esmm:wide=none,division,base,esmm,esmm:inter=none$(if $(COMPARE_SPEC),,$(COMPARE_FIELDS))
# on the Ali-CCP files, where auto leaves the combination fields out (rebuilt by aligned
# matches, what an id-only request serves): the model that reads them, for the difference
comma := ,
COMPARE_FIELDS := $(comma)esmm:inter=counts
COMPARE_SPARSE_MODELS = lr-strong,lr-strong:items=items.parquet,base,base:items=items.parquet,esmm:cvr=0,esmm:wide=none,esmm,esmm:items=items.parquet$(COMPARE_FIELDS)
COMPARE_NOCROSS_MODELS := lr-strong,esmm:inter=none,esmm:inter=attn,esmm:inter=match,base:inter=match
# (the sparse list's items= rows read an Ali-CCP folder's item table: on a spec, the default list)
COMPARE_MODELS ?= $(if $(filter nocross,$(COMPARE_SPEC)),$(COMPARE_NOCROSS_MODELS),$(if $(and $(filter sparse,$(COMPARE_PRESET)),$(if $(COMPARE_SPEC),,1)),$(COMPARE_SPARSE_MODELS),$(COMPARE_DEFAULT_MODELS)))
COMPARE_OUT ?= runs/compare-$(COMPARE_PRESET)$(if $(COMPARE_SPEC),-spec$(if $(filter nocross,$(COMPARE_SPEC)),-nocross))
# COMPARE_SPEC=1: the same set's named tables and their feature spec (tables/spec.yaml; or
# COMPARE_SPEC=FILE, a spec of your own), where the towers' interactions (esmm:inter=attn,
# esmm:inter=match) read shared embedding groups; COMPARE_SPEC=nocross: that spec without its
# crosses (its `side: cross` lines dropped), where exact matches rebuild them
COMPARE_SPEC ?=
COMPARE_SPEC_FILE = $(if $(filter 1,$(COMPARE_SPEC)),$(COMPARE_DATA)/tables/spec.yaml,$(if $(filter nocross,$(COMPARE_SPEC)),$(COMPARE_DATA)/tables/spec-nocross.yaml,$(COMPARE_SPEC)))
compare: install
	test -f $(COMPARE_DATA)/action_train.csv -a -f $(COMPARE_DATA)/tables/spec.yaml || \
	  $(VENV)/bin/ranker generate --out $(COMPARE_DATA) --impressions $(COMPARE_IMPRESSIONS) \
	  --seed 1 --action-label --preset $(COMPARE_PRESET) --layout both $(COMPARE_SET)
	$(if $(filter nocross,$(COMPARE_SPEC)),grep -v "side: cross" $(COMPARE_DATA)/tables/spec.yaml > $(COMPARE_SPEC_FILE))
	$(VENV)/bin/ranker compare $(if $(COMPARE_SPEC),--spec $(COMPARE_SPEC_FILE),--data $(COMPARE_DATA)) \
	  --models $(COMPARE_MODELS) --seeds $(COMPARE_SEEDS) --out $(COMPARE_OUT)

# Serve the newest model under models/ (making the default one first when there is none) by
# ids: the item table and the embedded user store of STORES where they are there (a model
# trained with ROUTE=aliccp is served by features), the in-process user cache; set
# RANKER_REDIS_URL for the shared Redis tier.
run: install
	@test -n "$$(find $(MODELS) -name manifest.json -print -quit 2>/dev/null)" || $(MAKE) train
	env RANKER_MODEL_DIR=$(MODELS) \
	  $$(test -f $(STORES)/items.npz && echo RANKER_ITEM_TABLE=$(STORES)/items.npz) \
	  $$(test -f $(STORES)/users.npz && echo RANKER_USER_STORE=$(STORES)/users.npz) \
	  $(VENV)/bin/ranker serve

clean:
	rm -rf $(VENV) runs data stores .pytest_cache

# The GPU check (gpu/README.md): `make gpu-wheels` here packs what a GPU machine lacks into parts
# of at most 60 MiB (.whl/, git-ignored); `make gpu-check` there installs them and writes the
# figures to $OUT. GPU_CHECK_PROVIDER=cpu rehearses it on a machine without a GPU.
gpu-wheels:
	bash gpu/wheels.sh

gpu-check:
	bash gpu/check.sh

# The GPU compose override's image built with Podman and checked as far as a machine without a
# GPU allows (gpu/image.sh): report in runs/gpu-image/. Downloads several GB: not part of CI.
gpu-image: install
	bash gpu/image.sh
