# Two commands on a fresh machine:
#   make demo   -- build the environment and run the main job offline on the demo model
#   make test   -- build the environment and run the test suite
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-stamp
DB     ?= demo.lancedb

# torch: on this machine kind 2.14.1 / 0.29.1 install from local disk; elsewhere pip fetches them.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev,plots,vocab-build,ray,fast,serve]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lance-concepts demo --db $(DB)

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(DB) demo-data
