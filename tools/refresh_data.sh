#!/usr/bin/env bash
# The one step that moves the project's outside facts forward together: the lock files (tools/lock.sh),
# the venvs reinstalled from them, the instance-type catalog regenerated from the locked moto's copy of
# AWS's data (tools/refresh_catalog.py), the schema, and the whole suite. Review `git diff` and commit
# what passes; the scheduled workflow (.github/workflows/refresh.yml) runs this and proposes the change.
#
#   tools/refresh_data.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tools/lock.sh
rm -rf venv venv-checkov venv-floor
python3 -m venv venv && venv/bin/pip install -q -r requirements-test.txt
python3 -m venv venv-checkov && venv-checkov/bin/pip install -q -r requirements-checkov.txt
python3 -m venv venv-floor && venv-floor/bin/pip install -q -r requirements-floor.txt
venv/bin/python tools/refresh_catalog.py
venv/bin/python tools/gen_schema.py
venv/bin/python -m pytest -q
