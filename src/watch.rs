//! Polling: a cancellable ticker for the server's periodic work, and change detection by content for the
//! files it reloads (policy, certificate, key).
//!
//! A ConfigMap or Secret volume is updated by the kubelet swapping a `..data` symlink, so neither the inode nor
//! the mtime of the path is a reliable signal. Re-reading a few kilobytes every interval and comparing bytes is,
//! and it costs nothing next to the rest of the server.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Ticks every `period` until `stop` is cancelled; a slow round delays the next tick rather than bunching them.
pub struct Every {
    ticker: tokio::time::Interval,
    stop: CancellationToken,
}

impl Every {
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

/// A set of files read together (a certificate and its key must change as a pair).
pub struct FileSet {
    paths: Vec<PathBuf>,
    last: Option<Vec<Vec<u8>>>,
}

/// What a poll found.
pub enum Change {
    Unchanged,
    /// The files' contents differ from the last successful read (or the last reported error was for other content).
    Changed(Vec<Vec<u8>>),
    Unreadable(PathBuf, std::io::Error),
}

impl FileSet {
    /// Starts watching; `current` is the content already in use, so only later changes are reported.
    pub fn new(paths: Vec<PathBuf>, current: Vec<Vec<u8>>) -> Self {
        Self {
            paths,
            last: Some(current),
        }
    }

    pub fn poll(&mut self) -> Change {
        let mut contents = Vec::with_capacity(self.paths.len());
        for path in &self.paths {
            match std::fs::read(path) {
                Ok(bytes) => contents.push(bytes),
                Err(e) => return Change::Unreadable(path.clone(), e),
            }
        }
        if self.last.as_ref() == Some(&contents) {
            return Change::Unchanged;
        }
        // Remember what was seen even if it fails to load, so a bad file is reported once, not every interval.
        self.last = Some(contents.clone());
        Change::Changed(contents)
    }
}
