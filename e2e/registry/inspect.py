#!/usr/bin/env python3
"""Reads an image's manifest (or index) and config from a registry started by
e2e/registry/run.sh, over the registry's HTTP API with curl, and prints what
the webhook will need as JSON:

    e2e/registry/inspect.py DIR NAME[:TAG|@DIGEST]

    {"ref": "127.0.0.1:PORT/NAME:TAG", "repository": NAME, "reference": TAG,
     "digest": "sha256:...", "mediaType": "...", "index": false,
     "manifests": [{"digest", "mediaType", "platform": {"os", "architecture"[, "variant"]},
                    "config": {"digest", "mediaType", "os", "architecture", "user"}}]}

"manifests" has one entry for a plain manifest and one per entry of an index
(OCI image index or Docker manifest list). "user" is the config's
config.User, "" when the image sets none. Every digest is checked against
the bytes received (and a manifest's against the registry's
Docker-Content-Digest header), so a wrong answer fails here rather than in a
test. Exits 1 with a message on stderr on any error.

curl, not urllib: the same client (and TLS/auth options) a person debugging
the registry would use. Credentials go to curl through a config on stdin,
never on its command line.
"""

import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile

# Everything a registry may answer for a tag, as containerd asks for it.
ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}


def die(msg):
    print(f"[registry-inspect] ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


def read_env(path):
    """DIR/env: KEY=value lines, shell-quoted by run.sh (printf %q)."""
    env = {}
    try:
        with open(path) as f:
            for line in f:
                key, sep, value = line.rstrip("\n").partition("=")
                if sep:
                    words = shlex.split(value)
                    env[key] = words[0] if words else ""
    except OSError as e:
        die(f"cannot read {path} (is the registry started? e2e/registry/run.sh start DIR): {e}")
    return env


class Registry:
    def __init__(self, env):
        self.url = env["REGISTRY_URL"]
        self.addr = env["REGISTRY_ADDR"]
        self.ca = env.get("REGISTRY_CA", "")
        self.user = env.get("REGISTRY_USER", "")
        self.password = env.get("REGISTRY_PASSWORD", "")

    def get(self, path, accept=None):
        """GET path; returns (headers as a lower-cased dict, body bytes)."""
        with tempfile.TemporaryDirectory() as tmp:
            headers_file = os.path.join(tmp, "headers")
            body_file = os.path.join(tmp, "body")
            cmd = ["curl", "--silent", "--show-error", "--fail", "--location", "--max-time", "20",
                   "--dump-header", headers_file, "--output", body_file, "--config", "-"]
            if self.ca:
                cmd += ["--cacert", self.ca]
            if accept:
                cmd += ["--header", f"Accept: {accept}"]
            cmd.append(self.url + path)
            config = f'user = "{self.user}:{self.password}"\n' if self.user else ""
            r = subprocess.run(cmd, input=config, text=True, capture_output=True)
            if r.returncode != 0:
                die(f"GET {self.url}{path}: {r.stderr.strip() or f'curl exit {r.returncode}'}")
            headers = {}
            with open(headers_file, encoding="latin-1") as f:
                # With --location the file holds each response's headers; keep the last.
                for line in f:
                    if line.startswith("HTTP/"):
                        headers = {}
                    key, sep, value = line.partition(":")
                    if sep:
                        headers[key.strip().lower()] = value.strip()
            with open(body_file, "rb") as f:
                return headers, f.read()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def get_manifest(reg, repo, reference):
    headers, body = reg.get(f"/v2/{repo}/manifests/{reference}", ACCEPT)
    digest = sha256(body)
    served = headers.get("docker-content-digest", "")
    if served != digest:
        die(f"{repo}:{reference}: Docker-Content-Digest {served or '(none)'} but the body hashes to {digest}")
    if reference.startswith("sha256:") and reference != digest:
        die(f"{repo}@{reference}: the body hashes to {digest}")
    doc = json.loads(body)
    media_type = doc.get("mediaType") or headers.get("content-type", "")
    return digest, media_type, doc


def get_config(reg, repo, manifest):
    desc = manifest.get("config") or die(f"{repo}: manifest without a config")
    _, body = reg.get(f"/v2/{repo}/blobs/{desc['digest']}")
    if sha256(body) != desc["digest"]:
        die(f"{repo}: config blob {desc['digest']} hashes to {sha256(body)}")
    if len(body) != desc.get("size", len(body)):
        die(f"{repo}: config blob {desc['digest']} is {len(body)} bytes, the manifest says {desc['size']}")
    config = json.loads(body)
    return {
        "digest": desc["digest"],
        "mediaType": desc.get("mediaType", ""),
        "os": config.get("os", ""),
        "architecture": config.get("architecture", ""),
        # An image without USER has no "User" (or an empty one): both mean root.
        "user": (config.get("config") or {}).get("User", "") or "",
    }


def main():
    if len(sys.argv) != 3:
        print(f"usage: {sys.argv[0]} DIR NAME[:TAG|@DIGEST]", file=sys.stderr)
        sys.exit(2)
    reg = Registry(read_env(os.path.join(sys.argv[1], "env")))
    name = sys.argv[2]
    if "@" in name:
        repo, reference = name.split("@", 1)
        sep = "@"
    elif ":" in name.rsplit("/", 1)[-1]:
        repo, reference = name.rsplit(":", 1)
        sep = ":"
    else:
        repo, reference, sep = name, "latest", ":"

    digest, media_type, doc = get_manifest(reg, repo, reference)
    out = {
        "ref": f"{reg.addr}/{repo}{sep}{reference}",
        "repository": repo,
        "reference": reference,
        "digest": digest,
        "mediaType": media_type,
        "index": media_type in INDEX_TYPES,
        "manifests": [],
    }
    if media_type in INDEX_TYPES:
        for entry in doc.get("manifests", []):
            child_digest, child_type, child = get_manifest(reg, repo, entry["digest"])
            if child_type not in MANIFEST_TYPES:
                die(f"{repo}@{child_digest}: unexpected media type {child_type} in an index")
            config = get_config(reg, repo, child)
            platform = entry.get("platform", {})
            if (platform.get("os"), platform.get("architecture")) != (config["os"], config["architecture"]):
                die(f"{repo}@{child_digest}: the index says {platform} but its config {config['os']}/{config['architecture']}")
            out["manifests"].append(
                {"digest": child_digest, "mediaType": child_type, "platform": platform, "config": config})
    elif media_type in MANIFEST_TYPES:
        config = get_config(reg, repo, doc)
        out["manifests"].append({
            "digest": digest,
            "mediaType": media_type,
            "platform": {"os": config["os"], "architecture": config["architecture"]},
            "config": config,
        })
    else:
        die(f"{repo}:{reference}: unexpected media type {media_type!r}")
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
