# Two commands for a newcomer: `make run` and `make test`. Both create .venv and install
# into it exactly what uv.lock says (again whenever pyproject.toml or uv.lock changes).
# uv itself is pinned by hash in requirements-uv.txt and lives in .uv/.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed
UV     := .uv/bin/uv
LATEST := .venv-latest

# uv uses this machine's Python, never one it downloads, and syncs the project into .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: run test lint lock-check pytest test-latest lock bench token clean

$(UV): requirements-uv.txt
	test -x .uv/bin/python || $(PYTHON) -m venv .uv
	.uv/bin/python -m pip install --quiet --require-hashes --no-deps -r requirements-uv.txt
	touch $(UV)

# --locked: refuse to install when pyproject.toml and uv.lock disagree (run `make lock`)
$(STAMP): pyproject.toml uv.lock $(UV)
	$(UV) sync --locked --extra test --python $(PYTHON)
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/gochat

test: lock-check lint pytest

# The checks, with the tools of the venv whose bin/ is $(1)
define lint_with
	$(1)/ruff check .
	$(1)/ruff format --check .
	$(1)/mypy
endef

lint: $(STAMP)
	$(call lint_with,$(VENV)/bin)

lock-check: $(UV)
	$(UV) lock --check

pytest: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Drift: the newest versions pyproject.toml's ranges allow, in a venv of their own (the lock
# is not read), then every check and test. A failure here is news of an upstream release,
# not a broken main: fix it, then `make lock` to take the new versions.
test-latest: $(UV)
	$(UV) venv --quiet --clear --python $(PYTHON) $(LATEST)
	$(UV) pip install --quiet --python $(LATEST)/bin/python --upgrade -e '.[test]'
	$(UV) export --quiet --frozen --no-hashes --no-header --no-annotate --extra test \
	  --no-emit-project | grep '==' | sed 's/ ;.*//' | sort > $(LATEST)/locked.txt
	$(UV) pip freeze --python $(LATEST)/bin/python | grep '==' | sort > $(LATEST)/latest.txt
	@echo "under test, where it differs from uv.lock:"
	@awk -F'==' 'NR == FNR { locked[$$1] = $$2; next } \
	  !($$1 in locked) { print "  " $$1 " " $$2 " (not in the lock)"; n++ } \
	  ($$1 in locked) && locked[$$1] != $$2 { print "  " $$1 " " $$2 " (locked " locked[$$1] ")"; n++ } \
	  END { if (!n) print "  nothing: the lock holds the newest releases" }' \
	  $(LATEST)/locked.txt $(LATEST)/latest.txt
	$(call lint_with,$(LATEST)/bin)
	$(LATEST)/bin/pytest $(PYTEST_ARGS)

# Take the newest versions the ranges allow into uv.lock (then `make test`, and commit both)
lock: $(UV)
	$(UV) lock --upgrade

bench: $(STAMP)
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

token: $(STAMP)
	$(VENV)/bin/gochat token $(TOKEN_ARGS)

clean:
	rm -rf $(VENV) $(LATEST) .uv build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache test-output
