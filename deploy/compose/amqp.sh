#!/bin/sh
# Runs COMMAND as SERVICE's own RabbitMQ user: the URL compose.yaml's `access` container wrote
# for it (python -m bindery.bus.access definitions, as scripts/infra.sh's `access` does for
# `make up`), waited for, since podman-compose starts containers without waiting for one another.
# usage: deploy/compose/amqp.sh SERVICE COMMAND...
set -eu
service=$1
shift
url=/run/bindery-amqp/urls/$service.url
until [ -s "$url" ]; do sleep 1; done
BINDERY_AMQP_URL=$(cat "$url")
export BINDERY_AMQP_URL
exec "$@"
