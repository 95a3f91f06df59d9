#!/usr/bin/env bash
# Builds one role's image in CI: locks its container images, builds it
# with the registry cache when NODEFORGE_REGISTRY names one
# (oci://$NODEFORGE_REGISTRY/nodeforge-cache: taken from always, pushed to
# when NODEFORGE_PUSH=1), and with NODEFORGE_PUSH=1 publishes the build as
# oci://$NODEFORGE_REGISTRY/ROLE:$GITHUB_SHA (or :latest), printing the
# pinned reference. Run as root from the repository:
#   scripts/ci-build-role.sh ROLE
set -euo pipefail
cd "$(dirname "$0")/.."
role=${1:?usage: scripts/ci-build-role.sh ROLE}
nodeforge=target/debug/nodeforge
"$nodeforge" lock "profiles/$role.toml"
args=(build "profiles/$role.toml" --output out)
if [ -n "${NODEFORGE_REGISTRY:-}" ]; then
  cache="oci://$NODEFORGE_REGISTRY/nodeforge-cache"
  args+=(--cache-from "$cache")
  if [ "${NODEFORGE_PUSH:-0}" = 1 ]; then
    args+=(--cache-to "$cache")
  fi
fi
"$nodeforge" "${args[@]}"
if [ -n "${NODEFORGE_REGISTRY:-}" ] && [ "${NODEFORGE_PUSH:-0}" = 1 ]; then
  "$nodeforge" push out "oci://$NODEFORGE_REGISTRY/$role:${GITHUB_SHA:-latest}" --name "$role" \
    | tee "out/$role.oci"
fi
