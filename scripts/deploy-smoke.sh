#!/usr/bin/env bash
# Deployment smoke test: builds the images, runs deploy/compose.yaml, sends one task through
# the gateway, then removes everything it made. Options: python3 deploy/smoke.py --help.
#
#   scripts/deploy-smoke.sh                 # the whole stack (needs the services)
#   scripts/deploy-smoke.sh --stage infra   # images, broker and Redis only
set -euo pipefail
cd "$(dirname "$0")/.."
python=python3
if [ -x .venv/bin/python ]; then
    python=.venv/bin/python
fi
exec "$python" deploy/smoke.py "$@"
