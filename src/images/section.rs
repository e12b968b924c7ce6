//! The policy's `images:` section, validated while it is read: which registries may be asked, how long a review
//! may wait for them, how much is cached, and what a root image gets. Without the section nothing is looked up.

use std::path::PathBuf;

use serde::Deserialize;

use crate::policy::file::checked_from;

/// The `images:` section.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImagesPolicy {
    /// Globs over `registry/repository` (`registry.example.com/team/*`): only these images are looked up.
    pub registries: Registries,
    /// How long one review may wait for its images, in milliseconds: well under the webhook's `timeoutSeconds`.
    #[serde(default)]
    pub timeout_ms: Budget,
    /// What a container whose image runs as root gets.
    #[serde(default)]
    pub root: RootImages,
    /// How many images' users are kept.
    #[serde(default)]
    pub cache_entries: CacheEntries,
    /// How long a tag's answer is kept, in seconds (an image named by digest is kept until evicted).
    #[serde(default)]
    pub tag_ttl_seconds: TagTtl,
    /// Registries (`host` or `host:port`) asked over plain HTTP: for a local test registry only.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// A docker config file (`{"auths": {"registry": {"auth": "base64(user:password)"}}}`), mounted from a
    /// Secret: the only credentials used.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// PEM certificates trusted for registries over TLS, besides the system's roots: for a registry with its own
    /// certificate authority.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The platform of a multi-arch image where the pod does not pin `kubernetes.io/arch`.
    #[serde(default)]
    pub platform: Platform,
}

/// What a container whose image runs as root gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootImages {
    /// The pod-level default applies to it, as without images (with a warning naming the image).
    #[default]
    Default,
    /// The engine states `runAsUser: 0` on it, so it runs as its image says while the others get the default.
    Keep,
}

/// The registry globs: at least one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registries(Vec<glob::Pattern>);
checked_from!(Registries, Vec<String>);

impl TryFrom<Vec<String>> for Registries {
    type Error = String;
    fn try_from(globs: Vec<String>) -> Result<Self, String> {
        if globs.is_empty() {
            return Err("no registry: name at least one (`registry.example.com/*`)".to_owned());
        }
        globs
            .iter()
            .map(|g| glob::Pattern::new(g).map_err(|e| format!("{g:?} is not a glob: {e}")))
            .collect::<Result<_, _>>()
            .map(Registries)
    }
}

impl Registries {
    /// Whether `repository` (`registry/path`, as [`crate::images::lookup`] names it) may be asked.
    pub fn allow(&self, repository: &str) -> bool {
        self.0.iter().any(|g| g.matches(repository))
    }
}

impl std::fmt::Display for Registries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let globs: Vec<&str> = self.0.iter().map(glob::Pattern::as_str).collect();
        f.write_str(&globs.join(", "))
    }
}

macro_rules! bounded {
    ($name:ident, $what:literal, $min:expr, $max:expr, $default:expr) => {
        #[doc = $what]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name(pub u64);
        checked_from!($name, u64);

        impl TryFrom<u64> for $name {
            type Error = String;
            fn try_from(n: u64) -> Result<Self, String> {
                if ($min..=$max).contains(&n) {
                    Ok($name(n))
                } else {
                    Err(format!("{n} is outside {}..={}", $min, $max))
                }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name($default)
            }
        }
    };
}

bounded!(
    Budget,
    "A review's wait for its images, in milliseconds (default 500; at most 5000, half the webhook's default timeout).",
    1,
    5_000,
    500
);
bounded!(
    CacheEntries,
    "How many images' users are cached (default 10000).",
    1,
    1_000_000,
    10_000
);
bounded!(
    TagTtl,
    "How long a tag's answer is kept, in seconds (default 300).",
    1,
    86_400,
    300
);

/// `os/architecture[/variant]`, as an image index names its manifests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v8`, where one is named.
    pub variant: Option<String>,
}
checked_from!(Platform, String);

impl TryFrom<String> for Platform {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let ok =
            |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: None,
            }),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: Some((*variant).to_owned()),
            }),
            _ => Err(format!(
                "{text:?} is not a platform (os/architecture, such as linux/amd64)"
            )),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(variant) => write!(f, "/{variant}"),
            None => Ok(()),
        }
    }
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            os: "linux".to_owned(),
            architecture: "amd64".to_owned(),
            variant: None,
        }
    }
}
