# Two commands: `make run` (the whole pipeline on params/default.yaml) and `make test`.
VENV ?= .venv
NANOGCG ?= .venv-nanogcg
PY := $(VENV)/bin/python
PARAMS ?= params/default.yaml

.PHONY: setup run test bench
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv --system-site-packages $(VENV)
	$(VENV)/bin/pip install -c constraints.txt -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

run: setup  ## every stage of $(PARAMS); publishes notebooks/ and figures/<name>/
	$(PY) -m es2_lib run $(PARAMS) --publish

test: setup  ## unit tests, the embedded-model checks, and every notebook on params/smoke.yaml
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: setup $(NANOGCG)/bin/nanogcg-installed  ## every benchmark of bench/README.md, on the embedded model
	$(PY) bench/extraction.py
	$(PY) bench/es2_throughput.py
	$(PY) bench/gcg.py --steps 10 --prompt-index 0 1 2 3 --check-screening 3 --nanogcg-modes prefix-cache --nanogcg-python $(NANOGCG)/bin/python

$(NANOGCG)/bin/nanogcg-installed:  # GCG's baseline in its own environment: nanogcg pins transformers <= 4.47
	python3 -m venv $(NANOGCG)
	$(NANOGCG)/bin/pip install torch==2.13.0 nanogcg==0.3.0 transformers==4.47.1
	touch $@
