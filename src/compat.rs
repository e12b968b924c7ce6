//! What a Kubernetes release offers that secure-defaults uses or competes with, by minor version: one table for
//! the log line `serve` writes at start and for the README's compatibility table.

use std::fmt;

/// A Kubernetes release, as `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Release {
    /// The major version (1).
    pub major: u32,
    /// The minor version.
    pub minor: u32,
}

impl Release {
    /// Reads the API server's `/version` fields; `minor` may carry a suffix such as `33+` on managed clusters.
    pub fn parse(major: &str, minor: &str) -> Option<Release> {
        let digits = |s: &str| {
            s.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        };
        Some(Release {
            major: digits(major)?,
            minor: digits(minor)?,
        })
    }

    /// What this release offers.
    pub fn features(self) -> Features {
        let at_least = |minor| self.major > 1 || (self.major == 1 && self.minor >= minor);
        Features {
            match_conditions: at_least(30),
            validating_admission_policy: at_least(30),
            mutating_admission_policy: if at_least(36) {
                Availability::Ga
            } else if at_least(34) {
                Availability::OffByDefault
            } else {
                Availability::Missing
            },
        }
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Whether an API is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Not in this release.
    Missing,
    /// Beta, behind a feature gate and an API group version that are off by default.
    OffByDefault,
    /// Generally available.
    Ga,
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Availability::Missing => "missing",
            Availability::OffByDefault => "beta, off by default",
            Availability::Ga => "GA",
        })
    }
}

/// What a release offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// `matchConditions` on webhook configurations (GA in 1.30): without them, mirror and Windows pods still reach
    /// the webhook, which leaves them alone.
    pub match_conditions: bool,
    /// `admissionregistration.k8s.io/v1` ValidatingAdmissionPolicy (GA in 1.30), which the backstops are.
    pub validating_admission_policy: bool,
    /// MutatingAdmissionPolicy, the built-in alternative to a defaulting webhook.
    pub mutating_admission_policy: Availability,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_read_as_the_api_server_reports_them() {
        assert_eq!(
            Release::parse("1", "33+"),
            Some(Release {
                major: 1,
                minor: 33
            })
        );
        assert_eq!(Release::parse("1", ""), None);
        let features = |minor| Release { major: 1, minor }.features();
        assert!(!features(29).validating_admission_policy);
        assert!(features(30).match_conditions);
        assert_eq!(
            features(33).mutating_admission_policy,
            Availability::Missing
        );
        assert_eq!(
            features(35).mutating_admission_policy,
            Availability::OffByDefault
        );
        assert_eq!(features(36).mutating_admission_policy, Availability::Ga);
    }
}
