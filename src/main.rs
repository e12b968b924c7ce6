//! The `secure-defaults` binary: parses the command line and calls into the library.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use secure_defaults::cli::{
    AuditArgs, CheckArgs, Cli, Command, GenerateArgs, MutateArgs, Output, ServeArgs,
};
use secure_defaults::config::{self, Config, LogFormat};
use secure_defaults::images::{Images, Platform};
use secure_defaults::policy::{self, NamespaceLabels};
use secure_defaults::{admission, preview};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `mutate` fails with 2, so that its `--exit-code` can say "would change" with 1.
    let (result, failed) = match cli.command {
        Command::Serve(args) => (serve(args).map(|()| ExitCode::SUCCESS), 1),
        Command::Mutate(args) => (mutate(args), 2),
        Command::Check(args) => (check(args).map(|()| ExitCode::SUCCESS), 1),
        Command::Audit(args) => (audit(args).map(|()| ExitCode::SUCCESS), 1),
        Command::Generate(args) => (generate(args), 1),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(failed)
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (file, required) = match &args.config {
        Some(path) => (path.clone(), true),
        None => (std::path::PathBuf::from(config::DEFAULT_CONFIG), false),
    };
    let config = config::load(&file, required, &args)?;
    // Held until serve returns: dropping it flushes the log lines still queued.
    let _log_flush = init_tracing(&config)?;
    runtime(tokio::runtime::Builder::new_multi_thread())?.block_on(async {
        // Installed before anything listens, so a SIGTERM at any moment after start drains.
        let shutdown = shutdown_signal()?;
        let server = secure_defaults::server::Server::bind(config).await?;
        server.run(shutdown).await;
        Ok(())
    })
}

/// An async runtime for talking to the cluster. kube's client and the server both use rustls with ring; it is made
/// the process default first.
fn runtime(mut builder: tokio::runtime::Builder) -> anyhow::Result<tokio::runtime::Runtime> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// Logs go to standard error through tracing-appender's writer thread, so answering a review never waits on a
/// write to standard error. The queue is bounded and not lossy: if standard error stalls long enough to fill it,
/// logging waits rather than dropping a line. The returned guard writes what is queued when dropped, at exit.
/// `log` records (rustls, and others) are bridged into tracing by the subscriber's `init`.
fn init_tracing(config: &Config) -> anyhow::Result<tracing_appender::non_blocking::WorkerGuard> {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .with_context(|| format!("invalid log_level {:?}", config.log_level))?;
    let json = match config.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        // The worker flushes whenever its queue runs empty: lines that arrive together leave in one write.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    if json {
        // One JSON object per line: timestamp, level, the event's fields (message among them), target, and,
        // inside a span, a `span` object with its fields.
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
    Ok(guard)
}

fn mutate(args: MutateArgs) -> anyhow::Result<ExitCode> {
    let policy = policy::load(&args.policy)?;
    let sources = if args.file.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read standard input")?;
        vec![preview::Source::new("-", bytes)]
    } else {
        preview::read_path(&args.file)?
    };
    let labels: BTreeMap<String, String> = args.namespace_labels.into_iter().collect();
    let lookup = images_lookup(args.images, &policy)?;
    let runtime = match &lookup {
        Some(_) => Some(runtime(tokio::runtime::Builder::new_current_thread())?),
        None => None,
    };
    let look_up: &dyn Fn(Vec<&str>, Option<Platform>) -> Images =
        &|wanted, platform| match (&lookup, &runtime) {
            (Some(lookup), Some(runtime)) => {
                runtime.block_on(lookup.users(wanted, platform.as_ref()))
            }
            _ => Images::default(),
        };
    let options = preview::Options {
        namespace: args.namespace.as_deref(),
        labels: &labels,
        images: lookup.as_ref().map(|_| look_up),
    };
    let run = preview::run(sources, &policy, &options);
    for note in preview::notes(&run) {
        eprintln!("{note}");
    }
    let not_opted_in = run
        .previews
        .iter()
        .any(|p| p.verdict == admission::Verdict::Exempt(policy::Exemption::NotOptedIn));
    if not_opted_in && labels.is_empty() {
        eprintln!(
            "note: add --namespace-label {}=enabled to preview an opted-in namespace",
            policy::INJECT_LABEL
        );
    }
    let text = preview::render(&run, args.output == Output::Object);
    std::io::stdout().lock().write_all(text.as_bytes())?;
    for error in &run.errors {
        eprintln!("error: {}", secure_defaults::error_chain(error));
    }
    Ok(if !run.errors.is_empty() {
        ExitCode::from(2)
    } else if args.exit_code && run.changes() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The image lookups of `--images`: the policy's `images:` section must say which registries to ask.
fn images_lookup(
    wanted: bool,
    policy: &policy::Policy,
) -> anyhow::Result<Option<secure_defaults::images::lookup::Lookup>> {
    if !wanted {
        return Ok(None);
    }
    let Some(section) = &policy.images else {
        anyhow::bail!(
            "--images needs the policy's images: section (which registries to ask, with which credentials)"
        );
    };
    Ok(Some(secure_defaults::images::lookup::Lookup::new(section)?))
}

fn check(args: CheckArgs) -> anyhow::Result<()> {
    let policy = policy::load(&args.policy)?;
    // The images: section's credentials and CA files, read as the server reads them (no registry is asked), so a
    // policy that check calls valid is one the server takes.
    images_lookup(policy.images.is_some(), &policy)?;
    print!(
        "{}: valid\n{}",
        args.policy.display(),
        policy::explain(&policy)
    );
    if let Some(namespace) = args.namespace {
        let labels: BTreeMap<String, String> = args.namespace_labels.into_iter().collect();
        let decision = policy.for_namespace(&namespace, NamespaceLabels::Known(&labels));
        print!("{}", policy::explain_namespace(&namespace, &decision));
    }
    Ok(())
}

fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let groups = runtime(tokio::runtime::Builder::new_current_thread())?.block_on(async {
        let timeouts = secure_defaults::audit::Timeouts {
            connect: std::time::Duration::from_secs(args.connect_timeout),
            read: std::time::Duration::from_secs(args.request_timeout),
        };
        let client = secure_defaults::audit::connect(timeouts).await?;
        let policy = match &args.policy {
            Some(path) => policy::load(path)?,
            None => {
                secure_defaults::audit::policy_from_cluster(
                    &client,
                    &args.policy_configmap,
                    &args.policy_key,
                )
                .await?
            }
        };
        let lookup = images_lookup(args.images, &policy)?;
        anyhow::Ok(
            secure_defaults::audit::run(&client, &policy, args.page_size, lookup.as_ref()).await?,
        )
    })?;
    print!("{}", secure_defaults::audit::render(&groups, args.output));
    Ok(())
}

fn generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    use secure_defaults::generate;
    let mut stale = Vec::new();
    let mut files: BTreeMap<&str, String> = BTreeMap::new();
    for region in generate::regions() {
        let text = match files.remove(region.file) {
            Some(text) => text,
            None => std::fs::read_to_string(region.file).with_context(|| {
                format!("cannot read {} (run from the repository root)", region.file)
            })?,
        };
        files.insert(region.file, generate::apply(&text, &region)?);
    }
    for (file, text) in files {
        let current =
            std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?;
        if current == text {
            continue;
        }
        stale.push(file);
        if !args.check {
            std::fs::write(file, text).with_context(|| format!("cannot write {file}"))?;
            eprintln!("wrote {file}");
        }
    }
    if args.check && !stale.is_empty() {
        eprintln!("stale: {} (run `make generate`)", stale.join(", "));
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
