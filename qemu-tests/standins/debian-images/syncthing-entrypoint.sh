#!/bin/sh
# Test image (nodeforge qemu-tests): Debian's Syncthing started the way
# syncthing/syncthing's script/docker-entrypoint.sh starts it (checked
# 1.27.12): as root, $HOME is given to PUID:PGID and the command runs as
# that user with HOME set; otherwise the command runs as it is. (The
# image's setcap handling is left out: no test gives PCAP.)
set -eu
[ -n "${UMASK:-}" ] && umask "$UMASK"
if [ "$(id -u)" = 0 ]; then
    chown "${PUID}:${PGID}" "${HOME}" || true
    exec setpriv --reuid="${PUID}" --regid="${PGID}" --clear-groups \
        env HOME="$HOME" "$@"
fi
exec "$@"
