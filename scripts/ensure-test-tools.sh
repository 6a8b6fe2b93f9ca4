#!/usr/bin/env bash
# Installs the command-line tools the deploy and e2e tests run when they are missing:
# Debian's docker-compose (validates deploy/*.yml) and prometheus (promtool, and the server the
# e2e test starts on loopback). Idempotent and quiet; `make test` calls it.
set -euo pipefail

missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    missing+=(prometheus)
fi
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$EUID" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-test-tools: missing ${missing[*]}; install with:" >&2
    echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

log=$(mktemp)
policy=/usr/sbin/policy-rc.d
created_policy=
cleanup() {
    rm -f "$log"
    if [ -n "$created_policy" ]; then rm -f "$policy"; fi
}
trap cleanup EXIT

# The tests run their own Prometheus on a random loopback port; keep the package's service from
# starting (policy-rc.d answers "not allowed" to invoke-rc.d and deb-systemd-invoke).
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    created_policy=1
fi

# Quiet unless it fails: then show what apt said.
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
    >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
fi

# On a host with systemd, also keep it from starting at boot.
if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
