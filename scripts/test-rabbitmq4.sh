#!/usr/bin/env bash
# The broker tests again, against RabbitMQ 4 (the major version deploy/ ships), after the
# main test run has run them against the machine's RabbitMQ. The node runs from a Debian
# trixie root file system made once and cached by scripts/rabbitmq4-root.sh, with the
# settings of deploy/rabbitmq/rabbitmq.conf, so that what we ship is what is tested.
#
#   scripts/test-rabbitmq4.sh [pytest arguments]
#
# Needs root privileges (debootstrap, chroot). In CI (CI=true) a root file system that cannot
# be made fails the run; elsewhere it skips this pass with a warning.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! root="$(bash scripts/rabbitmq4-root.sh)"; then
    if [ "${CI:-}" = true ]; then
        echo "test-rabbitmq4: no RabbitMQ 4 root file system (see above); in CI that fails the run" >&2
        exit 1
    fi
    echo "test-rabbitmq4: skipping the RabbitMQ 4 pass: no root file system (see above)" >&2
    exit 0
fi
echo "test-rabbitmq4: broker tests against RabbitMQ $(cat "$root/.colmena-rabbitmq-version")"

# The modules that test the RabbitMQ transport and the services on it, and the RabbitMQ case
# of the conformance tests every transport passes.
modules=(
    tests/test_rabbitmq_queues.py
    tests/test_rabbitmq_hostile.py
    tests/test_hostile_input.py
    tests/test_thinker_restart.py
    tests/test_amqp_link.py
    tests/test_delivery_contract.py
    tests/test_monitor.py
    tests/test_queue_conformance.py
    tests/test_services.py
    tests/test_cluster.py
)
export COLMENA_TEST_RABBITMQ_ROOT="$root"
export COLMENA_TEST_RABBITMQ_CONFIG="$PWD/deploy/rabbitmq/rabbitmq.conf"
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/pytest -p no:cacheprovider -k "rabbitmq or not (pipe or redis)" "${modules[@]}" "$@"
