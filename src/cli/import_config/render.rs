//! Writing the result: TOML strings, the notes, and the header comment block that lists them.

use std::fmt::Write as _;

/// Width of the header comment lines.
const WIDTH: usize = 98;

/// Whether a sample setting was left out or carried over with a caveat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// No equivalent here; not in the output.
    Dropped,
    /// In the output, but check it (changed meaning, clamped value, refused by check-config).
    Attention,
}

/// One line of the report. Never holds a secret: reasons name fields, not values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Note {
    pub(super) kind: Kind,
    /// The sample's setting (`section.key`).
    pub(super) setting: String,
    pub(super) reason: String,
}

/// The notes of one import, in the order they were found.
#[derive(Debug, Default)]
pub(super) struct Notes(pub(super) Vec<Note>);

impl Notes {
    /// A setting with no equivalent.
    pub(super) fn drop(&mut self, setting: impl Into<String>, reason: impl Into<String>) {
        self.push(Kind::Dropped, setting.into(), reason.into());
    }

    /// A setting carried over that needs a look.
    pub(super) fn attention(&mut self, setting: impl Into<String>, reason: impl Into<String>) {
        self.push(Kind::Attention, setting.into(), reason.into());
    }

    fn push(&mut self, kind: Kind, setting: String, reason: String) {
        self.0.push(Note {
            kind,
            setting,
            reason,
        });
    }

    /// The report as plain lines: both lists, each item wrapped, `(none)` for an empty one.
    pub(super) fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (kind, title) in [
            (Kind::Dropped, "Not carried over (no equivalent here):"),
            (Kind::Attention, "Carried over, but needs attention:"),
        ] {
            lines.push(title.to_owned());
            let mut any = false;
            for note in self.0.iter().filter(|n| n.kind == kind) {
                any = true;
                let text = format!("- {}: {}", note.setting, note.reason);
                lines.extend(wrap(&printable(&text), WIDTH - 4));
            }
            if !any {
                lines.push("  (none)".to_owned());
            }
        }
        lines
    }
}

/// The comment block the output starts with.
pub(super) fn header(source: &str, notes: &Notes) -> String {
    let mut out = format!(
        "# xks-proxy configuration made by `xks-proxy import-config --from aws-sample` from\n\
         #   {}\n\
         # (settings of AWS's sample proxy, aws-samples/aws-kms-xks-proxy). Validate it with\n\
         #   xks-proxy check-config --config <this file>\n\
         # Settings the sample did not have keep their defaults (config/xks-proxy.example.toml).\n\
         #\n\
         # SECRETS: the HSM user PIN and the SigV4 secrets are inline, as they were in the\n\
         # sample's file, so this file is exactly as secret as that one. Consider moving them to\n\
         # hsm.user_pin_file (or XKS__HSM__USER_PIN) and key_stores.credentials.secret_file.\n\
         #\n",
        printable(source)
    );
    for line in notes.lines() {
        let _ = writeln!(out, "# {line}");
    }
    out.push('\n');
    out
}

/// `s` as a TOML basic string.
pub(super) fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Control characters replaced, so text from the sample cannot end a comment line.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Word-wraps `text` to `width`; continuation lines are indented under the item's text.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if line.is_empty() {
            line.push_str(if lines.is_empty() { "  " } else { "    " });
        } else {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}
