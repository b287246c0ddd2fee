#!/bin/sh
# Entry point of the compose broker: writes deploy/rabbitmq/definitions.json with the
# passwords from the environment to where users.conf loads it at boot, then starts RabbitMQ
# (through the image's own entry point when it has one). One broker user per service kind
# (thinker, task server, gateway, monitor), none an administrator; RABBITMQ_DEFAULT_USER is
# the operators'.
# Passwords must be URL-safe (letters, digits, - . _ ~): they also go into broker URLs.
set -eu
template=${COLMENA_DEFINITIONS_TEMPLATE:-/etc/colmena/definitions.json}
out=${COLMENA_DEFINITIONS_FILE:-/tmp/colmena-definitions.json}
for name in RABBITMQ_DEFAULT_USER RABBITMQ_DEFAULT_PASS COLMENA_THINKER_BROKER_PASSWORD \
    COLMENA_TASKSERVER_BROKER_PASSWORD COLMENA_GATEWAY_BROKER_PASSWORD \
    COLMENA_MONITOR_BROKER_PASSWORD; do
    eval "value=\${$name:-}"
    case "$value" in
        "") echo "start-with-users.sh: $name is not set" >&2; exit 1 ;;
        *[!A-Za-z0-9._~-]*) echo "start-with-users.sh: $name must be URL-safe" >&2; exit 1 ;;
    esac
done
umask 077
sed -e "s|@RABBITMQ_DEFAULT_USER@|$RABBITMQ_DEFAULT_USER|g" \
    -e "s|@RABBITMQ_DEFAULT_PASS@|$RABBITMQ_DEFAULT_PASS|g" \
    -e "s|@COLMENA_THINKER_BROKER_PASSWORD@|$COLMENA_THINKER_BROKER_PASSWORD|g" \
    -e "s|@COLMENA_TASKSERVER_BROKER_PASSWORD@|$COLMENA_TASKSERVER_BROKER_PASSWORD|g" \
    -e "s|@COLMENA_GATEWAY_BROKER_PASSWORD@|$COLMENA_GATEWAY_BROKER_PASSWORD|g" \
    -e "s|@COLMENA_MONITOR_BROKER_PASSWORD@|$COLMENA_MONITOR_BROKER_PASSWORD|g" \
    "$template" > "$out"
if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then chown rabbitmq:rabbitmq "$out"; fi
# The official image starts through its entry point; an image without one (the smoke test's,
# made from Debian's package) runs the command itself.
if command -v docker-entrypoint.sh >/dev/null 2>&1; then exec docker-entrypoint.sh "$@"; fi
exec "$@"
