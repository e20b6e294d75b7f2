# geolabel: every install step lives here, so a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_CONFIG ?= demo/geolabel.toml

.PHONY: install demo serve test lint typecheck pytest browser bench bench-import bench-ml bench-al bench-export bench-vectors bench-deploy bench-territory bench-transfer judges docker-judges deploy-test gdal clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install geolabel with its test tools

demo: install  ## start Label Studio, import the sample orthophoto, print URL/login/token (Ctrl-C stops)
	$(BIN)/geolabel --config $(DEMO_CONFIG) demo

serve: install  ## start only the local Label Studio of the demo project
	$(BIN)/geolabel --config $(DEMO_CONFIG) serve

test: install lint typecheck browser judges pytest  ## everything CI runs

lint: install docker-judges  ## ruff, ruff format, the layers contract (import-linter), and docker/ (hadolint, docker-compose config, caddy validate)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	HADOLINT=$(BIN)/hadolint sh docker/lint.sh

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest

# With CI=true a judge that cannot be installed fails the build; elsewhere its tests skip with the reason.
browser:  ## Debian's chromium for the browser tests (needs root)
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| { echo "chromium could not be installed: the browser tests need it"; [ "$$CI" != "true" ]; }

judges:  ## Debian's gdal-bin for the export tests' outside judges, ogrinfo and gdalinfo (needs root)
	@command -v ogrinfo >/dev/null || (apt-get update -qq && apt-get install -y -qq gdal-bin) \
		|| { echo "gdal-bin could not be installed: the export tests need ogrinfo and gdalinfo"; [ "$$CI" != "true" ]; }

docker-judges:  ## Debian's docker-compose and caddy, the outside judges of docker/compose.yaml and docker/Caddyfile (needs root)
	@command -v docker-compose >/dev/null && command -v caddy >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq docker-compose caddy) \
		|| { echo "docker-compose/caddy could not be installed: docker/ is checked without them"; [ "$$CI" != "true" ]; }

# The deployment's topology without containers: Label Studio on a throw-away PostgreSQL database with two
# app processes, the backend under gunicorn, one scheduler and one embedding job, SSRF protection on.
deploy-test: install  ## the docker/ topology run for real without containers (needs PostgreSQL at 127.0.0.1:5432)
	$(BIN)/pytest tests/test_topology.py tests/test_topology_faults.py

gdal:  ## Debian's GDAL command-line tools, the outside judges used by bench/ (needs root)
	command -v gdal_retile.py >/dev/null || (apt-get update -qq && apt-get install -y -qq gdal-bin python3-gdal)

bench-import: install gdal  ## tiles/s and peak RSS against gdal_retile.py on a 20000x20000 raster
	$(BIN)/python bench/bench_import.py

bench-ml: install  ## SAM click latency (cold/warm), embedding throughput, 240-request mixed load test
	$(BIN)/python bench/bench_ml_backend.py

bench-al: install  ## active learning on ../shared/data/fair_hotosm: uncertainty vs random vs random-skip-empty
	$(BIN)/python bench/bench_active_learning.py

bench-transfer: install  ## a new area from an earlier model: scratch vs prior x selection, held-out areas 1 and 5
	$(BIN)/python bench/bench_transfer.py

bench-export: install gdal  ## prediction export on 10000 tiles against gdal_translate -of COG
	$(BIN)/python bench/bench_export.py

bench-vectors: install gdal  ## predictions.gpkg on the 10000-tile export bench against gdal_polygonize.py
	nice $(BIN)/python bench/bench_vectors.py

bench-deploy: install  ## 20 simulated annotators against the deployment topology (PostgreSQL, then SQLite): latencies, nothing lost, RSS, secrets in logs
	$(BIN)/python bench/bench_deployment.py

bench-territory: install  ## predict, round scoring and export of 2048 tiles of 128 px in one process and on 1 and 2 Dask workers; COG writer against odc-geo
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/bench_territory.py

bench: bench-import bench-ml bench-export

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
