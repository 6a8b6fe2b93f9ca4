#!/bin/sh
# Entrypoint shared by the CPU and GPU images.
# No arguments, or options only: run the service on all interfaces (it refuses to bind beyond
# loopback without API keys, so set DISTCTL_API_KEYS or DISTCTL_API_KEYS_FILE).
# A distctl subcommand (train, eval, model ...): run it through distctl.
# Anything else (bash, python ...): run it as given.
set -eu

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- distctl serve --host "${DISTCTL_BIND_HOST:-0.0.0.0}" --port "${DISTCTL_PORT:-8000}" "$@"
elif ! command -v "$1" >/dev/null 2>&1; then
    set -- distctl "$@"
fi

# The adapter root is a mounted volume; a fresh volume starts empty.
if [ -n "${DISTCTL_ADAPTER_ROOT:-}" ]; then
    mkdir -p "$DISTCTL_ADAPTER_ROOT"
fi

exec "$@"
