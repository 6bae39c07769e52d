//! Diagnostics: a problem in a spec with its file, line, column, field path and a `help:` hint.

use std::fmt::Write as _;

use serde::Serialize;

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// How bad it is: errors make a rollout invalid, warnings do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in a spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file, as given on the command line or relative to the repository.
    pub file: String,
    #[serde(flatten)]
    pub position: Position,
    /// Field path, e.g. `spec.steps[2].setWeight`; empty for whole-file problems.
    pub field: String,
    /// What is wrong, lowercase, naming the subject.
    pub message: String,
    /// How to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(
        file: impl Into<String>,
        position: Position,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file: file.into(),
            position,
            field: field.into(),
            message: message.into(),
            help: None,
        }
    }

    pub fn warning(
        file: impl Into<String>,
        position: Position,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(file, position, field, message)
        }
    }

    #[must_use]
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `file:line:column: field: message`, the one-line form used in status files and logs.
    pub fn one_line(&self) -> String {
        let mut s = format!(
            "{}:{}:{}: ",
            self.file, self.position.line, self.position.column
        );
        if !self.field.is_empty() {
            let _ = write!(s, "{}: ", self.field);
        }
        s.push_str(&self.message);
        s
    }

    /// The human form, rustc-style, with the offending source line when `source` is given:
    ///
    /// ```text
    /// error: weight 150 is out of range
    ///   --> rollouts/web.yaml:12:20
    ///    |
    /// 12 |     - setWeight: 150
    ///    |                  ^ spec.steps[2].setWeight
    ///    = help: weights are percentages of requests sent to the canary, 0 to 100
    /// ```
    pub fn render(&self, source: Option<&str>) -> String {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut out = format!("{label}: {}\n", self.message);
        let line_no = self.position.line.to_string();
        let pad = " ".repeat(line_no.len());
        let _ = writeln!(
            out,
            "{pad}--> {}:{}:{}",
            self.file, self.position.line, self.position.column
        );
        let text = source.and_then(|s| s.lines().nth(self.position.line.saturating_sub(1)));
        match text {
            Some(text) => {
                let caret = " ".repeat(self.position.column.saturating_sub(1));
                let _ = writeln!(out, "{pad} |");
                let _ = writeln!(out, "{line_no} | {text}");
                let _ = writeln!(out, "{pad} | {caret}^ {}", self.field);
            }
            None if !self.field.is_empty() => {
                let _ = writeln!(out, "{pad} = field: {}", self.field);
            }
            None => {}
        }
        if let Some(help) = &self.help {
            let _ = writeln!(out, "{pad} = help: {help}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_a_compiler() {
        let d = Diagnostic::error(
            "rollouts/web.yaml",
            Position {
                line: 2,
                column: 16,
            },
            "spec.steps[0].setWeight",
            "weight 150 is out of range",
        )
        .with_help("weights are 0 to 100");
        let out = d.render(Some("spec:\n  - setWeight: 150\n"));
        assert_eq!(
            out,
            "error: weight 150 is out of range\n \
             --> rollouts/web.yaml:2:16\n  \
             |\n\
             2 |   - setWeight: 150\n  \
             |                ^ spec.steps[0].setWeight\n  \
             = help: weights are 0 to 100\n"
        );
        assert_eq!(
            d.one_line(),
            "rollouts/web.yaml:2:16: spec.steps[0].setWeight: weight 150 is out of range"
        );
    }

    #[test]
    fn serialises_flat() {
        let d = Diagnostic::warning("a.yaml", Position { line: 1, column: 2 }, "", "m");
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["line"], 1);
        assert_eq!(json["column"], 2);
        assert_eq!(json["severity"], "warning");
        assert!(json.get("help").is_none());
    }
}
