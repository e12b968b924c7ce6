#!/bin/sh
# Entrypoint of user-root and user-unset: exits 1 unless it can write into
# /var/lib/app (root:root, mode 0755), i.e. unless it runs as root; otherwise
# sleeps until TERM (pass --once to exit 0 after the check instead).
echo "running as $(id)"
if ! echo "written by $(id -u)" >/var/lib/app/state; then
  echo "FAIL: cannot write /var/lib/app/state (dir root:root mode 0755): not root" >&2
  exit 1
fi
echo "OK: wrote /var/lib/app/state as UID $(id -u)"
[ "${1:-}" = --once ] && exit 0
trap 'exit 0' TERM INT
while :; do sleep 3600 & wait $!; done
