//! Log output: JSON lines written straight into the line buffer, and a writer thread that batches lines.
//!
//! The JSON has the same shape as tracing-subscriber's flattened JSON (`timestamp`, `level`, the event's fields,
//! `span`, `target`), written without serde: an info line per admission is on the request path, and going
//! through a serializer per field cost more than deciding the pod.
//!
//! Lines are appended to a shared buffer that a writer thread empties every few milliseconds with one write.
//! A line never wakes the thread on its own (only the first of a batch does), so a request does not pay for a
//! context switch and a write on the core that serves it.

use std::fmt::{self, Write as _};
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// Stand-in until the log writer moves to tracing-subscriber's own JSON output.
fn push_decimal(out: &mut String, value: u64, width: usize) {
    let _ = write!(out, "{value:0width$}");
}

/// The event format: `{"timestamp":…,"level":…,<fields>,"span":{<fields>,"name":…},"target":…}`.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

/// The span field format to go with [`JsonLines`]: `"key":value` pairs joined by commas, without braces, so an
/// event can splice them into its `span` object as they are.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonFields;

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Events bridged from the `log` crate carry their real target in `log.*` fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut line = String::with_capacity(512);
        line.push_str("{\"timestamp\":\"");
        timestamp(&mut line, SystemTime::now());
        line.push_str("\",\"level\":\"");
        line.push_str(meta.level().as_str());
        line.push('"');
        event.record(&mut Fields::after_others(&mut line));
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            line.push_str(",\"span\":{");
            if let Some(fields) = span.extensions().get::<FormattedFields<JsonFields>>()
                && !fields.is_empty()
            {
                line.push_str(fields);
                line.push(',');
            }
            line.push_str("\"name\":");
            string(&mut line, span.metadata().name());
            line.push('}');
        }
        line.push_str(",\"target\":");
        string(&mut line, meta.target());
        line.push_str("}\n");
        writer.write_str(&line)
    }
}

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut out = String::new();
        fields.record(&mut Fields::first(&mut out));
        writer.write_str(&out)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut out = String::new();
        let mut visitor = if current.is_empty() {
            Fields::first(&mut out)
        } else {
            Fields::after_others(&mut out)
        };
        fields.record(&mut visitor);
        current.fields.push_str(&out);
        Ok(())
    }
}

/// Writes each field as `"name":value`, with a comma before all but a first one.
struct Fields<'a> {
    out: &'a mut String,
    comma: bool,
}

impl<'a> Fields<'a> {
    fn first(out: &'a mut String) -> Self {
        Self { out, comma: false }
    }

    fn after_others(out: &'a mut String) -> Self {
        Self { out, comma: true }
    }

    fn key(&mut self, field: &Field) -> bool {
        // The `log` bridge's bookkeeping, already used for the target.
        if field.name().starts_with("log.") {
            return false;
        }
        if self.comma {
            self.out.push(',');
        }
        self.comma = true;
        string(self.out, field.name());
        self.out.push(':');
        true
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            string(self.out, value);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            self.out.push_str(if value { "true" } else { "false" });
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            push_decimal(self.out, value, 1);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            if value < 0 {
                self.out.push('-');
            }
            push_decimal(self.out, value.unsigned_abs(), 1);
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            if value.is_finite() {
                let _ = write!(self.out, "{value}");
            } else {
                // JSON has no NaN or infinity.
                self.out.push_str("null");
            }
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.key(field) {
            self.out.push('"');
            let _ = write!(Escaped(self.out), "{value}");
            self.out.push('"');
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.key(field) {
            self.out.push('"');
            let _ = write!(Escaped(self.out), "{value:?}");
            self.out.push('"');
        }
    }
}

/// A JSON string: quotes around `value` escaped.
pub fn string(out: &mut String, value: &str) {
    out.push('"');
    escape(out, value);
    out.push('"');
}

/// `value` escaped for the inside of a JSON string.
fn escape(out: &mut String, value: &str) {
    let quoted = serde_json::to_string(value).unwrap_or_default();
    out.push_str(quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or(""));
}

/// Escapes what a `Display` or `Debug` implementation writes, as it writes it.
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape(self.0, s);
        Ok(())
    }
}

/// RFC 3339 in UTC with microseconds, `2026-11-27T02:56:01.084856Z`: the format tracing-subscriber writes. The
/// calendar comes from `time`; the digits are written by hand, which `time`'s formatter is several times slower at.
fn timestamp(out: &mut String, now: SystemTime) {
    let (seconds, micros) = now
        .duration_since(UNIX_EPOCH)
        .map_or((0, 0), |since| (since.as_secs(), since.subsec_micros()));
    // A clock before 1970 or past year 9999 is broken; the epoch is as good a stand-in as any.
    let at = i64::try_from(seconds)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let (year, month, day) = at.to_calendar_date();
    push_decimal(out, u64::from(year.unsigned_abs()), 4);
    out.push('-');
    push_decimal(out, u64::from(u8::from(month)), 2);
    out.push('-');
    push_decimal(out, u64::from(day), 2);
    out.push('T');
    push_decimal(out, u64::from(at.hour()), 2);
    out.push(':');
    push_decimal(out, u64::from(at.minute()), 2);
    out.push(':');
    push_decimal(out, u64::from(at.second()), 2);
    out.push('.');
    push_decimal(out, u64::from(micros), 6);
    out.push('Z');
}

/// How long the writer thread lets lines gather after the first one of a batch.
pub const BATCH_WINDOW: Duration = Duration::from_millis(10);

/// Lines waiting beyond this wake the writer thread at once; beyond four times this, logging waits for it: no
/// line is ever dropped, and memory stays bounded if the output stalls.
pub const BATCH_BYTES: usize = 256 * 1024;

/// A [`MakeWriter`] whose lines go to a writer thread in batches; see the module documentation.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Stops the writer thread when dropped, after it has written every line logged so far.
pub struct BatchFlusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// The writer thread waits here for lines (or a full batch, or the end).
    lines: Condvar,
    /// Logging waits here while the batch is over its bound.
    room: Condvar,
    window: Duration,
    high: usize,
}

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only bytes behind it; they are still worth writing.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Starts the writer thread that writes batches of lines to `out`.
pub fn batch_writer<W: io::Write + Send + 'static>(
    out: W,
    window: Duration,
    high: usize,
) -> io::Result<(BatchWriter, BatchFlusher)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        lines: Condvar::new(),
        room: Condvar::new(),
        window,
        high: high.max(1),
    });
    let thread = std::thread::Builder::new()
        .name("log-writer".to_owned())
        .spawn({
            let shared = shared.clone();
            move || write_batches(&shared, out)
        })?;
    Ok((
        BatchWriter {
            shared: shared.clone(),
        },
        BatchFlusher {
            shared,
            thread: Some(thread),
        },
    ))
}

fn write_batches<W: io::Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::new();
    loop {
        {
            let mut state = shared.lock();
            while state.pending.is_empty() && !state.closed {
                state = shared
                    .lines
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.pending.is_empty() {
                return; // closed, and everything written
            }
            if !state.closed {
                state = shared
                    .lines
                    .wait_timeout_while(state, shared.window, |s| {
                        s.pending.len() < shared.high && !s.closed
                    })
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            std::mem::swap(&mut state.pending, &mut batch);
        }
        shared.room.notify_all();
        // Nowhere to report a failing standard error; the lines are dropped rather than retried forever.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
    }
}

impl io::Write for BatchWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let shared = &self.shared;
        let mut state = shared.lock();
        while state.pending.len() >= shared.high * 4 && !state.closed {
            shared.lines.notify_one();
            state = shared
                .room
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let was_empty = state.pending.is_empty();
        state.pending.extend_from_slice(line);
        let full = state.pending.len() >= shared.high;
        drop(state);
        if was_empty || full {
            shared.lines.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for BatchFlusher {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.lines.notify_all();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use proptest::prelude::*;
    use serde_json::{Value, json};
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// The lines `emit` logs at debug level, each parsed as JSON.
    fn lines(emit: impl FnOnce()) -> Vec<Value> {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(captured.clone())
            .fmt_fields(JsonFields)
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not JSON: {line}"))
            })
            .collect()
    }

    #[derive(Debug)]
    struct Failure;

    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("disk \"full\"\nretry")
        }
    }

    impl std::error::Error for Failure {}

    #[test]
    fn every_field_kind_becomes_json_of_the_same_value() {
        let got = lines(|| {
            tracing::info!(
                text = "quote \" backslash \\ newline \n tab \t bell \u{7} é 🚀",
                count = 42u64,
                delta = -7i64,
                ratio = 0.5f64,
                nan = f64::NAN,
                flag = true,
                shown = %"a \"display\" value",
                debugged = ?vec!["x"],
                error = &Failure as &(dyn std::error::Error + 'static),
                "hello {}",
                "world"
            );
        });
        assert_eq!(got.len(), 1);
        let line = &got[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "hello world");
        assert_eq!(
            line["text"],
            "quote \" backslash \\ newline \n tab \t bell \u{7} é 🚀"
        );
        assert_eq!(line["count"], 42);
        assert_eq!(line["delta"], -7);
        assert_eq!(line["ratio"], 0.5);
        assert_eq!(line["nan"], Value::Null);
        assert_eq!(line["flag"], true);
        assert_eq!(line["shown"], "a \"display\" value");
        assert_eq!(line["debugged"], "[\"x\"]");
        assert_eq!(line["error"], "disk \"full\"\nretry");
        assert_eq!(line["target"], module_path!());
        assert!(line.get("span").is_none(), "{line}");
        let stamp = line["timestamp"].as_str().unwrap();
        assert!(
            time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
                .is_ok(),
            "{stamp}"
        );
    }

    #[test]
    fn fields_keep_their_order_after_timestamp_and_level() {
        let got = lines(|| tracing::warn!(b = 1u64, a = 2u64, "m"));
        let keys: Vec<&str> = got[0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["timestamp", "level", "message", "b", "a", "target"]);
    }

    #[test]
    fn the_current_span_and_fields_recorded_later_appear_under_span() {
        let got = lines(|| {
            let span = tracing::debug_span!(
                "admission",
                uid = "u-1",
                namespace = "shop",
                late = tracing::field::Empty
            );
            let _entered = span.enter();
            span.record("late", 3u64);
            tracing::debug!(step = "decide", "inside");
            let empty = tracing::debug_span!("bare");
            let _inner = empty.enter();
            tracing::debug!("deeper");
        });
        assert_eq!(
            got[0]["span"],
            json!({"uid": "u-1", "namespace": "shop", "late": 3, "name": "admission"})
        );
        assert_eq!(got[0]["step"], "decide");
        assert_eq!(got[1]["span"], json!({"name": "bare"}));
    }

    #[test]
    fn timestamps_match_a_calendar_library() {
        for (seconds, want) in [
            (0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, "2000-02-29T00:00:00.000000Z"),
            (4_107_542_399, "2100-02-28T23:59:59.000000Z"),
            (1_795_747_201, "2026-11-27T02:40:01.000000Z"),
        ] {
            let mut out = String::new();
            timestamp(&mut out, UNIX_EPOCH + Duration::from_secs(seconds));
            assert_eq!(out, want, "{seconds}");
        }
    }

    #[test]
    fn integers_at_their_limits() {
        let got = lines(|| {
            tracing::info!(
                zero = 0u64,
                max = u64::MAX,
                min = i64::MIN,
                minus_one = -1i64,
                "limits"
            )
        });
        assert_eq!(got[0]["zero"], 0);
        assert_eq!(got[0]["max"], u64::MAX);
        assert_eq!(got[0]["min"], i64::MIN);
        assert_eq!(got[0]["minus_one"], -1);
    }

    /// An output that records what each write carried.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl io::Write for Writes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn batches_keep_every_line_in_order_and_flush_at_the_end() {
        let out = Writes::default();
        // A bound small enough that writers wait for room many times over.
        let (writer, flusher) = batch_writer(out.clone(), Duration::from_millis(5), 64).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let mut w = writer.make_writer();
                        io::Write::write_all(&mut w, format!("{t} {i}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(flusher);
        let writes = out.0.lock().unwrap().clone();
        let text = String::from_utf8(writes.concat()).unwrap();
        for t in 0..4 {
            let seen: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("{t} ")))
                .map(|i| i.parse().unwrap())
                .collect();
            assert_eq!(seen, (0..500).collect::<Vec<_>>(), "thread {t}");
        }
        assert!(
            writes.len() < 2000,
            "{} writes for 2000 lines: not batched",
            writes.len()
        );
    }

    #[test]
    fn lines_logged_while_idle_are_written_within_the_window() {
        let out = Writes::default();
        let (writer, _flusher) =
            batch_writer(out.clone(), Duration::from_millis(1), 1 << 20).unwrap();
        io::Write::write_all(&mut writer.make_writer(), b"one\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while out.0.lock().unwrap().concat() != b"one\n" {
            assert!(std::time::Instant::now() < deadline, "line not written");
            std::thread::yield_now();
        }
    }

    proptest! {
        #[test]
        fn any_integer_is_written_as_rust_writes_it(value in any::<i64>(), unsigned in any::<u64>()) {
            let got = lines(|| tracing::info!(value, unsigned, "n"));
            prop_assert_eq!(&got[0]["value"], &json!(value));
            prop_assert_eq!(&got[0]["unsigned"], &json!(unsigned));
        }

        #[test]
        fn any_instant_formats_as_the_calendar_says(seconds in 0u64..253_402_300_799, micros in 0u32..1_000_000) {
            let mut out = String::new();
            timestamp(&mut out, UNIX_EPOCH + Duration::new(seconds, micros * 1000));
            let want = time::OffsetDateTime::from_unix_timestamp(seconds as i64).unwrap()
                .replace_microsecond(micros).unwrap();
            let parsed = time::OffsetDateTime::parse(&out, &time::format_description::well_known::Rfc3339).unwrap();
            prop_assert_eq!(parsed, want);
        }

        #[test]
        fn any_string_survives_escaping(value in any::<String>()) {
            let mut out = String::new();
            string(&mut out, &value);
            prop_assert_eq!(serde_json::from_str::<String>(&out).unwrap(), value);
        }
    }
}
