# Two entry points: `make demo` (install + run the embedded demo) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,demo,real,export,tb,vtab,slurm,docs]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/lore demo --out demo_out

test: install
	bash scripts/install_chromium.sh || echo "chromium unavailable: tests/test_report_browser.py will skip"
	bash scripts/install_slurm.sh || echo "slurm unavailable: tests/test_slurm.py will skip"
	$(PY) -m pytest -q

bench: install
	$(VENV)/bin/lore bench --backbone vit_small_patch16_224 --no-pretrained --img-size 224 --batch 8 --methods b-b,vpt-deep,lore --out benchmarks/out

clean:
	rm -rf $(VENV) demo_out benchmarks/out
