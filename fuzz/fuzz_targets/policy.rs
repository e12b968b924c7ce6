//! The policy file parser: any bytes give a policy or an error, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(policy) = secure_defaults::policy::parse(data, Path::new("fuzz.yaml")) {
        // A policy that parsed must also be usable: deciding for any namespace must not panic either.
        let labels = std::collections::BTreeMap::from([(
            "secure-defaults.io/inject".to_owned(),
            "enabled".to_owned(),
        )]);
        for namespace in ["default", "kube-system", "payments"] {
            let _ = policy.for_namespace(
                namespace,
                secure_defaults::policy::NamespaceLabels::Known(&labels),
            );
            let _ =
                policy.for_namespace(namespace, secure_defaults::policy::NamespaceLabels::Unknown);
        }
    }
});
