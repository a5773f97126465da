# Two commands: `make run` (the whole pipeline on params/default.yaml) and `make test`.
VENV ?= .venv
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

bench: setup
	$(PY) bench/extraction.py
