//! Reading images' users from their registries (the OCI distribution API, through the `oci-client` crate), with a
//! bounded cache, within a review's time budget.
//!
//! - Only images whose `registry/repository` matches `images.registries` are asked for; the credentials are those
//!   of the one docker config file the policy names, never a pod's pull secrets (reading those would need every
//!   namespace's Secrets).
//! - A multi-arch index is resolved to the pod's platform (its `kubernetes.io/arch` node selector), else the
//!   policy's.
//! - Answers are cached: an image named by digest until evicted, a tag for `tagTtlSeconds`. Failures are not
//!   cached. Concurrent misses for one image share one request, and a lookup that outlives its review's budget
//!   runs on, so the next pod finds it cached.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;

use super::{ImageUser, Images, ImagesPolicy, Platform, Unknown};

/// The largest image configuration read; real ones are a few KiB.
const MAX_CONFIG_BYTES: i64 = 1 << 20;

/// Why a lookup service could not be built from the policy.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The credentials file could not be read.
    #[error("cannot read the registry credentials {path}")]
    ReadCredentials {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The credentials file is not a docker config.
    #[error(
        "{path} is not a docker config file (auths: {{registry: {{auth: base64(user:password)}}}})"
    )]
    ParseCredentials {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The registry client could not be built (a CA file that is not PEM certificates).
    #[error("cannot set up the registry client")]
    SetUpClient {
        /// The cause.
        #[source]
        source: OciDistributionError,
    },
    /// The CA file is not PEM.
    #[error("{path} is not a PEM file of CA certificates")]
    ParseCa {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The CA file holds no certificate.
    #[error("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCaCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The CA file could not be read.
    #[error("cannot read the registry CA file {path}")]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What is cached per image and platform: the user, or a failure we do not retry for a while.
type Answer = Result<ImageUser, Unknown>;

/// Looks images up for reviews; cheap to clone.
#[derive(Clone)]
pub struct Lookup {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookup")
            .field("policy", &self.inner.policy)
            .field("cached", &self.inner.cache.entry_count())
            .finish()
    }
}

struct Inner {
    policy: ImagesPolicy,
    /// The PEM of `images.caFile`, read once.
    ca: Option<Vec<u8>>,
    client: std::sync::Mutex<Renewed>,
    auths: Vec<(String, RegistryAuth)>,
    cache: moka::future::Cache<String, Answer>,
}

/// oci-client keeps the token (or basic credentials) of every repository it has read, keyed by repository, and
/// never drops one; the image cache is bounded but that map is not, so a server that reads thousands of distinct
/// repositories over its life would hold them all. The client is therefore replaced after `RENEW_AFTER` registry
/// reads, which bounds the map and costs one token request per repository afterwards (the image cache spares
/// most reads anyway).
struct Renewed {
    client: Client,
    reads: u32,
}

const RENEW_AFTER: u32 = 1024;

/// A tag's answer expires after the policy's TTL; a digest's stays until evicted.
struct Expiry(Duration);

impl moka::Expiry<String, Answer> for Expiry {
    fn expire_after_create(&self, key: &String, _: &Answer, _: Instant) -> Option<Duration> {
        (!key.contains('@')).then_some(self.0)
    }
}

impl Lookup {
    /// A lookup service for `policy`: reads its credentials and CA files now.
    pub fn new(policy: &ImagesPolicy) -> Result<Lookup, LookupError> {
        // reqwest's rustls needs a process-wide provider; the server's own TLS uses ring too.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let auths = match &policy.credentials {
            Some(path) => read_credentials(path)?,
            None => Vec::new(),
        };
        let ca = match &policy.ca_file {
            Some(path) => Some(read_ca(path)?),
            None => None,
        };
        let cache = moka::future::Cache::builder()
            .max_capacity(policy.cache_entries.0)
            .expire_after(Expiry(Duration::from_secs(policy.tag_ttl_seconds.0)))
            .build();
        let client = Client::try_from(client_config(policy, ca.as_deref()))
            .map_err(|source| LookupError::SetUpClient { source })?;
        let client = std::sync::Mutex::new(Renewed { client, reads: 0 });
        Ok(Lookup {
            inner: Arc::new(Inner {
                policy: policy.clone(),
                ca,
                client,
                auths,
                cache,
            }),
        })
    }

    /// The registry client for one lookup: a new one every `RENEW_AFTER` lookups (see `Renewed`).
    fn client(&self) -> Client {
        let mut renewed = self
            .inner
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        renewed.reads += 1;
        if renewed.reads > RENEW_AFTER {
            // The same settings built the first client, so this does not fail; if it did, the old one stays.
            if let Ok(client) =
                Client::try_from(client_config(&self.inner.policy, self.inner.ca.as_deref()))
            {
                renewed.client = client;
            }
            renewed.reads = 1;
        }
        renewed.client.clone()
    }

    /// The service for `policy`'s `images:` section: `previous` where the section is the same (so a policy reload
    /// keeps the cache), a new one where it changed, none without a section.
    pub fn for_policy(
        policy: Option<&ImagesPolicy>,
        previous: Option<&Lookup>,
    ) -> Result<Option<Lookup>, LookupError> {
        match (policy, previous) {
            (None, _) => Ok(None),
            (Some(section), Some(previous)) if previous.policy() == section => {
                Ok(Some(previous.clone()))
            }
            (Some(section), _) => Lookup::new(section).map(Some),
        }
    }

    /// How many images' users the cache holds (moka's count, which trails inserts and evictions slightly).
    pub fn cached(&self) -> u64 {
        self.inner.cache.entry_count()
    }

    /// The policy this service was built from.
    pub fn policy(&self) -> &ImagesPolicy {
        &self.inner.policy
    }

    /// The users of `images` on `platform` (the policy's where `None`), each known or not within the budget.
    pub async fn users<'i>(
        &self,
        images: impl IntoIterator<Item = &'i str>,
        platform: Option<&Platform>,
    ) -> Images {
        let platform = platform.unwrap_or(&self.inner.policy.platform).clone();
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.inner.policy.timeout_ms.0);
        let mut pending = Vec::new();
        let images: std::collections::BTreeSet<&str> = images.into_iter().collect();
        for image in images {
            let this = self.clone();
            let (name, platform) = (image.to_owned(), platform.clone());
            let task = tokio::spawn(async move { this.user(&name, &platform).await });
            pending.push((image.to_owned(), task));
        }
        let mut out = Images {
            root: self.inner.policy.root,
            ..Images::default()
        };
        for (image, task) in pending {
            let answer = match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err(Unknown::Failed),
                Err(_) => Err(Unknown::Timeout),
            };
            out.users.insert(image, answer);
        }
        out
    }

    /// One image's user, from the cache or its registry.
    async fn user(&self, image: &str, platform: &Platform) -> Answer {
        let Ok(reference) = image.parse::<Reference>() else {
            return Err(Unknown::BadReference);
        };
        let repository = format!("{}/{}", reference.registry(), reference.repository());
        if !self.inner.policy.registries.allow(&repository) {
            return Err(Unknown::NotAllowed);
        }
        let key = format!("{}/{}/{}", platform, repository, tag_or_digest(&reference));
        let fetch = async {
            match self.fetch(&reference, platform).await {
                // Only answers are cached; a failure is asked again by the next pod.
                Ok(user) => Ok(Ok(user)),
                Err(why) => Err(why),
            }
        };
        match self.inner.cache.try_get_with(key, fetch).await {
            Ok(answer) => answer,
            Err(why) => Err(*why),
        }
    }

    async fn fetch(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<ImageUser, Unknown> {
        let client = &self.client();
        let auth = self.auth(reference.resolve_registry());
        let (manifest, _) = client
            .pull_manifest(reference, &auth)
            .await
            .map_err(classify)?;
        let (manifest, at) = match manifest {
            OciManifest::Image(manifest) => (manifest, reference.clone()),
            OciManifest::ImageIndex(index) => {
                let entry = index
                    .manifests
                    .iter()
                    .find(|m| m.platform.as_ref().is_some_and(|p| matches(p, platform)))
                    .ok_or(Unknown::NotFound)?;
                let at = Reference::with_digest(
                    reference.registry().to_owned(),
                    reference.repository().to_owned(),
                    entry.digest.clone(),
                );
                let (manifest, _) = client
                    .pull_image_manifest(&at, &auth)
                    .await
                    .map_err(classify)?;
                (manifest, at)
            }
        };
        if manifest.config.size > MAX_CONFIG_BYTES {
            return Err(Unknown::TooLarge);
        }
        let mut config = Vec::new();
        client
            .pull_blob(&at, &manifest.config, &mut config)
            .await
            .map_err(classify)?;
        #[derive(Deserialize)]
        struct ImageConfig {
            #[serde(default)]
            config: Option<Inner>,
        }
        #[derive(Deserialize)]
        struct Inner {
            #[serde(rename = "User", default)]
            user: Option<String>,
        }
        let config: ImageConfig = serde_json::from_slice(&config).map_err(|_| Unknown::Failed)?;
        let user = config.config.and_then(|c| c.user).unwrap_or_default();
        Ok(ImageUser::parse(&user))
    }

    fn auth(&self, registry: &str) -> RegistryAuth {
        self.inner
            .auths
            .iter()
            .find(|(host, _)| host == registry)
            .map_or(RegistryAuth::Anonymous, |(_, auth)| auth.clone())
    }
}

/// The registry client's settings: plain HTTP only for the listed registries, the policy's CA besides the
/// system's roots, and timeouts that let a lookup outlive its review (it fills the cache), but not by much.
fn client_config(policy: &ImagesPolicy, ca: Option<&[u8]>) -> oci_client::client::ClientConfig {
    let budget = Duration::from_millis(policy.timeout_ms.0);
    oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::HttpsExcept(
            policy.insecure_registries.clone(),
        ),
        extra_root_certificates: ca
            .map(|data| oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data: data.to_vec(),
            })
            .into_iter()
            .collect(),
        connect_timeout: Some(budget.max(Duration::from_secs(2))),
        read_timeout: Some(Duration::from_secs(10)),
        platform_resolver: None,
        ..Default::default()
    }
}

/// The CA file's PEM, refused unless it holds at least one certificate (reqwest would take a file with none).
fn read_ca(path: &Path) -> Result<Vec<u8>, LookupError> {
    use rustls_pki_types::pem::PemObject as _;
    let data = std::fs::read(path).map_err(|source| LookupError::ReadCa {
        path: path.to_owned(),
        source,
    })?;
    let certificates = rustls_pki_types::CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| LookupError::ParseCa {
            path: path.to_owned(),
            source,
        })?;
    if certificates.is_empty() {
        return Err(LookupError::NoCaCertificate {
            path: path.to_owned(),
        });
    }
    Ok(data)
}

fn tag_or_digest(reference: &Reference) -> String {
    match (reference.digest(), reference.tag()) {
        (Some(digest), _) => format!("@{digest}"),
        (None, Some(tag)) => format!(":{tag}"),
        (None, None) => ":latest".to_owned(),
    }
}

fn matches(entry: &oci_client::manifest::Platform, platform: &Platform) -> bool {
    entry.os.to_string() == platform.os
        && entry.architecture.to_string() == platform.architecture
        && (platform.variant.is_none() || entry.variant == platform.variant)
}

/// A registry's failure, as a bounded reason.
fn classify(error: OciDistributionError) -> Unknown {
    match error {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => Unknown::Unauthorized,
        OciDistributionError::ImageManifestNotFoundError(_) => Unknown::NotFound,
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes = envelope.errors.iter().map(|e| &e.code);
            let mut out = Unknown::Failed;
            for code in codes {
                match code {
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown => out = Unknown::NotFound,
                    OciErrorCode::Unauthorized | OciErrorCode::Denied => {
                        out = Unknown::Unauthorized;
                    }
                    _ => {}
                }
            }
            out
        }
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => Unknown::Unauthorized,
        OciDistributionError::ServerError { code: 404, .. } => Unknown::NotFound,
        _ => Unknown::Failed,
    }
}

/// A docker config file's `auths`: registry host -> credentials.
fn read_credentials(path: &Path) -> Result<Vec<(String, RegistryAuth)>, LookupError> {
    #[derive(Deserialize)]
    struct DockerConfig {
        #[serde(default)]
        auths: std::collections::BTreeMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let text = std::fs::read(path).map_err(|source| LookupError::ReadCredentials {
        path: path.to_owned(),
        source,
    })?;
    let config: DockerConfig =
        serde_json::from_slice(&text).map_err(|source| LookupError::ParseCredentials {
            path: path.to_owned(),
            source,
        })?;
    let mut out = Vec::new();
    for (key, entry) in config.auths {
        // `https://index.docker.io/v1/` and `registry:5000` both name a host.
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let pair = match (entry.username, entry.password, entry.auth) {
            (Some(user), Some(password), _) => Some((user, password)),
            (_, _, Some(auth)) => BASE64
                .decode(auth.trim())
                .ok()
                .and_then(|raw| String::from_utf8(raw).ok())
                .and_then(|text| {
                    text.split_once(':')
                        .map(|(u, p)| (u.to_owned(), p.to_owned()))
                }),
            _ => None,
        };
        if let Some((user, password)) = pair {
            out.push((host, RegistryAuth::Basic(user, password)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files an `images:` section names are read when the section is taken on, and a bad one says which
    /// file and what is wrong with it.
    #[test]
    fn a_bad_credentials_or_ca_file_is_refused_naming_it() {
        let dir = std::env::temp_dir().join(format!("sd-lookup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            ("credentials", None, "cannot read the registry credentials"),
            (
                "credentials",
                Some("{\"auths\": 1}"),
                "is not a docker config file",
            ),
            ("caFile", None, "cannot read the registry CA file"),
            (
                "caFile",
                Some("not a certificate\n"),
                "holds no PEM certificate",
            ),
            (
                "caFile",
                Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
                "cannot set up the registry client",
            ),
        ];
        for (i, (key, content, error)) in cases.into_iter().enumerate() {
            let file = dir.join(format!("file-{i}"));
            if let Some(content) = content {
                std::fs::write(&file, content).unwrap();
            }
            let text = format!(
                "apiVersion: secure-defaults.io/v1alpha1\nkind: Policy\nmode: cluster-wide\nimages:\n  registries: [\"*\"]\n  {key}: {}\n",
                file.display()
            );
            let policy = crate::policy::file::parse(text.as_bytes(), Path::new("policy.yaml"))
                .unwrap()
                .images
                .unwrap();
            let refused = Lookup::new(&policy).unwrap_err().to_string();
            assert!(refused.contains(error), "{key} {content:?}: {refused}");
            assert!(
                error.starts_with("cannot set up") || refused.contains(&file.display().to_string()),
                "{key} {content:?}: the error does not name the file: {refused}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
