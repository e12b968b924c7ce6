#!/usr/bin/env python3
"""Correctness side by side: each case of tests/cases/engine.yaml marked `peers` (the engine's cases that the
shipped policy applies to) is created (a server-side dry run, so every admission
step runs) in each system's namespace, and what the API server would store is compared with what it stores
under secure-defaults: the pod's securityContext and each container's, in order. Prints a markdown table,
one row per case, one column per other system: `same`, the fields that differ (secure-defaults' value, then
the system's), or the API server's refusal.

    KUBECTL=... KUBECONFIG=... compare.py tests/cases/engine.yaml secure-defaults OTHER...
"""
import json
import os
import re
import subprocess
import sys

import yaml


IMAGE = "registry.k8s.io/pause:3.10"


def stored(namespace, spec):
    # The engine's tests leave images out; the API server needs one.
    spec = json.loads(json.dumps(spec))
    for kind in ("initContainers", "containers"):
        for c in spec.get(kind) or []:
            c.setdefault("image", IMAGE)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "case"}, "spec": spec}
    run = subprocess.run(
        [os.environ["KUBECTL"], "-n", namespace, "create", "--dry-run=server", "-o", "json", "-f", "-"],
        input=json.dumps(pod), capture_output=True, text=True, check=False)
    if run.returncode != 0:
        lines = run.stderr.strip().splitlines() or ["(no message)"]
        # The API server prints the whole securityContext it refused; the reason after it is what matters.
        return {"refused": re.sub(r"Invalid value: \{.*\}: ", "", lines[-1]).lstrip("* ")}
    spec = json.loads(run.stdout)["spec"]
    flat = {}
    for key, value in (spec.get("securityContext") or {}).items():
        flat[f"pod {key}"] = value
    for kind in ("initContainers", "containers"):
        names = [c["name"] for c in spec.get(kind, [])]
        flat[f"{kind} order"] = names
        for c in spec.get(kind, []):
            for key, value in (c.get("securityContext") or {}).items():
                flat[f'{kind} "{c["name"]}" {key}'] = value
    return flat


def describe(ours, theirs):
    if "refused" in theirs:
        return "refused by the API server: " + theirs["refused"].replace("|", "\\|")
    if "refused" in ours:
        return "admitted (secure-defaults' pod is refused: " + ours["refused"].replace("|", "\\|") + ")"
    keys = sorted(set(ours) | set(theirs))
    diffs = [f"{k}: {json.dumps(ours.get(k))} vs {json.dumps(theirs.get(k))}"
             for k in keys if ours.get(k) != theirs.get(k)]
    return "same" if not diffs else "; ".join(diffs)


def main():
    with open(sys.argv[1]) as f:
        cases = [case for case in yaml.safe_load(f)["cases"] if case.get("peers")]
    ours_name, others = sys.argv[2], sys.argv[3:]
    print("| case | " + " | ".join(others) + " |")
    print("|---|" + "---|" * len(others))
    for case in cases:
        spec = case["pod"]["spec"]
        ours = stored(f"bench-{ours_name}", spec)
        cells = [describe(ours, stored(f"bench-{other}", spec)) for other in others]
        print(f'| {case["case"]} | ' + " | ".join(cells) + " |")


main()
