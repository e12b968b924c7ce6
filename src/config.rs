//! The process configuration (restart to change): built-in defaults, then the config file, then
//! `SECURE_DEFAULTS_*` environment variables, then command-line flags. The policy is a separate, live file.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format as _, Serialized};
use serde::{Deserialize, Serialize};
use serde_saphyr::figment::Yaml;

/// The process config file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG: &str = "config/secure-defaults.yaml";
/// The policy file read when none is named.
pub const DEFAULT_POLICY: &str = "config/policy.yaml";
/// The prefix of the environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "SECURE_DEFAULTS_";

/// Why the configuration was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file, variable or flag could not be read into the configuration.
    #[error("invalid configuration")]
    ExtractConfig(#[source] Box<figment::Error>),
    /// A value is out of range or the values contradict each other.
    #[error("invalid configuration: {0}")]
    ValidateConfig(String),
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when standard error is not a terminal, readable text when it is.
    Auto,
    /// JSON lines.
    Json,
    /// Readable text.
    Text,
}

/// The file and environment shape. Keys are snake_case so that each maps to one environment variable
/// (`tls_cert` is `SECURE_DEFAULTS_TLS_CERT`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// HTTPS address of the webhook.
    pub listen: SocketAddr,
    /// Plain-HTTP address of /healthz, /readyz and /metrics.
    pub admin_listen: SocketAddr,
    /// PEM certificate chain.
    pub tls_cert: PathBuf,
    /// PEM private key.
    pub tls_key: PathBuf,
    /// PEM CA certificates: when set, only clients presenting a certificate from one of them are served.
    pub tls_client_ca: Option<PathBuf>,
    /// The policy file, reloaded live.
    pub policy: PathBuf,
    /// Look namespace labels up in the cluster. Off only for local trials without a cluster.
    pub namespace_lookups: bool,
    /// How often the policy and certificate files are checked for changes.
    pub reload_interval_ms: u64,
    /// After SIGTERM, how long to keep serving while the API server stops sending (readiness is already false).
    pub drain_seconds: u64,
    /// After the drain, how long in-flight requests get to finish.
    pub shutdown_timeout_seconds: u64,
    /// Deadline for one admission request, well under the webhook's timeoutSeconds.
    pub request_timeout_ms: u64,
    /// Deadline for a client to send its request headers (and for the TLS handshake).
    pub header_timeout_ms: u64,
    /// A connection with no request in flight for this long is closed, so idle clients cannot hold every slot.
    pub idle_timeout_ms: u64,
    /// Deadline for a direct namespace lookup when the cache does not know the namespace yet.
    pub namespace_lookup_timeout_ms: u64,
    /// Open webhook connections at most; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// The log format.
    pub log_format: LogFormat,
    /// A tracing filter: `info`, `debug`, `secure_defaults=debug,kube=info`.
    pub log_level: String,
    /// Issue and rotate the serving certificate in the cluster instead of reading tls_cert/tls_key.
    pub self_managed_certs: bool,
    /// Self-managed: the Secret (in the pod's namespace) holding the CA and serving certificate.
    pub tls_secret: String,
    /// Self-managed: the MutatingWebhookConfiguration whose caBundle is kept up to date.
    pub webhook_configuration: String,
    /// Self-managed: the Service name; the certificate is issued for SERVICE.NAMESPACE.svc and its variants.
    pub service: String,
    /// Self-managed: extra names (DNS names or IP addresses) for the serving certificate.
    pub cert_extra_names: Vec<String>,
    /// Self-managed: how long a CA is valid.
    pub ca_validity_seconds: u64,
    /// Self-managed: how long a serving certificate is valid.
    pub cert_validity_seconds: u64,
    /// Self-managed: how long a new CA is in the bundle before the serving certificate switches to it.
    pub ca_overlap_seconds: u64,
    /// Self-managed: how often the Lease holder checks the certificates.
    pub cert_check_seconds: u64,
    /// Self-managed: how long the Lease lasts without renewal.
    pub lease_duration_seconds: u64,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tls_cert: PathBuf::from("/etc/secure-defaults/tls/tls.crt"),
            tls_key: PathBuf::from("/etc/secure-defaults/tls/tls.key"),
            tls_client_ca: None,
            policy: PathBuf::from(DEFAULT_POLICY),
            namespace_lookups: true,
            reload_interval_ms: 1000,
            drain_seconds: 5,
            shutdown_timeout_seconds: 10,
            request_timeout_ms: 2000,
            header_timeout_ms: 5000,
            idle_timeout_ms: 90_000,
            namespace_lookup_timeout_ms: 500,
            max_connections: 1024,
            log_format: LogFormat::Auto,
            log_level: "info".to_owned(),
            self_managed_certs: false,
            tls_secret: "secure-defaults-tls".to_owned(),
            webhook_configuration: "secure-defaults".to_owned(),
            service: "secure-defaults".to_owned(),
            cert_extra_names: Vec::new(),
            ca_validity_seconds: 365 * 24 * 3600,
            cert_validity_seconds: 30 * 24 * 3600,
            ca_overlap_seconds: 3600,
            cert_check_seconds: 30,
            lease_duration_seconds: 30,
        }
    }
}

/// Self-managed certificate settings, validated.
#[derive(Clone, Debug)]
pub struct SelfManaged {
    /// The Secret holding the CA and serving certificate.
    pub tls_secret: String,
    /// The MutatingWebhookConfiguration whose caBundle is kept current.
    pub webhook_configuration: String,
    /// The Service the certificate is issued for.
    pub service: String,
    /// Extra DNS names or IP addresses.
    pub extra_names: Vec<String>,
    /// How long a CA is valid.
    pub ca_validity: Duration,
    /// How long a serving certificate is valid.
    pub cert_validity: Duration,
    /// How long a new CA is in the bundle before the serving certificate switches to it.
    pub ca_overlap: Duration,
    /// How often the Lease holder checks.
    pub check_interval: Duration,
    /// How long the Lease lasts without renewal.
    pub lease_duration: Duration,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// HTTPS address of the webhook.
    pub listen: SocketAddr,
    /// Plain-HTTP address of /healthz, /readyz and /metrics.
    pub admin_listen: SocketAddr,
    /// PEM certificate chain.
    pub tls_cert: PathBuf,
    /// PEM private key.
    pub tls_key: PathBuf,
    /// Clients must present a certificate from these CAs (reloaded live); `None` serves any TLS client.
    pub tls_client_ca: Option<PathBuf>,
    /// The policy file, reloaded live.
    pub policy: PathBuf,
    /// Look namespace labels up in the cluster.
    pub namespace_lookups: bool,
    /// How often the policy and certificate files are read.
    pub reload_interval: Duration,
    /// After SIGTERM, how long to keep serving with readiness false.
    pub drain: Duration,
    /// After the drain, how long in-flight requests get.
    pub shutdown_timeout: Duration,
    /// The deadline of one admission request.
    pub request_timeout: Duration,
    /// The deadline of the TLS handshake, the first request and each HTTP/1.1 request head.
    pub header_timeout: Duration,
    /// How long a connection may sit with no request in flight.
    pub idle_timeout: Duration,
    /// The deadline of a direct namespace lookup.
    pub namespace_lookup_timeout: Duration,
    /// Open webhook connections at most.
    pub max_connections: NonZeroUsize,
    /// The log format.
    pub log_format: LogFormat,
    /// A tracing filter.
    pub log_level: String,
    /// Set when the serving certificate is issued in the cluster rather than read from files.
    pub self_managed: Option<SelfManaged>,
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;
    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let positive = |name: &str, value: u64, unit: fn(u64) -> Duration| match value {
            0 => Err(ConfigError::ValidateConfig(format!(
                "{name} must be greater than 0"
            ))),
            _ => Ok(unit(value)),
        };
        let ms = |name, value| positive(name, value, Duration::from_millis);
        let max_connections = NonZeroUsize::new(raw.max_connections).ok_or_else(|| {
            ConfigError::ValidateConfig("max_connections must be greater than 0".to_owned())
        })?;
        if raw.request_timeout_ms > 10_000 {
            return Err(ConfigError::ValidateConfig(format!(
                "request_timeout_ms {} exceeds 10000; the API server gives a webhook at most 30s and should be set far lower",
                raw.request_timeout_ms
            )));
        }
        if raw.listen == raw.admin_listen {
            return Err(ConfigError::ValidateConfig(format!(
                "listen and admin_listen are both {}",
                raw.listen
            )));
        }
        let self_managed = if raw.self_managed_certs {
            let seconds = |name, s| positive(name, s, Duration::from_secs);
            let managed = SelfManaged {
                tls_secret: raw.tls_secret.clone(),
                webhook_configuration: raw.webhook_configuration.clone(),
                service: raw.service.clone(),
                extra_names: raw.cert_extra_names.clone(),
                ca_validity: seconds("ca_validity_seconds", raw.ca_validity_seconds)?,
                cert_validity: seconds("cert_validity_seconds", raw.cert_validity_seconds)?,
                ca_overlap: Duration::from_secs(raw.ca_overlap_seconds),
                check_interval: seconds("cert_check_seconds", raw.cert_check_seconds)?,
                lease_duration: seconds("lease_duration_seconds", raw.lease_duration_seconds)?,
            };
            if managed.cert_validity > managed.ca_validity {
                return Err(ConfigError::ValidateConfig(
                    "cert_validity_seconds must not exceed ca_validity_seconds".to_owned(),
                ));
            }
            if managed.ca_overlap.as_secs() * 3 > managed.ca_validity.as_secs() {
                return Err(ConfigError::ValidateConfig(
                    "ca_overlap_seconds must be under a third of ca_validity_seconds, or the old CA expires mid-rotation"
                        .to_owned(),
                ));
            }
            Some(managed)
        } else {
            None
        };
        Ok(Config {
            self_managed,
            reload_interval: ms("reload_interval_ms", raw.reload_interval_ms)?,
            request_timeout: ms("request_timeout_ms", raw.request_timeout_ms)?,
            header_timeout: ms("header_timeout_ms", raw.header_timeout_ms)?,
            idle_timeout: ms("idle_timeout_ms", raw.idle_timeout_ms)?,
            namespace_lookup_timeout: ms(
                "namespace_lookup_timeout_ms",
                raw.namespace_lookup_timeout_ms,
            )?,
            drain: Duration::from_secs(raw.drain_seconds),
            shutdown_timeout: Duration::from_secs(raw.shutdown_timeout_seconds),
            max_connections,
            listen: raw.listen,
            admin_listen: raw.admin_listen,
            tls_cert: raw.tls_cert,
            tls_key: raw.tls_key,
            tls_client_ca: raw.tls_client_ca,
            policy: raw.policy,
            namespace_lookups: raw.namespace_lookups,
            log_format: raw.log_format,
            log_level: raw.log_level,
        })
    }
}

/// Kubernetes gives every pod `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT_443_TCP` and the like for each Service
/// in its namespace; for a Service named `secure-defaults` they share this program's prefix. They are not
/// configuration, and must not trip the unknown-key check.
fn is_service_link(key: &str) -> bool {
    let key = key.to_ascii_uppercase();
    key.starts_with("SERVICE_HOST")
        || key.starts_with("SERVICE_PORT")
        || key == "PORT"
        || key.starts_with("PORT_")
}

/// Layers the configuration. `file` is read if it exists, or must exist when `required` (given with --config);
/// `flags` holds only the values set on the command line.
pub fn load(file: &Path, required: bool, flags: &impl Serialize) -> Result<Config, ConfigError> {
    if required && !file.exists() {
        return Err(ConfigError::ValidateConfig(format!(
            "config file {} does not exist",
            file.display()
        )));
    }
    let raw: RawConfig = Figment::from(Serialized::defaults(RawConfig::default()))
        .merge(Yaml::file(file))
        .merge(Env::prefixed(ENV_PREFIX).filter(|key| !is_service_link(key.as_str())))
        .merge(Serialized::defaults(flags))
        .extract()
        .map_err(|e| ConfigError::ExtractConfig(Box::new(e)))?;
    Config::try_from(raw)
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's test jail returns its own error type
mod tests {
    use super::*;

    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        drain_seconds: Option<u64>,
    }

    /// Loads `file` (which must exist when `required`) with no flags set.
    fn load_file(file: &str, required: bool) -> Result<Config, ConfigError> {
        load(Path::new(file), required, &Flags::default())
    }

    /// Loads `file` with no flags set; a failure fails the jail.
    fn loaded(file: &str, required: bool) -> figment::error::Result<Config> {
        load_file(file, required).map_err(|e| e.to_string().into())
    }

    /// The cause of a refusal: the message of the error under `ConfigError`.
    fn cause(file: &str, required: bool) -> String {
        let err = load_file(file, required).unwrap_err();
        std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    #[test]
    fn layers_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.yaml",
                "drain_seconds: 7\nmax_connections: 10\nlog_level: debug\n",
            )?;
            jail.set_env("SECURE_DEFAULTS_MAX_CONNECTIONS", "20");
            let c = loaded("c.yaml", true)?;
            assert_eq!(c.drain, Duration::from_secs(7));
            assert_eq!(c.max_connections.get(), 20);
            assert_eq!(c.log_level, "debug");
            assert_eq!(c.listen, SocketAddr::from(([0, 0, 0, 0], 8443)));
            assert_eq!(c.idle_timeout, Duration::from_secs(90));
            let flags = Flags {
                drain_seconds: Some(1),
            };
            let c = load(Path::new("c.yaml"), true, &flags).map_err(|e| e.to_string())?;
            assert_eq!(c.drain, Duration::from_secs(1));
            Ok(())
        });
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.yaml", "drain_secs: 7\n")?;
            let source = cause("c.yaml", true);
            assert!(
                source.contains("unknown field") && source.contains("drain_secs"),
                "{source}"
            );
            assert!(source.contains("c.yaml"), "{source}");

            for (file, content, message) in [
                (
                    "d.yaml",
                    "max_connections: 0\n",
                    "max_connections must be greater than 0",
                ),
                (
                    "e.yaml",
                    "idle_timeout_ms: 0\n",
                    "idle_timeout_ms must be greater than 0",
                ),
            ] {
                jail.create_file(file, content)?;
                let err = load_file(file, true).unwrap_err();
                assert!(err.to_string().contains(message), "{err}");
            }

            jail.set_env("SECURE_DEFAULTS_LISTEN", "not-an-address");
            let source = cause("absent.yaml", false);
            assert!(
                source.contains("LISTEN") && source.contains("SECURE_DEFAULTS_"),
                "{source}"
            );

            assert!(load_file("absent.yaml", true).is_err());
            Ok(())
        });
    }

    #[test]
    fn the_client_ca_is_off_unless_named() {
        figment::Jail::expect_with(|jail| {
            assert_eq!(loaded("absent.yaml", false)?.tls_client_ca, None);
            jail.set_env("SECURE_DEFAULTS_TLS_CLIENT_CA", "/etc/client-ca/ca.crt");
            let c = loaded("absent.yaml", false)?;
            assert_eq!(
                c.tls_client_ca.as_deref(),
                Some(Path::new("/etc/client-ca/ca.crt"))
            );
            Ok(())
        });
    }

    #[test]
    fn service_links_are_not_configuration() {
        figment::Jail::expect_with(|jail| {
            for (k, v) in [
                ("SECURE_DEFAULTS_SERVICE_HOST", "10.0.0.7"),
                ("SECURE_DEFAULTS_SERVICE_PORT", "443"),
                ("SECURE_DEFAULTS_SERVICE_PORT_HTTPS", "443"),
                ("SECURE_DEFAULTS_PORT", "tcp://10.0.0.7:443"),
                ("SECURE_DEFAULTS_PORT_443_TCP_ADDR", "10.0.0.7"),
                ("SECURE_DEFAULTS_SERVICE", "webhook"),
            ] {
                jail.set_env(k, v);
            }
            let c = loaded("absent.yaml", false)?;
            assert_eq!(c.listen, SocketAddr::from(([0, 0, 0, 0], 8443)));
            jail.set_env("SECURE_DEFAULTS_SERVCE", "typo");
            assert!(
                load_file("absent.yaml", false).is_err(),
                "typos are still refused"
            );
            Ok(())
        });
    }
}
