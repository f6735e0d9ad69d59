//! The control file grammar: one rule per line, `#` starts a comment.
//!
//! ```text
//! rule    = "latency" target delay [token]
//!         | "fail" target rv [when] [token]   ; `when` defaults to `always`
//!         | "hang" target [token]
//!         | "token-removed" [label]           ; no label: every token
//! token   = "token=" label                    ; only calls addressed to that token
//! target  = "*" | C_FunctionName              ; `*`: every function but C_GetFunctionList
//! delay   = duration | duration ".." duration  ; a range is sampled uniformly per call
//! duration= integer ("ns" | "us" | "µs" | "ms" | "s")
//! rv      = CKR_NAME | "0x" hex | decimal
//! when    = "once" | "always" | "every" N     ; N ≥ 1
//! ```
//!
//! For example:
//!
//! ```text
//! latency * 2ms                                # every call, like a network HSM
//! latency C_Encrypt 1ms..5ms
//! fail C_Decrypt CKR_DEVICE_ERROR always
//! fail C_Encrypt CKR_SESSION_HANDLE_INVALID once
//! fail C_FindObjectsInit CKR_GENERAL_ERROR every 3
//! hang C_Encrypt
//! token-removed
//! token-removed fleet-b                        # only the token labelled fleet-b
//! fail C_Encrypt CKR_DEVICE_ERROR once token=fleet-a
//! ```
//!
//! A label is the token's `CK_TOKEN_INFO.label` without its padding. After `token=` it is one
//! word; after `token-removed` it is the rest of the line (words joined by one space). A
//! qualified rule applies only to calls addressed to that token: through a slot argument or
//! a session opened on its slot. Calls that address no token (`C_Initialize`,
//! `C_GetSlotList`, …) never match a qualified rule.
//!
//! Parsing never fails as a whole: a line that does not parse is reported and skipped, and the
//! other rules apply. [`RuleSet::parse`] is what the module runs on every new version of the
//! file; tests can call it to check their control text.

use std::fmt;
use std::num::NonZeroU64;
use std::time::Duration;

use cryptoki_sys::CK_RV;

use crate::Function;
use crate::rv;

/// The rules of one version of the control file, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    /// The rules that parsed.
    pub rules: Vec<Rule>,
    /// The lines that did not.
    pub errors: Vec<LineError>,
}

/// One rule of the control file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rule {
    /// `latency <target> <delay>`: sleep before the call. Several matching rules add up.
    Latency {
        /// Which calls.
        target: Target,
        /// How long.
        delay: Delay,
        /// Only calls to this token (`token=<label>`); `None`: every call.
        token: Option<String>,
    },
    /// `fail <target> <rv> [when]`: return `rv` instead of calling the real module.
    Fail {
        /// Which calls.
        target: Target,
        /// The `CK_RV` returned.
        rv: CK_RV,
        /// Which of the matching calls fail.
        when: When,
        /// Only calls to this token (`token=<label>`); `None`: every call.
        token: Option<String>,
    },
    /// `hang <target>`: block the calling thread until the rule is gone from the file.
    Hang {
        /// Which calls.
        target: Target,
        /// Only calls to this token (`token=<label>`); `None`: every call.
        token: Option<String>,
    },
    /// `token-removed [label]`: behave as if the token (`None`: every token) had been pulled
    /// out of its slot.
    TokenRemoved {
        /// The label of the removed token; `None`: every token.
        token: Option<String>,
    },
}

impl Rule {
    /// The token a rule is limited to, if any.
    pub fn token(&self) -> Option<&str> {
        match self {
            Self::Latency { token, .. }
            | Self::Fail { token, .. }
            | Self::Hang { token, .. }
            | Self::TokenRemoved { token } => token.as_deref(),
        }
    }
}

/// Whether a rule limited to `rule_token` applies to a call addressed to `call_token`
/// (`None`: a call to no token, or to one whose label is unknown).
pub fn token_matches(rule_token: Option<&str>, call_token: Option<&str>) -> bool {
    match rule_token {
        None => true,
        Some(wanted) => call_token == Some(wanted),
    }
}

/// The functions a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// `*`: every function except `C_GetFunctionList`, which never reaches the token.
    All,
    /// One function by its PKCS#11 name.
    One(Function),
}

impl Target {
    /// Whether a call to `function` matches.
    pub fn matches(self, function: Function) -> bool {
        match self {
            Self::All => function != Function::C_GetFunctionList,
            Self::One(one) => one == function,
        }
    }
}

/// A fixed delay (`min == max`) or a uniformly random one in `min..=max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delay {
    /// The shortest delay.
    pub min: Duration,
    /// The longest delay; never below `min`.
    pub max: Duration,
}

/// Which of the calls matched by a `fail` rule fail.
///
/// Each rule counts the calls it matches from the moment its version of the file is loaded;
/// a rewritten file starts every count again (and so re-arms `once`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum When {
    /// The first matching call only.
    Once,
    /// The N-th, 2N-th, 3N-th… matching call.
    Every(NonZeroU64),
    /// Every matching call.
    Always,
}

impl When {
    /// Whether the `n`-th matching call (1-based) fails.
    pub fn fires(self, n: u64) -> bool {
        match self {
            Self::Once => n == 1,
            Self::Every(period) => n.is_multiple_of(period.get()),
            Self::Always => true,
        }
    }
}

/// A line of the control file that was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// The line, without its comment.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}: {} (ignored: {:?})",
            self.line, self.reason, self.text
        )
    }
}

impl RuleSet {
    /// Parses a whole control file.
    pub fn parse(text: &str) -> Self {
        let mut set = Self::default();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.split_once('#').map_or(raw, |(rule, _comment)| rule);
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.is_empty() {
                continue;
            }
            match parse_rule(&words) {
                Ok(rule) => set.rules.push(rule),
                Err(reason) => set.errors.push(LineError {
                    line: index + 1,
                    text: words.join(" "),
                    reason,
                }),
            }
        }
        set
    }

    /// Whether an unqualified `token-removed` line (every token) is present.
    pub fn token_removed(&self) -> bool {
        self.rules.contains(&Rule::TokenRemoved { token: None })
    }

    /// The labels named by `token-removed <label>` lines.
    pub fn removed_tokens(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().filter_map(|rule| match rule {
            Rule::TokenRemoved { token } => token.as_deref(),
            _ => None,
        })
    }

    /// Whether any rule is limited to one token (and so needs the label of each call's token).
    pub fn has_token_rules(&self) -> bool {
        self.rules.iter().any(|rule| rule.token().is_some())
    }

    /// Whether a `hang` rule matches `function` called on `token`.
    pub fn hangs(&self, function: Function, token: Option<&str>) -> bool {
        self.rules.iter().any(|rule| {
            matches!(rule, Rule::Hang { target, token: only }
                if target.matches(function) && token_matches(only.as_deref(), token))
        })
    }
}

fn parse_rule(words: &[&str]) -> Result<Rule, String> {
    if let ["token-removed", label @ ..] = words {
        let token = (!label.is_empty()).then(|| label.join(" "));
        return Ok(Rule::TokenRemoved { token });
    }
    // A trailing `token=<label>` limits latency, fail and hang rules to one token.
    let (words, token) = match words.split_last() {
        Some((last, rest)) if last.starts_with("token=") => {
            let label = &last["token=".len()..];
            if label.is_empty() {
                return Err("`token=` needs a label".to_owned());
            }
            (rest, Some(label.to_owned()))
        }
        _ => (words, None),
    };
    match words {
        ["latency", target, delay] => Ok(Rule::Latency {
            target: parse_target(target)?,
            delay: parse_delay(delay)?,
            token,
        }),
        ["fail", target, rv, when @ ..] => Ok(Rule::Fail {
            target: parse_target(target)?,
            rv: rv::parse(rv).ok_or_else(|| format!("unknown return value {rv:?}"))?,
            when: parse_when(when)?,
            token,
        }),
        ["hang", target] => Ok(Rule::Hang {
            target: parse_target(target)?,
            token,
        }),
        ["latency" | "fail" | "hang" | "token-removed", ..] => {
            Err(format!("wrong number of words for {:?}", words[0]))
        }
        [other, ..] => Err(format!("unknown rule {other:?}")),
        [] => Err("empty rule".to_owned()),
    }
}

fn parse_target(word: &str) -> Result<Target, String> {
    if word == "*" {
        return Ok(Target::All);
    }
    Function::from_name(word)
        .map(Target::One)
        .ok_or_else(|| format!("unknown PKCS#11 function {word:?}"))
}

fn parse_when(words: &[&str]) -> Result<When, String> {
    match words {
        [] | ["always"] => Ok(When::Always),
        ["once"] => Ok(When::Once),
        ["every", n] => n
            .parse::<NonZeroU64>()
            .map(When::Every)
            .map_err(|_| format!("`every` needs a whole number ≥ 1, not {n:?}")),
        _ => Err(format!(
            "expected `once`, `always` or `every N`, not {:?}",
            words.join(" ")
        )),
    }
}

fn parse_delay(word: &str) -> Result<Delay, String> {
    let (min, max) = match word.split_once("..") {
        Some((min, max)) => (parse_duration(min)?, parse_duration(max)?),
        None => {
            let fixed = parse_duration(word)?;
            (fixed, fixed)
        }
    };
    if max < min {
        return Err(format!("empty range {word:?}"));
    }
    Ok(Delay { min, max })
}

fn parse_duration(word: &str) -> Result<Duration, String> {
    let digits = word.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = word.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("expected a duration like 2ms, not {word:?}"))?;
    match unit {
        "ns" => Ok(Duration::from_nanos(number)),
        "us" | "µs" => Ok(Duration::from_micros(number)),
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        _ => Err(format!("unknown unit in {word:?}: use ns, us, ms or s")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use cryptoki_sys::{CKR_DEVICE_ERROR, CKR_GENERAL_ERROR, CKR_SESSION_HANDLE_INVALID};

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_documented_example() {
        let set = RuleSet::parse(
            "latency * 2ms                      # every function\n\
             latency C_Encrypt 1ms..5ms         # uniform random range\n\
             \n\
             # a comment line\n\
             fail C_Decrypt CKR_DEVICE_ERROR always\n\
             fail C_Encrypt CKR_SESSION_HANDLE_INVALID once\n\
             fail C_FindObjectsInit CKR_GENERAL_ERROR every 3\n\
             hang C_Encrypt\n\
             token-removed\n",
        );
        assert_eq!(set.errors, []);
        let encrypt = Target::One(Function::C_Encrypt);
        assert_eq!(
            set.rules,
            [
                Rule::Latency {
                    target: Target::All,
                    delay: Delay {
                        min: ms(2),
                        max: ms(2)
                    },
                    token: None
                },
                Rule::Latency {
                    target: encrypt,
                    delay: Delay {
                        min: ms(1),
                        max: ms(5)
                    },
                    token: None
                },
                Rule::Fail {
                    target: Target::One(Function::C_Decrypt),
                    rv: CKR_DEVICE_ERROR,
                    when: When::Always,
                    token: None
                },
                Rule::Fail {
                    target: encrypt,
                    rv: CKR_SESSION_HANDLE_INVALID,
                    when: When::Once,
                    token: None
                },
                Rule::Fail {
                    target: Target::One(Function::C_FindObjectsInit),
                    rv: CKR_GENERAL_ERROR,
                    when: When::Every(NonZeroU64::new(3).unwrap()),
                    token: None
                },
                Rule::Hang {
                    target: encrypt,
                    token: None
                },
                Rule::TokenRemoved { token: None },
            ]
        );
        assert!(set.token_removed());
        assert!(set.hangs(Function::C_Encrypt, None));
        assert!(!set.hangs(Function::C_Decrypt, None));
    }

    #[test]
    fn defaults_units_and_numeric_codes() {
        let set = RuleSet::parse(
            "fail C_Login 0xA0\nlatency C_Sign 250us\nlatency C_Verify 3µs..1s\n\
             fail * 48 every 1\n",
        );
        assert_eq!(set.errors, []);
        assert_eq!(
            set.rules[0],
            Rule::Fail {
                target: Target::One(Function::C_Login),
                rv: 0xA0,
                when: When::Always,
                token: None
            }
        );
        assert_eq!(
            set.rules[1],
            Rule::Latency {
                target: Target::One(Function::C_Sign),
                delay: Delay {
                    min: Duration::from_micros(250),
                    max: Duration::from_micros(250)
                },
                token: None
            }
        );
        assert_eq!(
            set.rules[2],
            Rule::Latency {
                target: Target::One(Function::C_Verify),
                delay: Delay {
                    min: Duration::from_micros(3),
                    max: ms(1000)
                },
                token: None
            }
        );
        assert!(matches!(set.rules[3], Rule::Fail { rv: 48, .. }));
    }

    #[test]
    fn bad_lines_are_reported_and_skipped() {
        let set = RuleSet::parse(
            "explode C_Encrypt\n\
             fail C_Nope CKR_OK\n\
             fail C_Encrypt CKR_NOPE\n\
             fail C_Encrypt CKR_OK sometimes\n\
             fail C_Encrypt CKR_OK every 0\n\
             latency C_Encrypt 5\n\
             latency C_Encrypt 5ms..1ms\n\
             latency C_Encrypt\n\
             hang\n\
             fail C_Encrypt CKR_OK token=\n\
             hang C_Decrypt # still parsed\n",
        );
        let lines: Vec<usize> = set.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, (1..=10).collect::<Vec<_>>());
        assert_eq!(
            set.rules,
            [Rule::Hang {
                target: Target::One(Function::C_Decrypt),
                token: None
            }]
        );
        assert_eq!(
            set.errors[1].to_string(),
            "line 2: unknown PKCS#11 function \"C_Nope\" (ignored: \"fail C_Nope CKR_OK\")"
        );
    }

    #[test]
    fn token_qualifiers() {
        let set = RuleSet::parse(
            "token-removed fleet-b\n\
             token-removed  two   words \n\
             fail C_Encrypt CKR_DEVICE_ERROR token=fleet-a\n\
             fail * 0x30 every 2 token=fleet-a\n\
             hang C_Login token=b\n\
             latency * 1ms..2ms token=a # comment\n\
             latency C_Sign 1ms\n",
        );
        assert_eq!(set.errors, []);
        assert_eq!(
            set.rules[..3],
            [
                Rule::TokenRemoved {
                    token: Some("fleet-b".into())
                },
                Rule::TokenRemoved {
                    token: Some("two words".into())
                },
                Rule::Fail {
                    target: Target::One(Function::C_Encrypt),
                    rv: CKR_DEVICE_ERROR,
                    when: When::Always,
                    token: Some("fleet-a".into())
                },
            ]
        );
        assert_eq!(
            set.rules[3],
            Rule::Fail {
                target: Target::All,
                rv: CKR_DEVICE_ERROR,
                when: When::Every(NonZeroU64::new(2).unwrap()),
                token: Some("fleet-a".into())
            }
        );
        assert_eq!(set.rules[5].token(), Some("a"));
        assert_eq!(set.rules[6].token(), None);
        assert!(!set.token_removed(), "only qualified removals");
        assert_eq!(
            set.removed_tokens().collect::<Vec<_>>(),
            ["fleet-b", "two words"]
        );
        assert!(set.has_token_rules());
        assert!(set.hangs(Function::C_Login, Some("b")));
        assert!(!set.hangs(Function::C_Login, Some("a")));
        assert!(!set.hangs(Function::C_Login, None));
        assert!(token_matches(None, None) && token_matches(None, Some("x")));
        assert!(!token_matches(Some("x"), None) && !token_matches(Some("x"), Some("y")));

        let plain = RuleSet::parse("token-removed\nfail C_Encrypt CKR_DEVICE_ERROR\n");
        assert!(plain.token_removed() && !plain.has_token_rules());
        // `token=` is only a qualifier at the end of latency, fail and hang rules.
        let bad = RuleSet::parse("hang token=a C_Login\nfail C_Encrypt token=a once\n");
        assert_eq!(bad.errors.len(), 2, "{:?}", bad.rules);
    }

    #[test]
    fn wildcard_spares_c_get_function_list() {
        assert!(Target::All.matches(Function::C_Initialize));
        assert!(Target::All.matches(Function::C_WaitForSlotEvent));
        assert!(!Target::All.matches(Function::C_GetFunctionList));
        assert!(Target::One(Function::C_GetFunctionList).matches(Function::C_GetFunctionList));
    }

    #[test]
    fn when_counts() {
        let every3 = When::Every(NonZeroU64::new(3).unwrap());
        let fired: Vec<u64> = (1..=9).filter(|&n| every3.fires(n)).collect();
        assert_eq!(fired, [3, 6, 9]);
        assert!(When::Once.fires(1) && !When::Once.fires(2));
        assert!((1..5).all(|n| When::Always.fires(n)));
    }
}
