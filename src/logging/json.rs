//! The JSON line format: `tracing-subscriber`'s own (`fmt::format().json()`, events
//! flattened, the span list, no current span), with the proxy's own events (the audit line
//! on every request) written straight into the line buffer.
//!
//! The stock formatter goes through `serde_json` into an `io::Write` adaptor over the
//! `fmt::Write` line buffer, checking every fragment with `from_utf8`, and re-parses every
//! span's fields; for the audit line that was about 6 % of the proxy's CPU at c=16. The
//! direct path writes the same bytes (the tests compare both formatters line for line);
//! events of other crates, including those bridged from the `log` crate (whose metadata
//! the stock formatter normalises), keep the stock path.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter of the JSON log format.
pub(super) struct JsonLines {
    stock: Format<Json, SystemTime>,
}

impl JsonLines {
    pub(super) fn new() -> Self {
        Self {
            stock: tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(false),
        }
    }
}

/// Whether `target` is this crate's: such events never come through the `log` bridge.
fn is_ours(target: &str) -> bool {
    target
        .strip_prefix(env!("CARGO_CRATE_NAME"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if !is_ours(meta.target()) {
            return self.stock.format_event(ctx, writer, event);
        }
        // The span list, as the stock formatter writes it: present when the event has a
        // parent or a current span, listing the current span's scope from the root.
        let has_span =
            event.parent().and_then(|id| ctx.span(id)).is_some() || ctx.lookup_current().is_some();
        let mut spans = String::new();
        if has_span {
            if let Some(leaf) = ctx.lookup_current() {
                for span in leaf.scope().from_root() {
                    let extensions = span.extensions();
                    let Some(object) = extensions
                        .get::<FormattedFields<JsonFields>>()
                        .and_then(|f| f.fields.strip_prefix('{')?.strip_suffix('}'))
                    else {
                        // Not the object JsonFields writes: let the stock formatter handle it.
                        drop(extensions);
                        return self.stock.format_event(ctx, writer, event);
                    };
                    spans.push_str(if spans.is_empty() { "[{" } else { ",{" });
                    spans.push_str(object);
                    if !object.is_empty() {
                        spans.push(',');
                    }
                    spans.push_str("\"name\":");
                    push_json_str(&mut spans, span.metadata().name());
                    spans.push('}');
                }
            }
            spans.push_str(if spans.is_empty() { "[]" } else { "]" });
        }

        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_char('"')?;
        // Gathered in a local String, then copied once: every write to `writer` goes through a
        // `dyn fmt::Write`, and writing the fields' fragments to it directly measured about
        // 2,400 instructions more per audit line (`softhsm/bench.sh instructions`).
        let mut fields = FieldWriter {
            out: String::with_capacity(512),
        };
        event.record(&mut fields);
        writer.write_str(&fields.out)?;
        writer.write_str(",\"target\":")?;
        let mut target = String::with_capacity(meta.target().len() + 2);
        push_json_str(&mut target, meta.target());
        writer.write_str(&target)?;
        if has_span {
            writer.write_str(",\"spans\":")?;
            writer.write_str(&spans)?;
        }
        writer.write_str("}\n")
    }
}

/// Writes each field as `,"name":value`, as `tracing-serde`'s map visitor serialises it.
struct FieldWriter {
    out: String,
}

impl FieldWriter {
    fn key(&mut self, field: &Field) {
        self.out.push(',');
        push_json_str(&mut self.out, field.name());
        self.out.push(':');
    }
}

impl Visit for FieldWriter {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_str(&mut self.out, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        // serde_json's own float format (and `null` for NaN and infinities).
        match serde_json::Number::from_f64(value) {
            Some(number) => {
                let _ = write!(self.out, "{number}");
            }
            None => self.out.push_str("null"),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.out.push('"');
        let _ = write!(Escaping(&mut self.out), "{value:?}");
        self.out.push('"');
    }
}

/// A `fmt::Write` that escapes what it is given as JSON string contents.
struct Escaping<'a>(&'a mut String);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        push_escaped(self.0, s);
        Ok(())
    }
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    push_escaped(out, s);
    out.push('"');
}

/// Appends `s` escaped as `serde_json` escapes string contents: `"` and `\`, the short
/// escapes for backspace, form feed, newline, carriage return and tab, `\u00XX` for the
/// other control characters; everything else as it is.
fn push_escaped(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, byte) in s.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn escapes_strings_as_serde_json_does() {
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("é ✓ 𝄞 \u{2028} end");
        let mut ours = String::new();
        push_json_str(&mut ours, &all);
        assert_eq!(ours, serde_json::to_string(&all).unwrap());
    }

    #[test]
    fn only_this_crates_targets_take_the_direct_path() {
        assert!(is_ours("xks_proxy"));
        assert!(is_ours("xks_proxy::audit"));
        assert!(!is_ours("xks_proxy_other"));
        assert!(!is_ours("log"));
        assert!(!is_ours("hyper::proto"));
    }

    /// Collects the lines a subscriber writes.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Self;
        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    impl Lines {
        fn take(&self) -> String {
            String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
        }
    }

    /// Events of every field type, with and without spans, as the audit line and other
    /// proxy lines carry them.
    fn emit_events() {
        let error = io::Error::other("disk \"full\"\n");
        tracing::info!(
            target: "xks_proxy::audit",
            kms_request_id = "req-1",
            absent = Option::<&str>::None,
            status = 200u16,
            delta = -5i64,
            ok = true,
            ratio = 0.25f64,
            not_a_number = f64::NAN,
            big = 1u128 << 100,
            quoted = "a \"b\" \\ c\n\t\u{1}é",
            debug = ?vec!["x", "y\""],
            display = %"shown \u{7}",
            error = &error as &(dyn std::error::Error + 'static),
            "xks request"
        );
        tracing::warn!(target: "xks_proxy::server", "no fields but the message {}", 42);
        let outer = tracing::info_span!("connection", peer = "127.0.0.1:5555", n = 3u64);
        let _outer = outer.enter();
        let empty = tracing::info_span!("empty");
        let _empty = empty.enter();
        tracing::info!(target: "xks_proxy::audit", status = 400u16, "inside two spans");
        let orphan = tracing::info_span!(parent: None, "orphan");
        tracing::error!(target: "xks_proxy::x", parent: &orphan, "explicit parent");
    }

    fn format_with(direct: bool) -> String {
        let lines = Lines::default();
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(lines.clone());
        let subscriber = tracing_subscriber::registry();
        if direct {
            let layer = layer.event_format(JsonLines::new());
            tracing::subscriber::with_default(subscriber.with(layer), emit_events);
        } else {
            tracing::subscriber::with_default(subscriber.with(layer), emit_events);
        }
        lines.take()
    }

    /// Drops the timestamps, the one thing that differs between two runs.
    fn without_timestamps(text: &str) -> Vec<serde_json::Value> {
        text.lines()
            .map(|line| {
                let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
                value["timestamp"] = "T".into();
                value
            })
            .collect()
    }

    #[test]
    fn writes_what_the_stock_json_formatter_writes() {
        let stock = format_with(false);
        let direct = format_with(true);
        assert_eq!(stock.lines().count(), 4, "{stock}");
        assert_eq!(direct.lines().count(), 4, "{direct}");
        // Byte for byte, once the timestamps are equal: same field order, same escapes.
        for (stock, direct) in stock.lines().zip(direct.lines()) {
            let cut = |line: &str| {
                let end = line.find("\",\"level\"").unwrap();
                assert!(line.starts_with("{\"timestamp\":\""), "{line}");
                line[end..].to_owned()
            };
            assert_eq!(cut(direct), cut(stock));
        }
        assert_eq!(without_timestamps(&direct), without_timestamps(&stock));
        assert!(direct.contains("\"spans\":[{\"n\":3,\"peer\":\"127.0.0.1:5555\",\"name\":\"connection\"},{\"name\":\"empty\"}]"), "{direct}");
    }
}
