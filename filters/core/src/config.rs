//! Config loading: JSON → typed config with unknown fields rejected (the
//! types carry `#[serde(deny_unknown_fields)]`), every error naming the field
//! path (`routes[1].query.size.max`), then a compile step that validates and
//! builds ready-to-use structures once, at configure time.
//!
//! The field path of a serde error is recovered from the position serde_json
//! reports ([`path_at`]: a scan of the document up to that byte), not by
//! deserializing through a path-tracking wrapper such as
//! `serde_path_to_error`: the wrapper instantiated every config type's
//! `Deserialize` a second time, ~150 KB of the suite module's code (7%) that
//! V8 compiled at every Envoy start-up for an error path taken once.

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
    // from_slice also refuses trailing characters after the document.
    serde_json::from_slice(bytes).map_err(|e| {
        // serde_json appends " at line L column C"; keep it, it helps.
        let message = e.to_string();
        let mut offset = offset_of(bytes, e.line(), e.column());
        if peeked(&e, &message) {
            // Reported at the byte after the value: `}`, `]` or `,` there
            // belongs to the container, not to the value in error.
            let before = bytes.get(..offset).unwrap_or_default();
            if let Some(i) = before.iter().rposition(|b| !b.is_ascii_whitespace()) {
                let b = before.get(i).copied();
                if b == Some(b',') || (i + 1 == offset && matches!(b, Some(b'}' | b']'))) {
                    offset = i;
                }
            }
        }
        let mut path = path_at(bytes, offset);
        if let Some(name) = message
            .strip_prefix("unknown field `")
            .and_then(|m| m.split('`').next())
        {
            if let Some(p) = member_path(bytes, offset, &path, name) {
                path = p;
            }
        }
        ConfigError::at(path, message)
    })
}

/// The byte offset just past what serde_json had read when it reported an
/// error at (1-based `line`, `column`): the column counts the bytes of that
/// line read so far.
fn offset_of(bytes: &[u8], line: usize, column: usize) -> usize {
    let mut start = 0;
    if line > 1 {
        let mut newlines = 0;
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'\n' {
                newlines += 1;
                if newlines == line - 1 {
                    start = i + 1;
                    break;
                }
            }
        }
    }
    (start + column).min(bytes.len())
}

/// Whether serde_json reported `e` at the byte it peeked after the value in
/// error rather than at the last byte it read: the custom errors a visitor
/// raises once it has read a value (a bad duration, header name, …; an
/// untagged enum that matched no variant) are. serde's own errors are
/// reported where they were found: at the value (`invalid type`/`value`),
/// after the member name (`unknown field`/`variant`), or at the container's
/// end (`missing field`, `invalid length`, `duplicate field`).
fn peeked(e: &serde_json::Error, message: &str) -> bool {
    e.classify() == serde_json::error::Category::Data
        && ![
            "missing field",
            "invalid length",
            "duplicate field",
            "invalid type",
            "invalid value",
            "unknown field",
            "unknown variant",
        ]
        .iter()
        .any(|p| message.starts_with(p))
}

/// One open container of the JSON document, while scanning it.
enum Frame {
    /// An object; `key` is the member being read, from its name up to the
    /// `,` or `}` after its value; `want_key` is true where a name is next.
    Object { key: Option<String>, want_key: bool },
    /// An array; `index` is the element being read (serde names it from
    /// the `[` or `,` before it on, as it peeks at the element's first byte).
    Array { index: usize },
}

/// The field path (`routes[1].query.size.max`, `.` for the document) of the
/// value being read after the first `offset` bytes of a JSON document: what
/// serde was deserializing when it stopped there. If those bytes end by
/// closing a container, it is that container's path (a missing field is
/// reported at the `}` of its object).
pub fn path_at(bytes: &[u8], offset: usize) -> String {
    render(&scan(bytes, offset, |_| {}))
}

/// The path of the last member called `name` at or below `base` in the
/// first `offset` bytes. serde_json reports errors raised inside buffered
/// content (the body of an internally tagged enum variant, `"type": …`) at
/// the end of an enclosing container; for an unknown field, this finds the
/// member itself.
fn member_path(bytes: &[u8], offset: usize, base: &str, name: &str) -> Option<String> {
    let mut found = None;
    scan(bytes, offset, |stack| {
        let p = render(stack);
        let inside = base == "."
            || p.strip_prefix(base)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['));
        if inside && p.rsplit('.').next() == Some(name) {
            found = Some(p);
        }
    });
    found
}

/// Scans the first `offset` bytes, calling `on_key` after each member name,
/// and returns the containers still open at the end.
fn scan(bytes: &[u8], offset: usize, mut on_key: impl FnMut(&[Frame])) -> Vec<Frame> {
    let bytes = bytes.get(..offset).unwrap_or(bytes);
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'{' => stack.push(Frame::Object {
                key: None,
                want_key: true,
            }),
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Object { key, want_key }) => {
                    *key = None;
                    *want_key = true;
                }
                Some(Frame::Array { index }) => *index += 1,
                None => {}
            },
            b'"' => {
                // The string's end: the next quote not escaped.
                let mut j = i + 1;
                let mut escaped = false;
                while let Some(&c) = bytes.get(j) {
                    if escaped {
                        escaped = false;
                    } else if c == b'\\' {
                        escaped = true;
                    } else if c == b'"' {
                        break;
                    }
                    j += 1;
                }
                let quoted = bytes.get(i..=j);
                if let Some(Frame::Object { key, want_key }) = stack.last_mut() {
                    // A complete member name only; unescaped by serde_json.
                    if let Some(name) = quoted
                        .filter(|_| *want_key && j < bytes.len())
                        .and_then(|q| serde_json::from_slice::<String>(q).ok())
                    {
                        *key = Some(name);
                        *want_key = false;
                        on_key(&stack);
                    }
                }
                i = j;
            }
            _ => {}
        }
        i += 1;
    }
    stack
}

fn render(stack: &[Frame]) -> String {
    let mut path = String::new();
    for f in stack {
        match f {
            Frame::Object { key: Some(k), .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
            }
            Frame::Array { index } => {
                path.push('[');
                path.push_str(&index.to_string());
                path.push(']');
            }
            Frame::Object { key: None, .. } => break,
        }
    }
    if path.is_empty() {
        path.push('.');
    }
    path
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

/// A configuration setting that makes a filter hold the request headers
/// while it reads the body: its `on_http_request_headers` answers `Pause`
/// and it waits for the body callbacks before the headers may go on.
///
/// Envoy delivers the body to a Wasm filter that paused on the headers only
/// with the filter's `allow_on_headers_stop_iteration: true`. Without it
/// (Envoy's default, and all that Istio's `WasmPlugin` can produce)
/// proxy-wasm-cpp-host turns the pause into `StopAllIterationAndWatermark`:
/// the body is buffered in front of the filter, the filter never sees it, and
/// the request waits until one of Envoy's timeouts. Each body-reading filter
/// lists these settings from its compiled config (`body_hold`), `gatewayctl
/// body-hold` prints them, and istio/generate.py refuses a `WasmPlugin` for
/// a chain that has any (docs/istio.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyHold {
    /// The setting's field path (`routes[3].body`).
    pub field: String,
    /// What it holds the headers for.
    pub reason: String,
}

impl BodyHold {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        BodyHold {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        max: u32,
        #[serde(default)]
        name: Option<String>,
    }
    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        routes: Vec<Inner>,
        #[serde(default)]
        tags: std::collections::BTreeMap<String, u32>,
        #[serde(default)]
        e: Option<E>,
    }
    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case", deny_unknown_fields)]
    enum E {
        A,
        B { x: u32 },
    }

    #[test]
    fn every_kind_of_error_names_its_path() {
        // (document, path): the paths serde_path_to_error reported for the
        // same documents, except where noted.
        for (doc, want) in [
            (r#"{"routes":[{"max":1},{"max":1,"zz":2}]}"#, "routes[1].zz"),
            (r#"{"routes":[{"max":1},{"name":"a"}]}"#, "routes[1]"),
            (r#"{"routes":[{"max":1}], "tags": {"a": "b"}}"#, "tags.a"),
            (r#"{"routes":[{"max":1}], "tags": {"a": 1}, "e": "c"}"#, "e"),
            (r#"{"routes":[{"max":1}], "e": {"b": {"x": "s"}}}"#, "e.b.x"),
            (r#"{"routes":[{"max":1}], "e": {"b": {"y": 1}}}"#, "e.b.y"),
            (r#"{"routes":[{"max":1}], "e": {"b": {}}}"#, "e.b"),
            (r#"{"routes":[{"max":1},{"max":1},]}"#, "routes"),
            (r#"{"routes":{"max":1}}"#, "routes"),
            (r#"{"routes":[{"max":1},5]}"#, "routes[1]"),
            (r#"{"routes":[{"max":1},{"max":-5}]}"#, "routes[1].max"),
            (r#"{"routes":[{"max":1},{"max":1.5}]}"#, "routes[1].max"),
            (r#"{}"#, "."),
            (r#"[]"#, "."),
            (
                r#"{"routes":[{"max":1}], "tags": {"a\"]{": "b"}}"#,
                "tags.a\"]{",
            ),
            (
                "{\n  \"routes\": [\n    {\"max\": 1},\n    {\"max\": true}\n  ]\n}",
                "routes[1].max",
            ),
            (
                "{\r\n \"routes\": [\r\n {\"max\": \"é\"}]}",
                "routes[0].max",
            ),
            // serde_path_to_error said "." (the object) for a duplicate member
            (r#"{"routes":[],"routes":[]}"#, "routes"),
            // serde_path_to_error said "?" for EOF, and accepted trailing text
            (r#"{"routes":[{"max":1}], "e": {"b": {"x": 1}}"#, "e"),
            (r#"{"routes":[{"max":1}]} x"#, "."),
        ] {
            let Err(e) = parse_json::<Outer>(doc.as_bytes()) else {
                panic!("accepted: {doc}")
            };
            assert_eq!(e.path, want, "{doc}: {}", e.message);
        }
        assert!(parse_json::<Outer>(br#"{"routes":[{"max":1}]}"#).is_ok());
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
