//! `secure-defaults serve` over real HTTPS: the server runs in-process (or, for SIGTERM and start-up failures, as
//! the real binary) with namespace lookups off, and is driven by a rustls client that trusts a CA made with rcgen.
//!
//! Nothing here sleeps to "let things happen": every wait polls for the awaited condition under a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{self, HeaderMap};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, ServerName};
use secure_defaults::config::{Config, LogFormat};
use secure_defaults::server::Server;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;

/// How long any awaited condition may take; generous, since another build may share the machine.
const DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(25);
const MAX_BODY: usize = secure_defaults::server::handle::MAX_BODY_BYTES;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Polls `check` every [`POLL`] until it yields a value; panics naming `what` after [`DEADLINE`].
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A fresh directory for one test, unique to this process (another `cargo test` may run at the same time); removed
/// when the test passes, kept for inspection when it fails.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("server")
            .join(format!("{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Certificates

struct Ca {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A serving certificate for IP 127.0.0.1, with a new key.
    fn leaf(&self, name: &str) -> Leaf {
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Files written the way the kubelet writes a ConfigMap or Secret volume

/// `dir/..<timestamp>/<files>`, `dir/..data -> ..<timestamp>`, `dir/<file> -> ..data/<file>`; updated by an atomic
/// rename of a new `..data` symlink over the old one.
struct Projected {
    dir: PathBuf,
    version: u32,
}

impl Projected {
    fn create(dir: &Path, files: &[(&str, &[u8])]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut projected = Self {
            dir: dir.to_owned(),
            version: 0,
        };
        let data = projected.write_version(files);
        std::os::unix::fs::symlink(&data, dir.join("..data")).unwrap();
        for (name, _) in files {
            std::os::unix::fs::symlink(Path::new("..data").join(name), dir.join(name)).unwrap();
        }
        projected
    }

    fn write_version(&mut self, files: &[(&str, &[u8])]) -> String {
        self.version += 1;
        let name = format!(
            "..2026_01_01_00_00_{:02}.{}",
            self.version - 1,
            self.version
        );
        let dir = self.dir.join(&name);
        std::fs::create_dir(&dir).unwrap();
        for (file, content) in files {
            std::fs::write(dir.join(file), content).unwrap();
        }
        name
    }

    fn update(&mut self, files: &[(&str, &[u8])]) {
        let old = std::fs::read_link(self.dir.join("..data")).unwrap();
        let new = self.write_version(files);
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&new, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        std::fs::remove_dir_all(self.dir.join(old)).unwrap();
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

fn policy_yaml(run_as_user: i64) -> String {
    format!(
        "apiVersion: secure-defaults.io/v1alpha1\nkind: Policy\nmode: cluster-wide\ndefaults:\n  runAsUser: {run_as_user}\n  allowPrivilegeEscalation: false\n"
    )
}

fn cert_files(leaf: &Leaf) -> [(&'static str, &[u8]); 2] {
    [
        ("tls.crt", leaf.cert_pem.as_bytes()),
        ("tls.key", leaf.key_pem.as_bytes()),
    ]
}

/// A test's directory, CA, serving certificate and policy, all in kubelet-style volumes.
struct Fixture {
    dir: TempDir,
    ca: Ca,
    leaf: Leaf,
    certs: Projected,
    policy: Projected,
}

impl Fixture {
    fn new(test: &str) -> Self {
        let dir = TempDir::new(test);
        let ca = Ca::new("secure-defaults test CA");
        let leaf = ca.leaf("secure-defaults");
        let certs = Projected::create(&dir.join("tls"), &cert_files(&leaf));
        let policy = Projected::create(
            &dir.join("policy"),
            &[("policy.yaml", policy_yaml(65532).as_bytes())],
        );
        Self {
            dir,
            ca,
            leaf,
            certs,
            policy,
        }
    }

    fn config(&self) -> Config {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        Config {
            listen: any_port,
            admin_listen: any_port,
            tls_cert: self.certs.path("tls.crt"),
            tls_key: self.certs.path("tls.key"),
            tls_client_ca: None,
            policy: self.policy.path("policy.yaml"),
            namespace_lookups: false,
            reload_interval: Duration::from_millis(100),
            drain: Duration::from_millis(50),
            shutdown_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(90),
            namespace_lookup_timeout: Duration::from_millis(500),
            max_connections: NonZeroUsize::new(128).unwrap(),
            log_format: LogFormat::Text,
            log_level: "info".to_owned(),
            self_managed: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The in-process server

struct Running {
    webhook: SocketAddr,
    admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(config: Config) -> Running {
    let server = Server::bind(config).await.unwrap();
    let webhook = server.webhook_addr().unwrap();
    let admin = server.admin_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Running {
        webhook,
        admin,
        stop: Some(stop),
        task,
    }
}

impl Running {
    /// Asks the server to stop and checks that it does, within the deadline.
    async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("the server stops after its shutdown future completes")
            .unwrap();
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Clients

#[derive(Clone, Copy, Debug, PartialEq)]
enum Proto {
    H1,
    H2,
}

impl Proto {
    fn alpn(self) -> &'static [u8] {
        match self {
            Proto::H1 => b"http/1.1",
            Proto::H2 => b"h2",
        }
    }
}

const ALL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn tls_client(
    trusted: &[&CertificateDer<'static>],
    versions: &[&'static SupportedProtocolVersion],
    proto: Proto,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in trusted {
        roots.add((*ca).clone()).unwrap();
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![proto.alpn().to_vec()];
    // Every connection does a full handshake, so the certificate it reports is the one the server presents now
    // (a resumed session reports the certificate of the session it resumes).
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One TLS connection to the webhook, with what the handshake settled.
struct Conn {
    sender: Sender,
    port: u16,
    peer: CertificateDer<'static>,
    version: ProtocolVersion,
    alpn: Option<Vec<u8>>,
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A TLS connection, the certificate the server presented, and the negotiated version and ALPN protocol.
async fn tls_connect(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
) -> Result<
    (
        TlsStream,
        CertificateDer<'static>,
        ProtocolVersion,
        Option<Vec<u8>>,
    ),
    BoxError,
> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1")?;
    let stream = TlsConnector::from(tls).connect(name, tcp).await?;
    let (_, session) = stream.get_ref();
    let peer = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or("no peer certificate")?
        .clone()
        .into_owned();
    let version = session.protocol_version().ok_or("no protocol version")?;
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    Ok((stream, peer, version, alpn))
}

async fn connect(addr: SocketAddr, tls: Arc<ClientConfig>) -> Result<Conn, BoxError> {
    let (stream, peer, version, alpn) = tls_connect(addr, tls).await?;
    let io = TokioIo::new(stream);
    let sender = if alpn.as_deref() == Some(b"h2") {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Sender::H2(sender)
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        Sender::H1(sender)
    };
    Ok(Conn {
        sender,
        port: addr.port(),
        peer,
        version,
        alpn,
    })
}

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;
type Chunks = futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>;

/// A review sent over HTTP/1.1 in two halves: the first now, the second when [`SlowReview::finish`] is called.
struct SlowReview {
    rest: Option<(mpsc::UnboundedSender<Bytes>, Bytes)>,
    response: tokio::task::JoinHandle<Result<Reply, BoxError>>,
}

impl SlowReview {
    async fn start(addr: SocketAddr, tls: Arc<ClientConfig>, uid: &str) -> Result<Self, BoxError> {
        let (stream, ..) = tls_connect(addr, tls).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, StreamBody<Chunks>>(TokioIo::new(stream))
                .await?;
        tokio::spawn(conn);
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let chunks: Chunks = futures_util::stream::unfold(rx, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((Ok(Frame::data(chunk)), rx))
        })
        .boxed();
        let mut body = Bytes::from(review(uid));
        let rest = body.split_off(body.len() / 2);
        tx.send(body)?;
        let request = Request::post("/mutate")
            .header(header::HOST, format!("127.0.0.1:{}", addr.port()))
            .header(header::CONTENT_TYPE, "application/json")
            .body(StreamBody::new(chunks))?;
        let sent = sender.send_request(request);
        let response = tokio::spawn(async move {
            let response = sent.await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await?.to_bytes();
            Ok(Reply {
                status,
                headers,
                body,
            })
        });
        Ok(Self {
            rest: Some((tx, rest)),
            response,
        })
    }

    /// The answer to the half-sent review, the rest of the body held back meanwhile.
    async fn answer_unfinished(mut self) -> Result<Reply, BoxError> {
        let reply = (&mut self.response).await?;
        drop(self.rest.take());
        reply
    }

    async fn finish(mut self) -> Result<Reply, BoxError> {
        let (tx, rest) = self.rest.take().ok_or("already finished")?;
        tx.send(rest)?;
        drop(tx);
        self.response.await?
    }
}

impl Conn {
    /// Another handle on the same HTTP/2 connection, for concurrent streams.
    fn h2_clone(&self) -> Conn {
        match &self.sender {
            Sender::H2(sender) => Conn {
                sender: Sender::H2(sender.clone()),
                port: self.port,
                peer: self.peer.clone(),
                version: self.version,
                alpn: self.alpn.clone(),
            },
            Sender::H1(_) => panic!("an HTTP/1.1 connection carries one request at a time"),
        }
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<Reply, BoxError> {
        let authority = format!("127.0.0.1:{}", self.port);
        let builder = Request::builder()
            .method(method)
            .header(header::CONTENT_TYPE, "application/json");
        let response = match &mut self.sender {
            Sender::H1(sender) => {
                sender.ready().await?;
                let request = builder
                    .uri(path)
                    .header(header::HOST, authority)
                    .body(Full::new(body.into()))?;
                sender.send_request(request).await?
            }
            Sender::H2(sender) => {
                sender.ready().await?;
                let request = builder
                    .uri(format!("https://{authority}{path}"))
                    .body(Full::new(body.into()))?;
                sender.send_request(request).await?
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    async fn mutate(&mut self, uid: &str) -> Result<Reply, BoxError> {
        self.request(Method::POST, "/mutate", review(uid)).await
    }
}

/// A plain-HTTP/1.1 GET on the admin address.
async fn admin_get(addr: SocketAddr, path: &str) -> Result<Reply, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let request = Request::get(path)
        .header(header::HOST, "x")
        .header(header::CONNECTION, "close")
        .body(Full::<Bytes>::default())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

async fn scrape(admin: SocketAddr) -> String {
    let reply = admin_get(admin, "/metrics").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.text()
}

/// The value of one exposition line, `series` being the name with its labels as exposed.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        if name == series {
            value.parse().ok()
        } else {
            None
        }
    })
}

/// Writes all of `bytes` to a raw socket.
async fn write_raw(tcp: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        tcp.writable().await?;
        match tcp.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads a raw socket until the peer closes it (or resets it).
async fn read_until_closed(tcp: &TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0_u8; 4096];
    loop {
        if tcp.readable().await.is_err() {
            return received;
        }
        match tcp.try_read(&mut buf) {
            Ok(0) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return received,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Admission reviews

fn review(uid: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "web",
            "namespace": "app",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:app:deployer"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "web", "namespace": "app"},
                "spec": {"containers": [{"name": "app", "image": "nginx"}]}
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .unwrap()
}

/// Checks a reply is an allowed AdmissionReview for `uid` carrying a JSONPatch, and returns the patch operations.
fn admitted(reply: &Reply, uid: &str) -> Vec<Value> {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.headers.get(header::CONTENT_TYPE).unwrap(),
        "application/json"
    );
    let out: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1", "{out}");
    assert_eq!(out["kind"], "AdmissionReview", "{out}");
    assert_eq!(out["response"]["uid"], uid, "{out}");
    assert_eq!(out["response"]["allowed"], true, "{out}");
    assert_eq!(out["response"]["patchType"], "JSONPatch", "{out}");
    // The patch's bytes in base64, as the admission API documents.
    let patch = out["response"]["patch"].as_str().expect("a base64 patch");
    let patch = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(patch)
            .unwrap()
    };
    let ops: Value = serde_json::from_slice(&patch).unwrap();
    let ops = ops.as_array().unwrap().clone();
    assert!(!ops.is_empty());
    assert!(ops.iter().all(|op| op["op"] == "add"), "{ops:?}");
    ops
}

/// The pod-level runAsUser the patch adds.
fn run_as_user(ops: &[Value]) -> i64 {
    ops.iter()
        .find(|op| op["path"] == "/spec/securityContext")
        .and_then(|op| op["value"]["runAsUser"].as_i64())
        .unwrap_or_else(|| panic!("no pod securityContext.runAsUser in {ops:?}"))
}

/// One review on a fresh connection; the runAsUser it got.
async fn run_as_user_now(webhook: SocketAddr, tls: &Arc<ClientConfig>, uid: &str) -> i64 {
    let mut conn = connect(webhook, tls.clone()).await.unwrap();
    let reply = conn.mutate(uid).await.unwrap();
    run_as_user(&admitted(&reply, uid))
}

// ---------------------------------------------------------------------------------------------------------------
// 1. The happy path over every protocol combination

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutate_over_http1_and_http2_with_tls12_and_tls13() {
    let f = Fixture::new("mutate_over_http1_and_http2");
    let server = start(f.config()).await;

    let versions: [(&'static SupportedProtocolVersion, ProtocolVersion); 2] = [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ];
    let mut answered = 0;
    for (version, expected_version) in versions {
        for proto in [Proto::H1, Proto::H2] {
            let tls = tls_client(&[&f.ca.cert], &[version], proto);
            let mut conn = connect(server.webhook, tls).await.unwrap();
            assert_eq!(conn.version, expected_version, "{proto:?}");
            assert_eq!(conn.alpn.as_deref(), Some(proto.alpn()), "{proto:?}");
            assert_eq!(conn.peer, f.leaf.der, "the server presents its certificate");
            // Two reviews on one connection: keep-alive for HTTP/1.1, a second stream for HTTP/2.
            for n in 0..2 {
                let uid = format!("uid-{expected_version:?}-{proto:?}-{n}");
                let reply = conn.mutate(&uid).await.unwrap();
                let ops = admitted(&reply, &uid);
                assert_eq!(run_as_user(&ops), 65532, "{ops:?}");
                let container = ops
                    .iter()
                    .find(|op| op["path"] == "/spec/containers/0/securityContext")
                    .unwrap_or_else(|| panic!("no container securityContext in {ops:?}"));
                assert_eq!(container["value"]["allowPrivilegeEscalation"], false);
                answered += 1;
            }
        }
    }

    // HTTP/2 streams really run concurrently on one connection.
    let tls = tls_client(&[&f.ca.cert], ALL_VERSIONS, Proto::H2);
    let conn = connect(server.webhook, tls).await.unwrap();
    let streams: Vec<_> = (0..16)
        .map(|n| {
            let mut conn = conn.h2_clone();
            tokio::spawn(async move {
                let uid = format!("h2-stream-{n}");
                let reply = conn.mutate(&uid).await.unwrap();
                run_as_user(&admitted(&reply, &uid))
            })
        })
        .collect();
    for stream in streams {
        assert_eq!(stream.await.unwrap(), 65532);
        answered += 1;
    }

    // A client that does not trust the server's CA fails to connect: verification is real.
    let stranger = Ca::new("some other CA");
    let untrusting = tls_client(&[&stranger.cert], ALL_VERSIONS, Proto::H1);
    let err = connect(server.webhook, untrusting).await.err().unwrap();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    let text = scrape(server.admin).await;
    assert_eq!(
        metric(
            &text,
            "secure_defaults_admission_requests_total{operation=\"create\",result=\"patched\"}"
        ),
        Some(f64::from(answered)),
        "{text}"
    );
    server.shutdown().await;
}

/// HTTP/1.1 requests written by hand, so tests control how the bytes arrive.
fn raw_request(path: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    [head.as_bytes(), body].concat()
}

/// Reads `n` HTTP/1.1 responses (each with a content-length) off a TLS stream: their status and body.
async fn read_responses(stream: &mut TlsStream, n: usize) -> Vec<(u16, Vec<u8>)> {
    read_responses_with_heads(stream, n)
        .await
        .into_iter()
        .map(|(status, _, body)| (status, body))
        .collect()
}

/// Reads `n` HTTP/1.1 responses (each with a content-length) off a stream: their status, head (lowercased) and
/// body.
async fn read_responses_with_heads(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    n: usize,
) -> Vec<(u16, String, Vec<u8>)> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while out.len() < n {
        let parsed = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .and_then(|end| {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let status: u16 = head.get(9..12)?.parse().ok()?;
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))?
                    .trim()
                    .parse()
                    .ok()?;
                (buf.len() >= end + 4 + length).then_some((status, head, end + 4, length))
            });
        if let Some((status, head, start, length)) = parsed {
            out.push((status, head, buf[start..start + length].to_vec()));
            buf.drain(..start + length);
            continue;
        }
        let mut chunk = [0_u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(
            read > 0,
            "connection closed after {} of {n} responses",
            out.len()
        );
        buf.extend_from_slice(&chunk[..read]);
    }
    assert!(
        buf.is_empty(),
        "unexpected bytes: {:?}",
        String::from_utf8_lossy(&buf)
    );
    out
}

/// An HTTP/1.1 keep-alive connection carries request after request: nothing the client can do on the wire
/// (pauses, pipelining, a split head, a body the server does not need) loses a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keep_alive_survives_pauses_pipelining_and_unread_bodies() {
    use tokio::io::AsyncWriteExt as _;
    let f = Fixture::new("http1_keep_alive");
    let server = start(f.config()).await;
    let tls = tls_client(&[&f.ca.cert], ALL_VERSIONS, Proto::H1);
    let (mut stream, ..) = tls_connect(server.webhook, tls).await.unwrap();
    let admitted_uid = |(status, body): &(u16, Vec<u8>), uid: &str| {
        assert_eq!(*status, 200, "{}", String::from_utf8_lossy(body));
        let out: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(out["response"]["uid"], uid, "{out}");
        assert!(out["response"]["patch"].is_string(), "{out}");
    };

    // One request, then another on the same connection once the first is answered.
    for uid in ["first", "after-a-pause"] {
        stream
            .write_all(&raw_request("/mutate", &review(uid)))
            .await
            .unwrap();
        admitted_uid(&read_responses(&mut stream, 1).await[0], uid);
    }
    // Two requests in one write: both answered, in order.
    let two = [
        raw_request("/mutate", &review("piped-1")),
        raw_request("/mutate", &review("piped-2")),
    ]
    .concat();
    stream.write_all(&two).await.unwrap();
    let replies = read_responses(&mut stream, 2).await;
    admitted_uid(&replies[0], "piped-1");
    admitted_uid(&replies[1], "piped-2");
    // A request head cut in two, flushed apart: the bytes of the first part are not lost.
    let split = raw_request("/mutate", &review("split-head"));
    stream.write_all(&split[..20]).await.unwrap();
    stream.flush().await.unwrap();
    stream.write_all(&split[20..]).await.unwrap();
    admitted_uid(&read_responses(&mut stream, 1).await[0], "split-head");
    // A body the server does not need (wrong path), then a review: both answered.
    stream
        .write_all(&raw_request("/nowhere", &review("unread")))
        .await
        .unwrap();
    assert_eq!(read_responses(&mut stream, 1).await[0].0, 404);
    stream
        .write_all(&raw_request("/mutate", &review("after-404")))
        .await
        .unwrap();
    admitted_uid(&read_responses(&mut stream, 1).await[0], "after-404");
    stream
        .write_all(&raw_request("/mutate", &review("last")))
        .await
        .unwrap();
    admitted_uid(&read_responses(&mut stream, 1).await[0], "last");
    server.shutdown().await;
}

/// A refused request (wrong path, wrong method) whose body is far larger than one read: the refusal either says
/// the connection closes, or the connection carries the client's next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_with_a_large_body_leaves_the_connection_usable_or_says_it_closes() {
    use tokio::io::AsyncWriteExt as _;
    let f = Fixture::new("refused_with_body");
    let server = start(f.config()).await;
    let tls = tls_client(&[&f.ca.cert], ALL_VERSIONS, Proto::H1);
    for (method, path, status) in [("POST", "/wrong", 404), ("PUT", "/mutate", 405)] {
        let (stream, ..) = tls_connect(server.webhook, tls.clone()).await.unwrap();
        let (mut reader, mut writer) = tokio::io::split(stream);
        let body = vec![b' '; 1024 * 1024];
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        // Written while the answer is read: the server may answer before it has the whole body, or after.
        let sending = tokio::spawn(async move {
            writer.write_all(head.as_bytes()).await?;
            writer.write_all(&body).await?;
            writer.flush().await?;
            Ok::<_, std::io::Error>(writer)
        });
        let (got, response_head, _) = read_responses_with_heads(&mut reader, 1).await.remove(0);
        assert_eq!(got, status, "{method} {path}: {response_head}");
        if response_head.contains("\r\nconnection: close") {
            continue;
        }
        let mut writer = sending
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{method} {path}: the body was cut off: {e}"));
        let uid = format!("after-{status}");
        writer
            .write_all(&raw_request("/mutate", &review(&uid)))
            .await
            .unwrap();
        let (got, response_head, body) = read_responses_with_heads(&mut reader, 1).await.remove(0);
        assert_eq!(got, 200, "{response_head}");
        let out: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(out["response"]["uid"], uid.as_str(), "{out}");
    }
    server.shutdown().await;
}

/// The number of open webhook connections, from the admin endpoint.
async fn open_connections(admin: SocketAddr) -> Option<f64> {
    metric(&scrape(admin).await, "secure_defaults_open_connections")
}

/// Reads a TLS stream until the server closes it (end of stream or an error); panics after [`DEADLINE`].
async fn closed_by_server(stream: &mut TlsStream, what: &str) {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0_u8; 1024];
    loop {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => panic!("{what}: still open after {DEADLINE:?}"),
        }
    }
}

/// Clients that connect and never start a request cannot hold the connection slots: each is closed once the
/// header timeout passes, whether it sends nothing after the handshake, an HTTP/2 preface only, or part of an
/// HTTP/1.1 request head; a client waiting in the backlog meanwhile is then served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_start_a_request_are_closed_and_free_their_slots() {
    use tokio::io::AsyncWriteExt as _;
    let f = Fixture::new("never_start_a_request");
    let mut config = f.config();
    config.max_connections = NonZeroUsize::new(8).unwrap();
    config.header_timeout = Duration::from_secs(1);
    let server = start(config).await;

    for proto in [Proto::H2, Proto::H1] {
        let tls = tls_client(&[&f.ca.cert], ALL_VERSIONS, proto);
        let mut silent = Vec::new();
        for _ in 0..4 {
            let (stream, _, _, alpn) = tls_connect(server.webhook, tls.clone()).await.unwrap();
            assert_eq!(alpn.as_deref(), Some(proto.alpn()));
            silent.push(stream);
        }
        // Four more that start to speak: the HTTP/2 preface and settings, or part of an HTTP/1.1 head.
        let mut started = Vec::new();
        let mut prefaced = Vec::new();
        for _ in 0..4 {
            let (mut stream, ..) = tls_connect(server.webhook, tls.clone()).await.unwrap();
            match proto {
                Proto::H2 => {
                    let (sender, conn) =
                        hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
                            TokioExecutor::new(),
                            TokioIo::new(stream),
                        )
                        .await
                        .unwrap();
                    prefaced.push((sender, tokio::spawn(conn)));
                }
                Proto::H1 => {
                    stream
                        .write_all(b"POST /mutate HTTP/1.1\r\nho")
                        .await
                        .unwrap();
                    stream.flush().await.unwrap();
                    started.push(stream);
                }
            }
        }
        // The ninth waits in the backlog for a slot.
        let ninth = {
            let (webhook, tls) = (server.webhook, tls.clone());
            tokio::spawn(async move {
                let mut conn = connect(webhook, tls).await?;
                conn.mutate("ninth").await
            })
        };
        for stream in silent.iter_mut().chain(started.iter_mut()) {
            closed_by_server(stream, &format!("{proto:?} connection without a request")).await;
        }
        for (_sender, conn) in prefaced {
            tokio::time::timeout(DEADLINE, conn)
                .await
                .expect("the server closes an HTTP/2 connection without a stream")
                .unwrap()
                .unwrap();
        }
        let reply = tokio::time::timeout(DEADLINE, ninth)
            .await
            .expect("the client in the backlog is served once the idle connections are closed")
            .unwrap()
            .unwrap();
        admitted(&reply, "ninth");
        eventually("every connection to be closed", async || {
            (open_connections(server.admin).await? == 0.0).then_some(())
        })
        .await;
    }
    server.shutdown().await;
}

/// An HTTP/2 connection to the webhook whose connection task can be watched.
async fn h2_watched(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
) -> (Conn, tokio::task::JoinHandle<Result<(), hyper::Error>>) {
    let (stream, peer, version, alpn) = tls_connect(addr, tls).await.unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let task = tokio::spawn(conn);
    let conn = Conn {
        sender: Sender::H2(sender),
        port: addr.port(),
        peer,
        version,
        alpn,
    };
    (conn, task)
}

/// An HTTP/2 client that sends the preface and its SETTINGS, never a stream, and ignores the GOAWAY: its slot comes
/// back at the header timeout, not the shutdown timeout after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_ignores_goaway_loses_its_slot_at_the_header_timeout() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let f = Fixture::new("ignores_goaway");
    let mut config = f.config();
    config.header_timeout = Duration::from_secs(1);
    // Longer than DEADLINE: a connection held until it ran out would fail the wait below.
    config.shutdown_timeout = Duration::from_secs(60);
    let server = start(config).await;
    let tls = tls_client(&[&f.ca.cert], ALL_VERSIONS, Proto::H2);
    let (mut stream, ..) = tls_connect(server.webhook, tls).await.unwrap();
    // The connection preface and an empty SETTINGS frame; then silence, reading nothing.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    eventually(
        "the slot of a client that ignores GOAWAY to come back",
        async || (open_connections(server.admin).await? == 0.0).then_some(()),
    )
    .await;
    // The server closed its side: what it sent (SETTINGS, GOAWAY) ends with the end of the stream.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the server's side is still open");
    server.shutdown().await;
}

/// A connection with no request in flight for the idle timeout is closed, over HTTP/2 with GOAWAY (the client's
/// connection ends cleanly), while one that keeps making requests stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout_and_busy_ones_stay() {
    let f = Fixture::new("idle_timeout");
    let mut config = f.config();
    config.idle_timeout = Duration::from_secs(1);
    // Longer than any wait here: only the idle timeout can close these connections in time.
    config.header_timeout = Duration::from_secs(60);
    let server = start(config).await;
    let h2 = tls_client(&[&f.ca.cert], ALL_VERSIONS, Proto::H2);
    let h1 = tls_client(&[&f.ca.cert], ALL_VERSIONS, Proto::H1);

    // The busy connection makes requests back to back, from before the idle ones connect until they are closed.
    let (busy, busy_task) = h2_watched(server.webhook, h2.clone()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let busy_loop = {
        let (mut busy, stop) = (busy.h2_clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0_u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let uid = format!("busy-{n}");
                admitted(&busy.mutate(&uid).await.unwrap(), &uid);
            }
            n
        })
    };
    let (mut idle, idle_task) = h2_watched(server.webhook, h2.clone()).await;
    admitted(&idle.mutate("idle-h2").await.unwrap(), "idle-h2");
    let (stream, ..) = tls_connect(server.webhook, h1.clone()).await.unwrap();
    let (mut idle_h1, idle_h1_task) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
    let idle_h1_task = tokio::spawn(idle_h1_task);
    idle_h1.ready().await.unwrap();
    let reply = idle_h1
        .send_request(
            Request::post("/mutate")
                .header(header::HOST, "127.0.0.1")
                .body(Full::new(Bytes::from(review("idle-h1"))))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    reply.into_body().collect().await.unwrap();

    // GOAWAY ends the HTTP/2 client connection cleanly, not with an error.
    tokio::time::timeout(DEADLINE, idle_task)
        .await
        .expect("the server closes the idle HTTP/2 connection")
        .unwrap()
        .expect("the idle HTTP/2 connection ends cleanly");
    tokio::time::timeout(DEADLINE, idle_h1_task)
        .await
        .expect("the server closes the idle HTTP/1.1 connection")
        .unwrap()
        .expect("the idle HTTP/1.1 connection ends cleanly");
    assert!(idle.mutate("too-late").await.is_err());
    // The busy one, never idle for long, has lived longer than the idle timeout, and still serves.
    stop.store(true, Ordering::Relaxed);
    let answered = busy_loop.await.unwrap();
    assert!(answered > 0);
    assert!(!busy_task.is_finished());
    let mut busy = busy;
    admitted(&busy.mutate("busy-last").await.unwrap(), "busy-last");
    eventually("only the busy connection to be open", async || {
        (open_connections(server.admin).await? == 1.0).then_some(())
    })
    .await;
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Bad requests and bad clients

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_bad_clients_leave_the_server_serving() {
    let f = Fixture::new("bad_requests_and_bad_clients");
    let mut config = f.config();
    config.header_timeout = Duration::from_secs(1);
    let server = start(config).await;
    let h1 = tls_client(&[&f.ca.cert], ALL_VERSIONS, Proto::H1);
    let h2 = tls_client(&[&f.ca.cert], ALL_VERSIONS, Proto::H2);

    let one_line = |reply: &Reply| {
        let text = reply.text();
        assert!(
            text.ends_with('\n') && text.trim_end().lines().count() == 1,
            "{text:?}"
        );
        assert!(
            reply
                .headers
                .get(header::CONTENT_TYPE)
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("text/plain"),
            "{reply:?}"
        );
        text
    };

    // (request, status, words in the reason), each on a fresh HTTP/1.1 connection.
    let v1beta1 = String::from_utf8(review("u"))
        .unwrap()
        .replace("admission.k8s.io/v1", "admission.k8s.io/v1beta1");
    let cases: Vec<(Method, &str, Vec<u8>, StatusCode, &str)> = vec![
        (
            Method::POST,
            "/mutate",
            b"{\"apiVersion\": \"admission.k8s.io/v1\", \"kind\": ".to_vec(),
            StatusCode::BAD_REQUEST,
            "body is not an AdmissionReview",
        ),
        (
            Method::POST,
            "/mutate",
            b"\xff\xfe not json at all".to_vec(),
            StatusCode::BAD_REQUEST,
            "body is not an AdmissionReview",
        ),
        (
            Method::POST,
            "/mutate",
            v1beta1.into_bytes(),
            StatusCode::BAD_REQUEST,
            "unsupported AdmissionReview apiVersion \"admission.k8s.io/v1beta1\"",
        ),
        (
            Method::GET,
            "/mutate",
            Vec::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST",
        ),
        (
            Method::POST,
            "/validate",
            review("u"),
            StatusCode::NOT_FOUND,
            "no such path \"/validate\"",
        ),
        (
            Method::POST,
            "/mutate",
            vec![b' '; MAX_BODY + 1],
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body exceeds 3145728 bytes",
        ),
    ];
    for (method, path, body, status, words) in cases {
        let mut conn = connect(server.webhook, h1.clone()).await.unwrap();
        let reply = conn.request(method.clone(), path, body).await.unwrap();
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.text());
        let text = one_line(&reply);
        assert!(text.contains(words), "{method} {path}: {text:?}");
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert_eq!(reply.headers.get(header::ALLOW).unwrap(), "POST");
        }
    }

    // Over HTTP/2, a body well over the limit is refused too, and the connection stays usable.
    let mut conn = connect(server.webhook, h2.clone()).await.unwrap();
    let reply = conn
        .request(Method::POST, "/mutate", vec![b' '; MAX_BODY + 1024 * 1024])
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text()
    );
    one_line(&reply);
    let reply = conn.mutate("after-413-h2").await.unwrap();
    admitted(&reply, "after-413-h2");

    // Clients that never complete a TLS handshake: one silent, one sending plain HTTP, one closing at once.
    let silent = TcpStream::connect(server.webhook).await.unwrap();
    let garbage = TcpStream::connect(server.webhook).await.unwrap();
    write_raw(
        &garbage,
        b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await
    .unwrap();
    drop(TcpStream::connect(server.webhook).await.unwrap());

    // While the silent client still holds its connection, good requests are answered.
    for proto_tls in [&h1, &h2] {
        let mut conn = connect(server.webhook, proto_tls.clone()).await.unwrap();
        let reply = conn.mutate("while-a-client-stalls").await.unwrap();
        admitted(&reply, "while-a-client-stalls");
    }

    // The server hangs up on both the garbage and, after the header timeout, the silent client.
    let answer = tokio::time::timeout(DEADLINE, read_until_closed(&garbage))
        .await
        .expect("the server closes a connection that is not TLS");
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    tokio::time::timeout(DEADLINE, read_until_closed(&silent))
        .await
        .expect("the server closes a connection that never starts a handshake");

    let text = eventually("three failed handshakes counted", async || {
        let text = scrape(server.admin).await;
        (metric(&text, "secure_defaults_tls_handshake_failures_total")? >= 3.0).then_some(text)
    })
    .await;
    assert_eq!(
        metric(&text, "secure_defaults_tls_handshake_failures_total"),
        Some(3.0),
        "{text}"
    );
    // The three malformed reviews and the two oversized bodies; 404 and 405 are not admission requests.
    assert_eq!(
        metric(
            &text,
            "secure_defaults_admission_requests_total{operation=\"unknown\",result=\"bad_request\"}"
        ),
        Some(5.0),
        "{text}"
    );

    // And after all that, the server still serves.
    let mut conn = connect(server.webhook, h1).await.unwrap();
    let reply = conn.mutate("still-serving").await.unwrap();
    assert_eq!(run_as_user(&admitted(&reply, "still-serving")), 65532);
    server.shutdown().await;
}

/// A client that stops sending in the middle of a body gets 408 Request Timeout at the request deadline, counted
/// as its fault (`client_timeout`), not the server's (`error`); the connection is marked as closing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_stalled_past_the_request_deadline_is_a_client_timeout() {
    let f = Fixture::new("stalled_body");
    let mut config = f.config();
    config.request_timeout = Duration::from_millis(300);
    let server = start(config).await;
    let tls = tls_client(&[&f.ca.cert], ALL_VERSIONS, Proto::H1);
    let slow = SlowReview::start(server.webhook, tls.clone(), "stalled")
        .await
        .unwrap();
    let reply = tokio::time::timeout(DEADLINE, slow.answer_unfinished())
        .await
        .expect("an answer at the request deadline")
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::REQUEST_TIMEOUT,
        "{}",
        reply.text()
    );
    assert!(
        reply.text().contains("request body not received within"),
        "{}",
        reply.text()
    );
    assert_eq!(reply.headers.get(header::CONNECTION).unwrap(), "close");
    let text = scrape(server.admin).await;
    assert_eq!(
        metric(
            &text,
            "secure_defaults_admission_requests_total{operation=\"unknown\",result=\"client_timeout\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("result=\"error\""), "{text}");
    // A review sent whole is still answered.
    let mut conn = connect(server.webhook, tls).await.unwrap();
    admitted(&conn.mutate("whole").await.unwrap(), "whole");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// 3. The admin endpoint

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoint_reports_health_readiness_and_metrics() {
    let f = Fixture::new("admin_endpoint");
    let server = start(f.config()).await;

    let healthz = admin_get(server.admin, "/healthz").await.unwrap();
    assert_eq!(healthz.status, StatusCode::OK);
    assert_eq!(healthz.text(), "ok\n");
    let readyz = admin_get(server.admin, "/readyz").await.unwrap();
    assert_eq!(readyz.status, StatusCode::OK, "{}", readyz.text());
    assert_eq!(readyz.text(), "ok\n");
    let missing = admin_get(server.admin, "/mutate").await.unwrap();
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let before = scrape(server.admin).await;
    assert_eq!(
        metric(&before, "secure_defaults_policy_generation"),
        Some(1.0),
        "{before}"
    );
    assert_eq!(
        metric(
            &before,
            "secure_defaults_admission_requests_total{operation=\"create\",result=\"patched\"}"
        ),
        None,
        "{before}"
    );

    let tls = tls_client(&[&f.ca.cert], ALL_VERSIONS, Proto::H1);
    let mut conn = connect(server.webhook, tls).await.unwrap();
    let reply = conn.mutate("counted").await.unwrap();
    admitted(&reply, "counted");

    let reply = admin_get(server.admin, "/metrics").await.unwrap();
    assert!(
        reply
            .headers
            .get(header::CONTENT_TYPE)
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{reply:?}"
    );
    let text = reply.text();
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let value = |series: &str| metric(&text, series);
    assert_eq!(
        value("secure_defaults_admission_requests_total{operation=\"create\",result=\"patched\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("secure_defaults_policy_generation"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("secure_defaults_fields_defaulted_total{field=\"runAsUser\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("secure_defaults_fields_defaulted_total{field=\"allowPrivilegeEscalation\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("secure_defaults_open_connections"),
        Some(1.0),
        "{text}"
    );

    // The latency histogram: 14 buckets and +Inf, cumulative, holding the one observation.
    let buckets: Vec<(String, f64)> = text
        .lines()
        .filter(|line| {
            line.starts_with("secure_defaults_admission_duration_seconds_bucket{")
                && line.contains("operation=\"create\"")
        })
        .map(|line| {
            let (series, count) = line.rsplit_once(' ').unwrap();
            let le = series
                .split("le=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            (le.to_owned(), count.parse().unwrap())
        })
        .collect();
    assert_eq!(buckets.len(), 15, "{text}");
    assert_eq!(buckets.last().unwrap(), &("+Inf".to_owned(), 1.0), "{text}");
    assert!(buckets.iter().any(|(le, _)| le == "0.001"), "{text}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{text}");
    assert_eq!(
        value("secure_defaults_admission_duration_seconds_count{operation=\"create\"}"),
        Some(1.0),
        "{text}"
    );
    let sum =
        value("secure_defaults_admission_duration_seconds_sum{operation=\"create\"}").unwrap();
    assert!(sum > 0.0 && sum < 5.0, "{text}");

    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// 4. Certificate reload

#[derive(Default)]
struct Hammer {
    presented: Vec<CertificateDer<'static>>,
    failures: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_swaps_without_failed_handshakes_and_refuses_a_bad_pair() {
    let mut f = Fixture::new("certificate_reload");
    let ca2 = Ca::new("the next CA");
    let leaf_b = ca2.leaf("secure-defaults, renewed");
    let server = start(f.config()).await;
    let tls = tls_client(&[&f.ca.cert, &ca2.cert], ALL_VERSIONS, Proto::H1);

    let mut kept = connect(server.webhook, tls.clone()).await.unwrap();
    assert_eq!(kept.peer, f.leaf.der);
    admitted(&kept.mutate("before-swap").await.unwrap(), "before-swap");

    // Fresh connections, one after another, for the whole swap; every one must succeed.
    let log = Arc::new(Mutex::new(Hammer::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let hammer = {
        let (log, stop, tls, webhook) = (log.clone(), stop.clone(), tls.clone(), server.webhook);
        tokio::spawn(async move {
            let mut n = 0_u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let uid = format!("hammer-{n}");
                let outcome = match connect(webhook, tls.clone()).await {
                    Ok(mut conn) => match conn.mutate(&uid).await {
                        Ok(reply) if reply.status == StatusCode::OK => Ok(conn.peer),
                        Ok(reply) => Err(format!("{uid}: {} {}", reply.status, reply.text())),
                        Err(e) => Err(format!("{uid}: request: {e}")),
                    },
                    Err(e) => Err(format!("{uid}: connect: {e}")),
                };
                let mut log = log.lock().unwrap();
                match outcome {
                    Ok(peer) => log.presented.push(peer),
                    Err(failure) => log.failures.push(failure),
                }
            }
        })
    };
    let presented = |der: &CertificateDer<'static>| {
        let log = log.lock().unwrap();
        log.presented.iter().filter(|p| *p == der).count()
    };
    eventually("the hammer to get answers with certificate A", async || {
        (presented(&f.leaf.der) >= 3).then_some(())
    })
    .await;

    f.certs.update(&cert_files(&leaf_b));
    eventually("a new connection to present certificate B", async || {
        let conn = connect(server.webhook, tls.clone()).await.unwrap();
        (conn.peer == leaf_b.der).then_some(())
    })
    .await;
    let after_swap = presented(&leaf_b.der);
    eventually(
        "the hammer to get more answers with certificate B",
        async || (presented(&leaf_b.der) >= after_swap + 3).then_some(()),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    hammer.await.unwrap();
    {
        let log = log.lock().unwrap();
        assert!(log.failures.is_empty(), "{:?}", log.failures);
        // Once B is presented, A never is again.
        let first_b = log.presented.iter().position(|p| *p == leaf_b.der).unwrap();
        assert!(log.presented[first_b..].iter().all(|p| *p == leaf_b.der));
    }
    // A connection made with A before the swap keeps working.
    admitted(
        &kept.mutate("kept-after-swap").await.unwrap(),
        "kept-after-swap",
    );

    let text = scrape(server.admin).await;
    assert_eq!(
        metric(
            &text,
            "secure_defaults_certificate_reloads_total{result=\"ok\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "secure_defaults_tls_handshake_failures_total"),
        Some(0.0),
        "{text}"
    );
    let failed = |text: &str| {
        metric(
            text,
            "secure_defaults_certificate_reloads_total{result=\"failed\"}",
        )
        .unwrap_or(0.0)
    };
    let failed_before = failed(&text);

    // A certificate that is not valid PEM, then a key that does not match: both refused, B stays.
    let garbage =
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=!!\n-----END CERTIFICATE-----\n";
    let other = f.ca.leaf("someone else");
    let broken: [[(&str, &[u8]); 2]; 2] = [
        [("tls.crt", garbage), ("tls.key", leaf_b.key_pem.as_bytes())],
        [
            ("tls.crt", leaf_b.cert_pem.as_bytes()),
            ("tls.key", other.key_pem.as_bytes()),
        ],
    ];
    for (n, files) in broken.iter().enumerate() {
        f.certs.update(files);
        let want = failed_before + 1.0 + n as f64;
        eventually("the broken pair to be refused", async || {
            (failed(&scrape(server.admin).await) >= want).then_some(())
        })
        .await;
        for proto in [Proto::H1, Proto::H2] {
            let tls = tls_client(&[&f.ca.cert, &ca2.cert], ALL_VERSIONS, proto);
            let mut conn = connect(server.webhook, tls).await.unwrap();
            assert_eq!(conn.peer, leaf_b.der, "the refused pair is not served");
            admitted(
                &conn.mutate("after-refusal").await.unwrap(),
                "after-refusal",
            );
        }
    }
    let text = scrape(server.admin).await;
    assert_eq!(
        metric(
            &text,
            "secure_defaults_certificate_reloads_total{result=\"ok\"}"
        ),
        Some(1.0),
        "{text}"
    );
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// 5. Policy reload through a ConfigMap-style symlink swap

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reload_follows_a_configmap_symlink_swap_and_keeps_the_last_good_policy() {
    let mut f = Fixture::new("policy_reload");
    assert!(
        std::fs::symlink_metadata(f.policy.path("policy.yaml"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let server = start(f.config()).await;
    let tls = tls_client(&[&f.ca.cert], ALL_VERSIONS, Proto::H2);
    assert_eq!(
        run_as_user_now(server.webhook, &tls, "initial").await,
        65532
    );

    f.policy
        .update(&[("policy.yaml", policy_yaml(10001).as_bytes())]);
    eventually("reviews to get the new runAsUser", async || {
        (run_as_user_now(server.webhook, &tls, "new-policy").await == 10001).then_some(())
    })
    .await;
    let text = scrape(server.admin).await;
    assert_eq!(
        metric(&text, "secure_defaults_policy_generation"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "secure_defaults_policy_reloads_total{result=\"ok\"}"),
        Some(1.0),
        "{text}"
    );

    // runAsUser: 0 is refused; the policy in force stays.
    f.policy
        .update(&[("policy.yaml", policy_yaml(0).as_bytes())]);
    let text = eventually("the invalid policy to be refused", async || {
        let text = scrape(server.admin).await;
        (metric(
            &text,
            "secure_defaults_policy_reloads_total{result=\"failed\"}",
        )? >= 1.0)
            .then_some(text)
    })
    .await;
    assert_eq!(
        metric(&text, "secure_defaults_policy_generation"),
        Some(2.0),
        "{text}"
    );
    for n in 0..3 {
        let uid = format!("after-refusal-{n}");
        assert_eq!(run_as_user_now(server.webhook, &tls, &uid).await, 10001);
    }
    // The refusal is counted once, not at every poll.
    let text = scrape(server.admin).await;
    assert_eq!(
        metric(
            &text,
            "secure_defaults_policy_reloads_total{result=\"failed\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "secure_defaults_policy_generation"),
        Some(2.0),
        "{text}"
    );
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------
// 6. The real binary: SIGTERM drain and start-up failures

/// Kills the child if the test ends without it having exited, so no process outlives a failed test.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary, run from `dir` (so no config/secure-defaults.yaml is found) without SECURE_DEFAULTS_* variables.
fn binary(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_secure-defaults"));
    cmd.current_dir(dir);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SECURE_DEFAULTS_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn serve_args(listen: u16, admin: u16, cert: &Path, key: &Path, policy: &Path) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    let mut args = vec![
        "serve".to_owned(),
        "--listen".to_owned(),
        format!("127.0.0.1:{listen}"),
        "--admin-listen".to_owned(),
        format!("127.0.0.1:{admin}"),
        "--tls-cert".to_owned(),
        path(cert),
        "--tls-key".to_owned(),
        path(key),
        "--policy".to_owned(),
        path(policy),
    ];
    args.extend(
        [
            "--no-namespace-lookups",
            "--drain-seconds",
            "2",
            "--shutdown-timeout-seconds",
            "5",
            "--log-format",
            "json",
        ]
        .map(str::to_owned),
    );
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_cleanly() {
    let f = Fixture::new("sigterm_drain");
    let (port, admin_port) = (free_port(), free_port());
    let (webhook, admin) = (
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from(([127, 0, 0, 1], admin_port)),
    );
    let log_path = f.dir.join("stderr.log");
    let child = binary(&f.dir.0)
        .args(serve_args(
            port,
            admin_port,
            &f.certs.path("tls.crt"),
            &f.certs.path("tls.key"),
            &f.policy.path("policy.yaml"),
        ))
        // The longest request deadline, so the half-sent review below is bounded by the drain, not by it.
        .env("SECURE_DEFAULTS_REQUEST_TIMEOUT_MS", "10000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    eventually("the server to report ready", async || {
        let reply = admin_get(admin, "/readyz").await.ok()?;
        (reply.status == StatusCode::OK).then_some(())
    })
    .await;

    let h1 = tls_client(&[&f.ca.cert], ALL_VERSIONS, Proto::H1);
    let h2 = tls_client(&[&f.ca.cert], ALL_VERSIONS, Proto::H2);
    let mut kept = connect(webhook, h1.clone()).await.unwrap();
    admitted(
        &kept.mutate("before-sigterm").await.unwrap(),
        "before-sigterm",
    );

    // Connections opened before the signal, and a burst of requests released together with it.
    let mut h1_conns = Vec::new();
    for _ in 0..12 {
        h1_conns.push(connect(webhook, h1.clone()).await.unwrap());
    }
    let h2_conn = connect(webhook, h2.clone()).await.unwrap();
    let go = Arc::new(tokio::sync::Barrier::new(12 + 24 + 8 + 1));
    let mut burst = Vec::new();
    for (n, mut conn) in h1_conns.into_iter().enumerate() {
        let go = go.clone();
        burst.push(tokio::spawn(async move {
            go.wait().await;
            let uid = format!("burst-h1-{n}");
            conn.mutate(&uid).await.map(|reply| (uid, reply))
        }));
    }
    for n in 0..24 {
        let (go, mut conn) = (go.clone(), h2_conn.h2_clone());
        burst.push(tokio::spawn(async move {
            go.wait().await;
            let uid = format!("burst-h2-{n}");
            conn.mutate(&uid).await.map(|reply| (uid, reply))
        }));
    }
    for n in 0..8 {
        let (go, tls) = (go.clone(), h1.clone());
        burst.push(tokio::spawn(async move {
            go.wait().await;
            let uid = format!("burst-new-{n}");
            let mut conn = connect(webhook, tls).await?;
            conn.mutate(&uid).await.map(|reply| (uid, reply))
        }));
    }
    go.wait().await;
    let signalled = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    for request in burst {
        let (uid, reply) = request
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("a request around SIGTERM failed: {e}\n{}", log()));
        admitted(&reply, &uid);
    }

    eventually("/readyz to turn 503", async || {
        let reply = admin_get(admin, "/readyz").await.ok()?;
        (reply.status == StatusCode::SERVICE_UNAVAILABLE).then_some(reply)
    })
    .await;
    let not_ready_after = signalled.elapsed();
    assert!(
        not_ready_after < Duration::from_secs(2),
        "readiness turned false only after {not_ready_after:?}"
    );
    // During the drain the open connection, and new ones, are still served.
    admitted(&kept.mutate("during-drain").await.unwrap(), "during-drain");
    let mut fresh = connect(webhook, h2.clone()).await.unwrap();
    admitted(
        &fresh.mutate("new-during-drain").await.unwrap(),
        "new-during-drain",
    );
    // A review whose body is only half sent when the drain ends.
    let slow = SlowReview::start(webhook, h1.clone(), "in-flight-at-drain-end")
        .await
        .unwrap();

    // After the drain the listener is gone.
    eventually(
        "new connections to be refused",
        async || match TcpStream::connect(webhook).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        },
    )
    .await;
    let refused_after = signalled.elapsed();
    assert!(
        refused_after >= Duration::from_millis(1900),
        "stopped accepting {refused_after:?} after SIGTERM, before the 2s drain ended"
    );
    // The request in flight when the server stopped accepting still gets its answer.
    let reply = slow
        .finish()
        .await
        .unwrap_or_else(|e| panic!("the in-flight review was dropped: {e}\n{}", log()));
    admitted(&reply, "in-flight-at-drain-end");

    let exit = eventually("the process to exit", async || child.0.try_wait().unwrap()).await;
    let log = log();
    assert!(exit.success(), "{exit:?}\n{log}");
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "{:?}",
        signalled.elapsed()
    );
    assert!(!log.contains("panicked"), "{log}");
    for line in log.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    }
    let line_of = |words: &str| {
        log.lines()
            .position(|line| line.contains(words))
            .unwrap_or_else(|| panic!("no log line with {words:?} in\n{log}"))
    };
    assert!(
        line_of("SIGTERM received") < line_of("stopped accepting"),
        "{log}"
    );
    // The half-sent review was really in flight when the server stopped accepting.
    assert!(
        line_of("stopped accepting") < line_of("\"uid\":\"in-flight-at-drain-end\""),
        "{log}"
    );
    assert!(
        line_of("all connections closed") < line_of("\"message\":\"stopped\""),
        "{log}"
    );
    // The per-admission line: one JSON object, its fields at the top level with their types.
    let line = log
        .lines()
        .nth(line_of("\"uid\":\"before-sigterm\""))
        .unwrap();
    let admission: Value = serde_json::from_str(line).unwrap();
    assert_eq!(admission["message"], "admission", "{line}");
    assert_eq!(admission["level"], "INFO", "{line}");
    assert_eq!(
        admission["target"], "secure_defaults::server::handle",
        "{line}"
    );
    assert!(admission["timestamp"].is_string(), "{line}");
    assert_eq!(admission["namespace"], "app", "{line}");
    assert_eq!(admission["operation"], "create", "{line}");
    assert_eq!(admission["pod"], "web", "{line}");
    assert_eq!(admission["result"], "patched", "{line}");
    assert!(
        admission["defaulted"]
            .as_str()
            .is_some_and(|d| d.contains("runAsUser=65532")),
        "{line}"
    );
    assert_eq!(admission["warnings"], 0, "{line}");
    assert_eq!(admission["exempt"], "", "{line}");
    assert_eq!(admission["policy_generation"], 1, "{line}");
    assert_eq!(admission["dry_run"], false, "{line}");
    assert!(admission["duration_us"].is_u64(), "{line}");
    assert!(admission.get("span").is_none(), "{line}");
}

#[test]
fn bad_startup_input_exits_non_zero_with_a_one_line_error() {
    let dir = TempDir::new("bad_startup_input");
    let ca = Ca::new("startup CA");
    let (leaf, other) = (ca.leaf("good"), ca.leaf("other"));
    let write = |name: &str, content: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    let good_policy = write("policy.yaml", policy_yaml(65532).as_bytes());
    let root_policy = write("root-policy.yaml", policy_yaml(0).as_bytes());
    let cert = write("tls.crt", leaf.cert_pem.as_bytes());
    let key = write("tls.key", leaf.key_pem.as_bytes());
    let other_key = write("other.key", other.key_pem.as_bytes());
    let missing = dir.join("missing.crt");

    // (cert, key, policy, words the message must hold)
    let cases: [(&Path, &Path, &Path, &[&str]); 3] = [
        (
            &cert,
            &key,
            &root_policy,
            &[
                "cannot start without a valid policy",
                "defaults.runAsUser",
                "line 5",
            ],
        ),
        (
            &missing,
            &key,
            &good_policy,
            &[
                "cannot start without a valid serving certificate",
                "missing.crt",
            ],
        ),
        (
            &cert,
            &other_key,
            &good_policy,
            &["does not match the certificate", "other.key"],
        ),
    ];
    for (cert, key, policy, words) in cases {
        let out = binary(&dir.0)
            .args(serve_args(free_port(), free_port(), cert, key, policy))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        for word in words {
            assert!(stderr.contains(word), "{word:?} not in {stderr}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Client certificates: with a client CA set, only clients presenting a certificate it issued are served

/// PEM text of a DER certificate.
fn pem(der: &CertificateDer<'static>) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// A client certificate issued by `ca`, and its key, as a client presents them.
fn client_identity(
    ca: &Ca,
    name: &str,
) -> (
    Vec<CertificateDer<'static>>,
    rustls_pki_types::PrivateKeyDer<'static>,
) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    (vec![cert.der().clone()], key)
}

/// A client that trusts `trusted` and presents `identity`, if any, over `versions`.
fn tls_client_as(
    trusted: &CertificateDer<'static>,
    identity: Option<&(
        Vec<CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    )>,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![Proto::H1.alpn().to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Whether a fresh connection with `tls` gets a review answered. A refused client certificate fails the handshake
/// for TLS 1.2; with TLS 1.3 the client finishes its side first and reads the server's alert with the response.
async fn served(webhook: SocketAddr, tls: Arc<ClientConfig>, uid: &str) -> bool {
    let Ok(mut conn) = connect(webhook, tls).await else {
        return false;
    };
    matches!(conn.mutate(uid).await, Ok(reply) if reply.status == StatusCode::OK)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ca_admits_only_its_clients_and_reloads_keeping_the_last_good_one() {
    let f = Fixture::new("client_ca");
    let (ca_a, ca_b) = (Ca::new("client CA A"), Ca::new("client CA B"));
    let (alice, bob) = (
        client_identity(&ca_a, "alice"),
        client_identity(&ca_b, "bob"),
    );
    let mut client_ca = Projected::create(
        &f.dir.join("client-ca"),
        &[("ca.crt", pem(&ca_a.cert).as_bytes())],
    );
    let server = start(Config {
        tls_client_ca: Some(client_ca.path("ca.crt")),
        ..f.config()
    })
    .await;
    let handshake_failures = async || {
        metric(
            &scrape(server.admin).await,
            "secure_defaults_tls_handshake_failures_total",
        )
        .unwrap_or(0.0)
    };

    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let as_alice = tls_client_as(&f.ca.cert, Some(&alice), versions);
        let mut conn = connect(server.webhook, as_alice).await.unwrap();
        admitted(&conn.mutate("alice").await.unwrap(), "alice");

        let before = handshake_failures().await;
        let anonymous = tls_client_as(&f.ca.cert, None, versions);
        assert!(
            !served(server.webhook, anonymous, "anonymous").await,
            "a client without a certificate is served ({versions:?})"
        );
        let as_bob = tls_client_as(&f.ca.cert, Some(&bob), versions);
        assert!(
            !served(server.webhook, as_bob, "bob").await,
            "a client with another CA's certificate is served ({versions:?})"
        );
        eventually("both refusals counted as failed handshakes", async || {
            (handshake_failures().await >= before + 2.0).then_some(())
        })
        .await;
    }

    // The file now names CA B: Bob is served and Alice no longer is, on new connections.
    let as_alice = tls_client_as(&f.ca.cert, Some(&alice), ALL_VERSIONS);
    let as_bob = tls_client_as(&f.ca.cert, Some(&bob), ALL_VERSIONS);
    client_ca.update(&[("ca.crt", pem(&ca_b.cert).as_bytes())]);
    eventually("a client of the new CA to be served", async || {
        served(server.webhook, as_bob.clone(), "bob-after-reload")
            .await
            .then_some(())
    })
    .await;
    assert!(!served(server.webhook, as_alice.clone(), "alice-after-reload").await);
    let text = scrape(server.admin).await;
    assert_eq!(
        metric(
            &text,
            "secure_defaults_certificate_reloads_total{result=\"ok\"}"
        ),
        Some(1.0),
        "{text}"
    );

    // A file that does not load is refused and counted; CA B stays.
    client_ca.update(&[(
        "ca.crt",
        b"-----BEGIN CERTIFICATE-----\nbm90!!\n-----END CERTIFICATE-----\n",
    )]);
    eventually("the broken client CA to be refused", async || {
        let text = scrape(server.admin).await;
        metric(
            &text,
            "secure_defaults_certificate_reloads_total{result=\"failed\"}",
        )
        .filter(|n| *n >= 1.0)
    })
    .await;
    assert!(served(server.webhook, as_bob, "bob-after-refusal").await);
    assert!(!served(server.webhook, as_alice, "alice-after-refusal").await);
    server.shutdown().await;
}
