//! Config loading: JSON → typed config with unknown fields rejected (the
//! types carry `#[serde(deny_unknown_fields)]`), every error naming the field
//! path (`routes[1].query.size.max`), then a compile step that validates and
//! builds ready-to-use structures once, at configure time.

use std::fmt;

use serde::de::DeserializeOwned;

/// A config that could not be loaded; `path` names the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted field path, `"."` for the document itself.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config at `{}`: {}", self.path, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Parses a JSON config. An empty document is an error: every filter needs
/// at least `{}` so that a missing configuration is never silently accepted.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ConfigError::at(
            ".",
            "configuration is empty; expected a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(de);
    match parsed {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            // serde_json appends " at line L column C"; keep it, it helps.
            Err(ConfigError::at(path, inner.to_string()))
        }
    }
}

/// Parses and compiles in one step: `Raw` is the serde shape, `C` the
/// ready-to-use compiled form.
pub fn load<Raw, C>(bytes: &[u8]) -> Result<C, ConfigError>
where
    Raw: DeserializeOwned,
    C: TryFrom<Raw, Error = ConfigError>,
{
    C::try_from(parse_json::<Raw>(bytes)?)
}

/// Validates an HTTP header name as the filters use it: lower case token
/// characters only (Envoy hands header names over in lower case).
pub fn validate_header_name(path: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::at(path, "header name is empty"));
    }
    let ok = name.bytes().all(|b| {
        b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || matches!(
                b,
                b'-' | b'_'
                    | b'.'
                    | b'!'
                    | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'^'
                    | b'`'
                    | b'|'
                    | b'~'
            )
    });
    if !ok {
        return Err(ConfigError::at(
            path,
            format!("header name {name:?} must be lower case token characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[allow(dead_code)]
        max: u32,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[allow(dead_code)]
        routes: Vec<Inner>,
    }

    #[test]
    fn error_names_the_field_path() {
        let e = parse_json::<Outer>(br#"{"routes":[{"max":1},{"max":"x"}]}"#).unwrap_err();
        assert_eq!(e.path, "routes[1].max");
    }

    #[test]
    fn unknown_field_is_rejected_with_its_path() {
        let e = parse_json::<Outer>(br#"{"routes":[{"max":1,"mx":2}]}"#).unwrap_err();
        assert_eq!(e.path, "routes[0].mx");
        assert!(e.message.contains("unknown field `mx`"), "{}", e.message);
    }

    #[test]
    fn empty_config_is_rejected() {
        assert!(parse_json::<Outer>(b"  ").is_err());
    }

    #[test]
    fn header_names_must_be_lower_case_tokens() {
        assert!(validate_header_name("x", "x-user-id").is_ok());
        assert!(validate_header_name("x", "X-User").is_err());
        assert!(validate_header_name("x", "a b").is_err());
        assert!(validate_header_name("x", "").is_err());
    }
}
