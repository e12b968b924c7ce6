//! The one policy the fuzz targets decide with (the admission target, its seed replay in `tests/fuzz_seeds.rs`,
//! and the `mutate` input target): every field, restricted enforcement by namespace label, per-pod exceptions, an
//! exempt namespace, an entry that overrides a default and one that only reports, so that the fuzzer can reach each
//! branch of the decision by choosing a namespace.

use std::path::Path;
use std::sync::LazyLock;

use secure_defaults::policy::Policy;

const POLICY: &str = "\
apiVersion: secure-defaults.io/v1alpha1
kind: Policy
mode: cluster-wide
exemptNamespaces: [legacy]
followPodSecurityLabels: true
podExceptions: [runAsUser]
defaults:
  runAsUser: 65532
  runAsGroup: 65532
  fsGroup: 65532
  fsGroupChangePolicy: OnRootMismatch
  allowPrivilegeEscalation: false
namespaces:
  - match: {names: [payments]}
    set: {runAsUser: 10001}
    podExceptions: [fsGroup, allowPrivilegeEscalation]
  - match: {names: [audit]}
    report: true
";

static PARSED: LazyLock<Policy> = LazyLock::new(|| {
    secure_defaults::policy::parse(POLICY.as_bytes(), Path::new("fuzz-policy.yaml"))
        .unwrap_or_else(|error| panic!("the fuzz targets' own policy does not parse: {error}"))
});

/// The parsed policy; panics (a finding) if it no longer parses.
pub fn policy() -> &'static Policy {
    &PARSED
}
