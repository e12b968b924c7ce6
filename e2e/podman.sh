# Sourced by the image scripts: how podman is run on the test machines.
# runc, not crun: crun refuses cgroup v1 hosts like the CI machines. The resource limits podman would set by
# default (nproc 1048576, above what an unprivileged CI sandbox may grant) are replaced by modest ones.
# shellcheck shell=bash
PODMAN=(podman --runtime "${PODMAN_RUNTIME:-runc}")
PODMAN_RUN_LIMITS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
