# The course in two commands: `make book` and `make test`. Both create .venv on first use.
PYTHON ?= python3
PORT   ?= 8000
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help book test lint format clean distclean exercises solutions serve pdf

help:
	@echo "make book   build the executed book into _build/html (creates $(VENV) on first use)"
	@echo "make test   lint, unit tests, notebook checks, book build and browser checks"
	@echo "make format apply ruff's formatting and safe fixes"
	@echo "make exercises  generate exercises/ (and the grader's references) from solutions/"
	@echo "make solutions  re-execute solutions/ to store their check outputs, then make exercises"
	@echo "make serve  preview the built book at http://127.0.0.1:$(PORT) (PORT=$(PORT))"
	@echo "make pdf    the whole book as one PDF, _build/pdf/book.pdf (printed by Chromium)"
	@echo "make clean  remove the built book and caches"

# A local CPU wheel of torch (a pip find-links folder, as on the course's CI machines) is taken
# when there is one: it installs in seconds where a CUDA build is gigabytes. Elsewhere pip
# installs an ordinary torch from PyPI with the other requirements.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "Python >= 3.10 is needed; set PYTHON=/path/to/python3.x"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c 'import torch' 2>/dev/null || \
		$(BIN)/python -m pip install --quiet --no-index --no-deps 'torch>=2.1' 2>/dev/null || \
		echo "no local torch wheel: pip will install torch from PyPI"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

book: $(STAMP)
	$(BIN)/python tools/build_book.py --strict

# Preview of the built book as it will be published (Ctrl-C stops it).
serve:
	@test -f _build/html/index.html || { echo "no built book: run make book first"; exit 1; }
	@echo "serving _build/html at http://127.0.0.1:$(PORT)/ (Ctrl-C to stop)"
	$(PYTHON) -m http.server $(PORT) --bind 127.0.0.1 --directory _build/html

# The book as one PDF: each page of the table of contents printed by the machine's Chromium
# (Debian/Ubuntu: apt-get install chromium), then joined.
pdf: book
	@$(BIN)/python -c 'import playwright, pypdf' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[pdf]'
	$(BIN)/python tools/print_book.py --output _build/pdf/book.pdf

exercises: $(STAMP)
	$(BIN)/python -m coursepkg.grading.generate

# After editing a solution: execute it, keep its check cells' outputs, regenerate exercises/.
solutions: $(STAMP)
	$(BIN)/python -m coursepkg.grading.record solutions/*.ipynb
	$(BIN)/python -m coursepkg.grading.generate

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest --durations=25

clean:
	rm -rf _build .pytest_cache .ruff_cache

distclean: clean
	rm -rf $(VENV) *.egg-info
