use std::fmt;

/// One problem in a filter configuration, at a field path such as `targets[2].weight`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the offending field from the root of the config (`.`-separated, `[i]` for
    /// list items); empty for the document itself.
    pub path: String,
    /// What is wrong and, where it helps, the value that was given.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A filter configuration that was refused, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in document order. Never empty.
    pub errors: Vec<FieldError>,
}

impl ConfigError {
    pub(crate) fn single(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            errors: vec![FieldError {
                path: path.into(),
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Collects field errors while walking a config, keeping track of the current path.
#[derive(Debug, Default)]
pub(crate) struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    pub(crate) fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(crate) fn finish(self) -> Result<(), ConfigError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                errors: self.errors,
            })
        }
    }
}

// === checks shared by the filters' configs ===

/// Longest header, cookie or query parameter name accepted.
const MAX_NAME_LEN: usize = 255;

/// Characters of a value quoted in an error, at most: a hostile configuration must not turn
/// into a log line of its own size.
const MAX_QUOTED_CHARS: usize = 100;

/// `"value"` with non-printable and non-ASCII characters escaped, cut after
/// [`MAX_QUOTED_CHARS`] characters (`"nnn..." (200000 bytes)`). Written out rather than
/// `{:?}` because the filters are built with `-Zfmt-debug=none`, which blanks Debug output.
pub(crate) fn quoted(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        None => format!("\"{}\"", s.escape_default()),
        Some((cut, _)) => format!("\"{}...\" ({} bytes)", s[..cut].escape_default(), s.len()),
    }
}

/// RFC 9110 token characters: what header, cookie and query parameter names are made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(crate) fn check_token(v: &mut Validator, path: &str, name: &str) {
    if !is_token(name) || name.len() > MAX_NAME_LEN {
        v.error(
            path,
            format!(
                "must be a non-empty name without spaces or separators, got {}",
                quoted(name)
            ),
        );
    }
}

pub(crate) fn check_header_name(v: &mut Validator, path: &str, name: &str) {
    if !is_token(name) || name.len() > MAX_NAME_LEN {
        v.error(
            path,
            format!(
                "must be a header name (letters, digits, '-', no ':' pseudo-headers), got {}",
                quoted(name)
            ),
        );
    }
}

/// Parses JSON into `T`. With the `field-paths` feature the error names the field path
/// (unknown field, wrong type, ...); without it, serde_json's message names the field and
/// gives line and column.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    #[cfg(feature = "field-paths")]
    {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            ConfigError::single(path, e.into_inner().to_string())
        })
    }
    #[cfg(not(feature = "field-paths"))]
    {
        serde_json::from_slice(bytes).map_err(|e| ConfigError::single("", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_in_errors() {
        assert_eq!(quoted("a\"b"), r#""a\"b""#);
        let long = "n".repeat(200_000);
        let q = quoted(&long);
        assert_eq!(q, format!("\"{}...\" (200000 bytes)", "n".repeat(100)));
        // Cut on a character boundary.
        assert!(quoted(&"é".repeat(150)).ends_with("...\" (300 bytes)"));
    }
}
