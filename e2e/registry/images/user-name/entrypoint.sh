#!/bin/sh
# user-name's entrypoint: exits 1 unless it runs as the user app (UID 1500,
# from /etc/passwd); otherwise sleeps until TERM (pass --once to exit 0 after
# the check instead).
echo "user-name: running as $(id)"
if ! cat /home/app/secret; then
  echo "user-name: FAIL: cannot read /home/app/secret (dir app:app mode 0700): not app" >&2
  exit 1
fi
if [ "$(id -un)" != app ] || [ "$(id -u)" != 1500 ]; then
  echo "user-name: FAIL: running as $(id -un) (UID $(id -u)), not app (1500)" >&2
  exit 1
fi
echo "user-name: OK"
[ "${1:-}" = --once ] && exit 0
trap 'exit 0' TERM INT
while :; do sleep 3600 & wait $!; done
