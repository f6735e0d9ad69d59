//! Reading a policy file: parse, name each policy by its `@id` annotation, validate strictly
//! against the schema, and report every problem with file, line, column and policy id.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{PolicyId, PolicySet, ValidationMode, Validator};
use miette::Diagnostic;

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    /// `line:column` of the problem in the file, when Cedar knows it.
    pub location: Option<(usize, usize)>,
    /// The policy it is in (its `@id`, else Cedar's `policyN`), when it is in one.
    pub policy: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, column)) = self.location {
            write!(f, "line {line}, column {column}: ")?;
        }
        if let Some(policy) = &self.policy {
            write!(f, "policy {policy:?}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl PolicyError {
    fn file(message: impl Into<String>) -> Self {
        Self {
            location: None,
            policy: None,
            message: message.into(),
        }
    }

    pub(super) fn schema(message: String) -> Self {
        Self::file(message)
    }

    /// A Cedar diagnostic, located in `text` by its first labelled span.
    fn diagnostic(text: &str, policy: Option<String>, diagnostic: &dyn Diagnostic) -> Self {
        let location = diagnostic
            .labels()
            .and_then(|mut labels| labels.next())
            .map(|label| line_and_column(text, label.offset()));
        let mut message = diagnostic.to_string();
        if let Some(help) = diagnostic.help() {
            message.push_str(&format!(" ({help})"));
        }
        Self {
            location,
            policy,
            message,
        }
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(1, |last| last.chars().count() + 1);
    (line, column)
}

/// Reads, parses and validates the policy file at `path`. Every policy is named by its
/// `@id("...")` annotation when it has one (ids must be unique); templates are refused.
pub fn load_policy_file(path: &Path) -> Result<PolicySet, Vec<PolicyError>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![PolicyError::file(format!("cannot read it: {e}"))])?;
    parse_policies(&text)
}

/// [`load_policy_file`] on the file's text.
pub(super) fn parse_policies(text: &str) -> Result<PolicySet, Vec<PolicyError>> {
    let parsed = PolicySet::from_str(text).map_err(|errors| {
        errors
            .iter()
            .map(|e| PolicyError::diagnostic(text, None, e))
            .collect::<Vec<_>>()
    })?;
    if let Some(template) = parsed.templates().next() {
        return Err(vec![PolicyError {
            location: None,
            policy: Some(template.id().to_string()),
            message: "templates (?principal, ?resource) are not supported; write the policy \
                      out"
            .to_owned(),
        }]);
    }
    let mut named = PolicySet::new();
    let mut errors = Vec::new();
    for policy in parsed.policies() {
        let policy = match policy.annotation("id") {
            Some(id) => policy.new_id(PolicyId::new(id)),
            None => policy.clone(),
        };
        let id = policy.id().to_string();
        if named.add(policy).is_err() {
            errors.push(PolicyError {
                location: None,
                policy: Some(id),
                message: "two policies have this @id".to_owned(),
            });
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let schema = super::schema().map_err(|e| vec![e])?;
    let validator = Validator::new(schema.clone());
    let result = validator.validate(&named, ValidationMode::Strict);
    let mut errors: Vec<PolicyError> = Vec::new();
    for error in result.validation_errors() {
        let error = PolicyError::diagnostic(text, Some(error.policy_id().to_string()), error);
        // The validator checks every action a policy may apply to: one mistake, one report.
        let seen = errors
            .iter()
            .any(|e| e.location == error.location && e.policy == error.policy);
        if !seen {
            errors.push(error);
        }
    }
    if errors.is_empty() {
        Ok(named)
    } else {
        Err(errors)
    }
}
