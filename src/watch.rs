//! Keeping things current: a cancellable ticker, change detection by content, and the one poll-validate-swap
//! loop ([`reload`]) for the files the server reloads (policy, certificate and key, client CA); and for the API
//! watches (namespaces, certificate Secret) a short retry cap and a failure reporter that says an outage once
//! instead of once per retry.
//!
//! A ConfigMap or Secret volume is updated by the kubelet swapping a `..data` symlink, so neither the inode nor
//! the mtime of the path is a reliable signal. Re-reading a few kilobytes every interval and comparing bytes is,
//! and it costs nothing next to the rest of the server.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Ticks every `period` until `stop` is cancelled; a slow round delays the next tick rather than bunching them.
pub struct Every {
    ticker: tokio::time::Interval,
    stop: CancellationToken,
}

impl Every {
    /// A ticker of `period`, stopped by `stop`.
    pub fn new(period: Duration, stop: CancellationToken) -> Self {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { ticker, stop }
    }

    /// Waits for the next tick; false once stopped.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = self.ticker.tick() => true,
            () = self.stop.cancelled() => false,
        }
    }
}

/// A set of files read together (a certificate and its key must change as a pair), and their contents last read.
struct FileSet {
    paths: Vec<PathBuf>,
    last: Vec<Vec<u8>>,
}

/// Something the server reloads from files: how new contents are checked, and how they are put in force. The
/// loop around it, [`reload`], is the one place that polls, refuses, keeps the last good state, logs and counts.
pub trait Reloadable {
    /// What it is, for log lines: `policy`, `serving certificate`, `client CA`.
    const WHAT: &'static str;
    /// A refused change is only reported once the same bytes are seen on a second poll: for files written in
    /// place, or a pair read one after the other, which can be read half-written.
    const CONFIRM_REFUSAL: bool;
    /// New contents, checked.
    type Loaded;
    /// Why new contents were refused.
    type Error: std::error::Error;
    /// The files, read together; `load` gets their contents in this order.
    fn paths(&self) -> Vec<PathBuf>;
    /// Checks the files' new contents (one per file, in order).
    fn load(&self, contents: &[Vec<u8>]) -> Result<Self::Loaded, Self::Error>;
    /// Puts checked contents in force, and says so.
    fn swap(&self, loaded: Self::Loaded, metrics: &Metrics);
    /// The reload counter it counts in.
    fn counter(metrics: &Metrics) -> &ReloadCounter;
}

/// A reload counter: by result, ok or failed.
pub type ReloadCounter = prometheus_client::metrics::family::Family<
    crate::metrics::Labels<1>,
    prometheus_client::metrics::counter::Counter,
>;

/// Polls the files of `thing` every `interval` until `stop`, putting each change that loads in force; `loaded` is
/// their contents in force at start, so only later changes count. A change that does not load is refused, logged
/// and counted, and the last good state stays; so does an unreadable file (reported once until it reads again).
pub async fn reload<R: Reloadable>(
    thing: R,
    loaded: Vec<Vec<u8>>,
    metrics: std::sync::Arc<Metrics>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut files = FileSet {
        paths: thing.paths(),
        last: loaded,
    };
    let mut every = Every::new(interval, stop);
    let mut refused: Option<R::Error> = None;
    let mut unreadable_reported = false;
    let refuse = |error: &R::Error| {
        Metrics::count_reload(R::counter(&metrics), false);
        tracing::error!(error = %crate::error_chain(error), "{} refused; keeping the {} in force", R::WHAT, R::WHAT);
    };
    while every.tick().await {
        match files.poll() {
            Change::Unchanged => {
                unreadable_reported = false;
                if let Some(error) = refused.take() {
                    refuse(&error);
                }
            }
            Change::Unreadable(path, error) => {
                refused = None;
                if !unreadable_reported {
                    unreadable_reported = true;
                    Metrics::count_reload(R::counter(&metrics), false);
                    tracing::error!(path = %path.display(), %error, "cannot read the {} file; keeping the {} in force", R::WHAT, R::WHAT);
                }
            }
            Change::Changed(contents) => {
                unreadable_reported = false;
                refused = None;
                match thing.load(&contents) {
                    Ok(loaded) => {
                        thing.swap(loaded, &metrics);
                        Metrics::count_reload(R::counter(&metrics), true);
                    }
                    Err(error) if R::CONFIRM_REFUSAL => refused = Some(error),
                    Err(error) => refuse(&error),
                }
            }
        }
    }
}

/// What a poll found.
enum Change {
    /// The same bytes as last time.
    Unchanged,
    /// The files' contents differ from the last successful read (or the last reported error was for other content).
    Changed(Vec<Vec<u8>>),
    /// A file could not be read.
    Unreadable(PathBuf, std::io::Error),
}

impl FileSet {
    /// Reads the files and says what changed.
    fn poll(&mut self) -> Change {
        let mut contents = Vec::with_capacity(self.paths.len());
        for path in &self.paths {
            match std::fs::read(path) {
                Ok(bytes) => contents.push(bytes),
                Err(e) => return Change::Unreadable(path.clone(), e),
            }
        }
        if self.last == contents {
            return Change::Unchanged;
        }
        // Remember what was seen even if it fails to load, so a bad file is reported once, not every interval.
        self.last = contents.clone();
        Change::Changed(contents)
    }
}

/// The retry delays of an API watch: from 250 ms doubling to 2 s, plus up to as much again of jitter so that
/// replicas do not reconnect in step. kube's default grows to 30 s (plus jitter) and only shrinks after two
/// quiet minutes, which left the namespace cache stale for over a minute after an API server came back; a
/// watch of one kind costs the API server one list per retry, which it can take every few seconds.
pub fn retry_backoff() -> kube::runtime::watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(2))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

/// How often a continuing outage is reported after its first failure.
pub const REPORT_EVERY: Duration = Duration::from_secs(30);

/// Turns the stream of failures and successes of a retried operation into few log lines: the first failure,
/// then at most one line per `every` with the number of failures since the last line, and one line on
/// recovery. Retries every few seconds would otherwise log an error every few seconds for as long as an API
/// server is away.
#[derive(Debug)]
pub struct Outage {
    every: Duration,
    /// Set while failing: when the outage began, when it was last reported, failures not yet reported.
    current: Option<Failing>,
}

#[derive(Debug)]
struct Failing {
    began: Instant,
    reported: Instant,
    unreported: u64,
}

/// What to log after a failure.
#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    /// The first failure after a success (or since start).
    Began,
    /// Still failing: `failures` since the last line, `for_` since the outage began.
    Continuing {
        /// Failures since the last line.
        failures: u64,
        /// Time since the outage began.
        for_: Duration,
    },
}

impl Outage {
    /// A reporter that says a continuing outage at most once per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            current: None,
        }
    }

    /// Records a failure at `now`; returns what to log, if anything.
    pub fn failed(&mut self, now: Instant) -> Option<Report> {
        let Some(failing) = &mut self.current else {
            self.current = Some(Failing {
                began: now,
                reported: now,
                unreported: 0,
            });
            return Some(Report::Began);
        };
        failing.unreported += 1;
        if now.saturating_duration_since(failing.reported) < self.every {
            return None;
        }
        let report = Report::Continuing {
            failures: failing.unreported,
            for_: now.saturating_duration_since(failing.began),
        };
        failing.reported = now;
        failing.unreported = 0;
        Some(report)
    }

    /// Records a success at `now`; returns how long the outage lasted if this ends one.
    pub fn succeeded(&mut self, now: Instant) -> Option<Duration> {
        self.current
            .take()
            .map(|failing| now.saturating_duration_since(failing.began))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_once_then_at_a_bounded_rate_then_on_recovery() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut outage = Outage::new(Duration::from_secs(30));
        assert_eq!(outage.succeeded(at(0)), None, "no outage to end");
        assert_eq!(outage.failed(at(1)), Some(Report::Began));
        assert!(outage.current.is_some(), "failing");
        // A retry every 2 s: silent until 30 s after the first line.
        for secs in (3..31).step_by(2) {
            assert_eq!(outage.failed(at(secs)), None, "at {secs} s");
        }
        assert_eq!(
            outage.failed(at(31)),
            Some(Report::Continuing {
                failures: 15,
                for_: Duration::from_secs(30)
            })
        );
        assert_eq!(outage.failed(at(33)), None);
        assert_eq!(outage.succeeded(at(40)), Some(Duration::from_secs(39)));
        assert!(outage.current.is_none(), "recovered");
        assert_eq!(outage.succeeded(at(41)), None, "recovery is said once");
        assert_eq!(outage.failed(at(50)), Some(Report::Began), "a new outage");
    }

    #[test]
    fn retry_delays_stay_short() {
        let mut delays = retry_backoff();
        for _ in 0..50 {
            let delay = delays.next();
            assert!(
                delay.is_some_and(|d| d <= Duration::from_secs(4)),
                "{delay:?}"
            );
        }
    }
}
