//! The one reader of environment variables, and the one error a bad value gives.
//!
//! The rule, for every variable: the value is used trimmed of surrounding whitespace, and an empty
//! (or all-whitespace) value counts as unset, as CloudFormation passes an unused parameter as `""`.
//! Secrets ([`Env::secret`]) are the one exception to the trimming, never to the empty rule.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::Mutex;

/// A variable whose value cannot be used: names the variable and what it expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct SettingsError {
    /// The variable (or variables, `A and B`) at fault.
    pub variable: String,
    /// What was expected, and what was found.
    pub message: String,
}

impl SettingsError {
    pub fn new(variable: impl Into<String>, message: impl Into<String>) -> Self {
        SettingsError {
            variable: variable.into(),
            message: message.into(),
        }
    }

    /// `VARIABLE: expected <expected>, got "<got>"`.
    pub fn expected(variable: impl Into<String>, expected: &str, got: &str) -> Self {
        Self::new(variable, format!("expected {expected}, got {got:?}"))
    }
}

/// Where variables come from: the process environment, or a fixed map (tests).
pub struct Env {
    vars: Option<HashMap<String, String>>,
    /// Every name looked up, when made by [`Env::recording`].
    read: Option<Mutex<BTreeSet<String>>>,
}

impl Env {
    /// The process environment.
    pub fn process() -> Self {
        Env {
            vars: None,
            read: None,
        }
    }

    /// A fixed set of variables; everything else is unset.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Env {
            vars: Some(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
            read: None,
        }
    }

    /// The same variables, remembering every name looked up: what [`Env::names_read`] answers
    /// (the template's test checks that it declares each).
    pub fn recording(self) -> Self {
        Env {
            read: Some(Mutex::new(BTreeSet::new())),
            ..self
        }
    }

    /// Every name looked up so far; empty unless made by [`Env::recording`].
    pub fn names_read(&self) -> BTreeSet<String> {
        self.read
            .as_ref()
            .map(|read| read.lock().unwrap().clone())
            .unwrap_or_default()
    }

    fn lookup(&self, name: &str) -> Result<Option<String>, SettingsError> {
        if let Some(read) = &self.read {
            read.lock().unwrap().insert(name.to_owned());
        }
        match &self.vars {
            Some(vars) => Ok(vars.get(name).cloned()),
            None => match std::env::var(name) {
                Ok(v) => Ok(Some(v)),
                Err(std::env::VarError::NotPresent) => Ok(None),
                Err(std::env::VarError::NotUnicode(_)) => {
                    Err(SettingsError::new(name, "is not valid UTF-8"))
                }
            },
        }
    }

    /// The trimmed value, or `None` when unset or empty.
    pub fn get(&self, name: &str) -> Result<Option<String>, SettingsError> {
        Ok(self
            .lookup(name)?
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty()))
    }

    /// The value as given (passwords may begin or end with a space), or `None` when unset or empty.
    pub fn secret(&self, name: &str) -> Result<Option<String>, SettingsError> {
        Ok(self.lookup(name)?.filter(|v| !v.trim().is_empty()))
    }

    /// The value, or `default` when unset.
    pub fn string_or(&self, name: &str, default: &str) -> Result<String, SettingsError> {
        Ok(self.get(name)?.unwrap_or_else(|| default.to_owned()))
    }

    /// Parses the value, or answers `default` when unset; `expected` says what a good value is.
    pub fn parse_or<T: FromStr>(
        &self,
        name: &str,
        expected: &str,
        default: T,
    ) -> Result<T, SettingsError> {
        match self.get(name)? {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| SettingsError::expected(name, expected, &text)),
        }
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`), or `None` when unset.
    pub fn flag(&self, name: &str) -> Result<Option<bool>, SettingsError> {
        match self.get(name)? {
            None => Ok(None),
            Some(text) => match text.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(Some(true)),
                "false" | "0" | "no" | "off" => Ok(Some(false)),
                _ => Err(SettingsError::expected(name, "true or false", &text)),
            },
        }
    }

    /// A positive whole number of milliseconds, or `default` when unset.
    pub fn millis_or(
        &self,
        name: &str,
        default: std::time::Duration,
    ) -> Result<std::time::Duration, SettingsError> {
        match self.get(name)? {
            None => Ok(default),
            Some(text) => match text.parse::<u64>() {
                Ok(ms) if ms > 0 => Ok(std::time::Duration::from_millis(ms)),
                _ => Err(SettingsError::expected(
                    name,
                    "a positive whole number of milliseconds",
                    &text,
                )),
            },
        }
    }

    /// A value given either as a file (`file_var`, a path) or inline (`text_var`), with a
    /// description of where it came from; both set is an error.
    pub fn file_or_text(
        &self,
        file_var: &str,
        text_var: &str,
    ) -> Result<Option<(String, String)>, SettingsError> {
        match (self.get(file_var)?, self.get(text_var)?) {
            (Some(_), Some(_)) => Err(SettingsError::new(
                format!("{file_var} and {text_var}"),
                "both are set; set only one of them",
            )),
            (Some(path), None) => match std::fs::read_to_string(&path) {
                Ok(text) => Ok(Some((text, format!("{file_var} ({path})")))),
                Err(e) => Err(SettingsError::new(
                    file_var,
                    format!("cannot read {path}: {e}"),
                )),
            },
            (None, Some(text)) => Ok(Some((text, text_var.to_owned()))),
            (None, None) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_blank_values_count_as_unset_and_values_are_trimmed() {
        let env = Env::from_pairs([("A", ""), ("B", "   "), ("C", " x "), ("P", " pw ")]);
        assert_eq!(env.get("A").unwrap(), None);
        assert_eq!(env.get("B").unwrap(), None);
        assert_eq!(env.get("C").unwrap().as_deref(), Some("x"));
        assert_eq!(env.get("MISSING").unwrap(), None);
        assert_eq!(env.secret("B").unwrap(), None);
        assert_eq!(env.secret("P").unwrap().as_deref(), Some(" pw "));
    }

    #[test]
    fn a_bad_value_names_the_variable_and_what_it_expected() {
        let env = Env::from_pairs([("N", "ten"), ("F", "maybe"), ("M", "0")]);
        let e = env.parse_or("N", "a whole number", 5u32).unwrap_err();
        assert_eq!(e.to_string(), r#"N: expected a whole number, got "ten""#);
        assert_eq!(env.parse_or("UNSET", "a whole number", 5u32).unwrap(), 5);
        assert!(env.flag("F").unwrap_err().to_string().starts_with("F: "));
        assert!(env
            .millis_or("M", std::time::Duration::from_secs(1))
            .unwrap_err()
            .to_string()
            .contains("milliseconds"));
    }

    #[test]
    fn file_or_text_refuses_both_and_names_an_unreadable_file() {
        let both = Env::from_pairs([("K_FILE", "/x"), ("K", "text")]);
        assert!(both
            .file_or_text("K_FILE", "K")
            .unwrap_err()
            .to_string()
            .contains("both"));
        let missing = Env::from_pairs([("K_FILE", "/nonexistent/key.pem")]);
        let e = missing.file_or_text("K_FILE", "K").unwrap_err();
        assert_eq!(e.variable, "K_FILE");
        let text = Env::from_pairs([("K", "pem")]);
        assert_eq!(
            text.file_or_text("K_FILE", "K").unwrap(),
            Some(("pem".to_owned(), "K".to_owned()))
        );
    }
}
