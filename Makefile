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

.PHONY: demo test venv clean browser

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev,plots,vocab-build,ray,fast,serve]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lance-concepts demo --db $(DB)

test: $(STAMP) browser
	$(PY) -m pytest -q

# headless Chromium for the explorer's browser tests (tests/test_serve.py skip without it)
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  { (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 || \
	    echo "could not install chromium: the browser tests will be skipped"; }

clean:
	rm -rf $(VENV) $(DB) $(DB).thumbs demo-data
