//! The control file grammar: one rule per line, `#` starts a comment.
//!
//! ```text
//! rule    = "latency" target delay
//!         | "fail" target rv [when]           ; `when` defaults to `always`
//!         | "hang" target
//!         | "token-removed"
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
//! ```
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
    },
    /// `fail <target> <rv> [when]`: return `rv` instead of calling the real module.
    Fail {
        /// Which calls.
        target: Target,
        /// The `CK_RV` returned.
        rv: CK_RV,
        /// Which of the matching calls fail.
        when: When,
    },
    /// `hang <target>`: block the calling thread until the rule is gone from the file.
    Hang {
        /// Which calls.
        target: Target,
    },
    /// `token-removed`: behave as if the token had been pulled out of its slot.
    TokenRemoved,
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

    /// Whether a `token-removed` line is present.
    pub fn token_removed(&self) -> bool {
        self.rules.contains(&Rule::TokenRemoved)
    }

    /// Whether a `hang` rule matches `function`.
    pub fn hangs(&self, function: Function) -> bool {
        self.rules
            .iter()
            .any(|rule| matches!(rule, Rule::Hang { target } if target.matches(function)))
    }
}

fn parse_rule(words: &[&str]) -> Result<Rule, String> {
    match words {
        ["latency", target, delay] => Ok(Rule::Latency {
            target: parse_target(target)?,
            delay: parse_delay(delay)?,
        }),
        ["fail", target, rv, when @ ..] => Ok(Rule::Fail {
            target: parse_target(target)?,
            rv: rv::parse(rv).ok_or_else(|| format!("unknown return value {rv:?}"))?,
            when: parse_when(when)?,
        }),
        ["hang", target] => Ok(Rule::Hang {
            target: parse_target(target)?,
        }),
        ["token-removed"] => Ok(Rule::TokenRemoved),
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
                    }
                },
                Rule::Latency {
                    target: encrypt,
                    delay: Delay {
                        min: ms(1),
                        max: ms(5)
                    }
                },
                Rule::Fail {
                    target: Target::One(Function::C_Decrypt),
                    rv: CKR_DEVICE_ERROR,
                    when: When::Always
                },
                Rule::Fail {
                    target: encrypt,
                    rv: CKR_SESSION_HANDLE_INVALID,
                    when: When::Once
                },
                Rule::Fail {
                    target: Target::One(Function::C_FindObjectsInit),
                    rv: CKR_GENERAL_ERROR,
                    when: When::Every(NonZeroU64::new(3).unwrap())
                },
                Rule::Hang { target: encrypt },
                Rule::TokenRemoved,
            ]
        );
        assert!(set.token_removed());
        assert!(set.hangs(Function::C_Encrypt));
        assert!(!set.hangs(Function::C_Decrypt));
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
                when: When::Always
            }
        );
        assert_eq!(
            set.rules[1],
            Rule::Latency {
                target: Target::One(Function::C_Sign),
                delay: Delay {
                    min: Duration::from_micros(250),
                    max: Duration::from_micros(250)
                }
            }
        );
        assert_eq!(
            set.rules[2],
            Rule::Latency {
                target: Target::One(Function::C_Verify),
                delay: Delay {
                    min: Duration::from_micros(3),
                    max: ms(1000)
                }
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
             token-removed now\n\
             hang C_Decrypt # still parsed\n",
        );
        let lines: Vec<usize> = set.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, (1..=10).collect::<Vec<_>>());
        assert_eq!(
            set.rules,
            [Rule::Hang {
                target: Target::One(Function::C_Decrypt)
            }]
        );
        assert_eq!(
            set.errors[1].to_string(),
            "line 2: unknown PKCS#11 function \"C_Nope\" (ignored: \"fail C_Nope CKR_OK\")"
        );
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
