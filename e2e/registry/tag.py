#!/usr/bin/env python3
"""Puts one image's manifest under COUNT more tags (t0, t1, ...) in the registry started from DIR, so a test or
benchmark has thousands of distinct image references that all resolve, for a single PUT each.

    e2e/registry/tag.py DIR NAME COUNT     # NAME: a pushed single-platform image, e.g. user-1001

Plain-HTTP registries only (run.sh start without --tls/--auth). Prints the number of tags written."""
import http.client
import shlex
import sys


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    directory, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    env = {}
    with open(f"{directory}/env") as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("=")
            env[key] = (shlex.split(value) or [""])[0]
    if env.get("REGISTRY_SCHEME") != "http" or env.get("REGISTRY_AUTH") != "0":
        sys.exit(f"{directory}: tag.py needs a plain-HTTP registry without auth")
    host, port = env["REGISTRY_ADDR"].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", f"/v2/{name}/manifests/latest",
                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                                    "application/vnd.docker.distribution.manifest.v2+json"})
    got = conn.getresponse()
    manifest, kind = got.read(), got.getheader("Content-Type")
    if got.status != 200:
        sys.exit(f"GET {name}:latest: HTTP {got.status}")
    for i in range(count):
        conn.request("PUT", f"/v2/{name}/manifests/t{i}", body=manifest, headers={"Content-Type": kind})
        put = conn.getresponse()
        put.read()
        if put.status != 201:
            sys.exit(f"PUT {name}:t{i}: HTTP {put.status}")
    print(count)


if __name__ == "__main__":
    main()
