#!/bin/sh
# multi-arch's entrypoint: prints who and where it runs, then sleeps until
# TERM (pass --once to exit 0 at once). Run as `/bin/busybox sh
# /entrypoint.sh`, and every applet is called through /bin/busybox: this
# image has no /bin/sh and no applet symlinks.
echo "multi-arch: running as $(/bin/busybox id) on $(/bin/busybox uname -m)"
[ "${1:-}" = --once ] && exit 0
trap 'exit 0' TERM INT
while :; do /bin/busybox sleep 3600 & wait $!; done
