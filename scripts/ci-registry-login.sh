#!/usr/bin/env bash
# Writes the registry login nodeforge reads (Docker's config format,
# ~/.docker/config.json, mode 0600) from REGISTRY_USER and REGISTRY_TOKEN
# in the environment: the token never goes on a command line. The host is
# NODEFORGE_REGISTRY's first part (e.g. ghcr.io for ghcr.io/owner/fleet).
set -euo pipefail
: "${NODEFORGE_REGISTRY:?set NODEFORGE_REGISTRY, e.g. ghcr.io/OWNER/fleet}"
: "${REGISTRY_USER:?set REGISTRY_USER}"
: "${REGISTRY_TOKEN:?set REGISTRY_TOKEN}"
host=${NODEFORGE_REGISTRY%%/*}
mkdir -p "$HOME/.docker"
umask 077
# printf is a shell builtin: nothing here is another process's argument.
auth=$(printf '%s:%s' "$REGISTRY_USER" "$REGISTRY_TOKEN" | base64 -w0)
printf '{"auths": {"%s": {"auth": "%s"}}}\n' "$host" "$auth" > "$HOME/.docker/config.json"
echo "registry login for $host written to $HOME/.docker/config.json"
