#!/usr/bin/env bash
# Make sure the servers the test suite runs against can be found or started.
# The suite uses a running RabbitMQ/Redis when one answers on localhost, and otherwise starts
# throwaway ones from these executables; here we only check the executables are installed.
# Debian's Chromium runs the dashboard's browser test (Playwright drives it; it never
# downloads a browser of its own).
set -euo pipefail

# RabbitMQ 4 (the major version deploy/ ships) in a Debian trixie root file system, made once
# and cached: the broker tests run against it too (scripts/test-rabbitmq4.sh), and the
# deployment smoke test makes its broker image from it. Making it needs root; in CI a failure
# fails the run, elsewhere the RabbitMQ 4 pass is skipped.
if [ "$(id -u)" -eq 0 ]; then
    if ! bash "$(dirname "$0")/rabbitmq4-root.sh" >/dev/null; then
        [ "${CI:-}" != true ] || exit 1
        echo "Could not make the RabbitMQ 4 root file system: the RabbitMQ 4 pass will be skipped." >&2
    fi
else
    echo "Not root: the broker tests will not run against RabbitMQ 4 (scripts/test-rabbitmq4.sh)." >&2
fi

missing=()
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing ${missing[*]} (the test suite needs them)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "The test suite needs: ${missing[*]}." >&2
    echo "Install them (Debian/Ubuntu: sudo apt-get install ${missing[*]})," >&2
    echo "or point COLMENA_TEST_AMQP_URL / COLMENA_TEST_REDIS_URL at running servers." >&2
    [ -n "${COLMENA_TEST_AMQP_URL:-}" ] && [ -n "${COLMENA_TEST_REDIS_URL:-}" ] || exit 1
fi
