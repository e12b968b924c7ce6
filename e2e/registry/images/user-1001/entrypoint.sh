#!/bin/sh
# user-1001's entrypoint: exits 1 unless it runs as UID 1001; otherwise
# sleeps until TERM (pass --once to exit 0 after the check instead).
echo "user-1001: running as $(id)"
if ! cat /data/secret; then
  echo "user-1001: FAIL: cannot read /data/secret (dir 1001:1001 mode 0700): not UID 1001" >&2
  exit 1
fi
# Root reads the file too (CAP_DAC_OVERRIDE): refuse it explicitly.
if [ "$(id -u)" != 1001 ]; then
  echo "user-1001: FAIL: running as UID $(id -u), not 1001" >&2
  exit 1
fi
echo "user-1001: OK"
[ "${1:-}" = --once ] && exit 0
# sleep in the background and wait, so TERM (pod deletion) ends it at once.
trap 'exit 0' TERM INT
while :; do sleep 3600 & wait $!; done
