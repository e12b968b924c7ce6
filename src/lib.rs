pub mod admission;
pub mod cli;
pub mod config;
pub mod defaults;
pub mod metrics;
pub mod namespaces;
pub mod patch;
pub mod pod;
pub mod policy;
pub mod preview;
pub mod server;
pub mod watch;

/// An error and its causes on one line: `outer: inner: innermost`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
