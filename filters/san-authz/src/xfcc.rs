//! A strict parser for `x-forwarded-client-cert` (XFCC), as Envoy writes it.
//!
//! ```text
//! header  = element *( "," element )
//! element = pair *( ";" pair )
//! pair    = OWS key "=" value OWS
//! value   = quoted / token
//! quoted  = DQUOTE *( char / "\" char ) DQUOTE      ; "," ";" "=" literal inside
//! token   = *( char except , ; " / "\" char )      ; "\," "\;" "\"" escapes
//! ```
//!
//! Keys are compared case-insensitively (Envoy writes `By`, `Hash`, `Cert`,
//! `Chain`, `Subject`, `URI`, `DNS`). Anything that does not fit the grammar
//! (an unterminated quote, a trailing backslash, an empty element, a pair
//! without `=`) is an error: the caller treats the header as absent and
//! denies, so no parse ambiguity can be turned into an identity.
//!
//! The parser is pure and bounded: it never allocates more than the header's
//! own size, and [`parse`] refuses more than `max_elements` elements.

/// Why an XFCC header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum XfccError {
    #[error("the header is empty")]
    Empty,
    #[error("an element is empty")]
    EmptyElement,
    #[error("a pair has no '='")]
    MissingEquals,
    #[error("a key is empty or not a token")]
    BadKey,
    #[error("a quoted value is not terminated")]
    UnterminatedQuote,
    #[error("the header ends in a backslash")]
    TrailingEscape,
    #[error("text follows a quoted value")]
    TextAfterQuote,
    #[error("more than {0} elements")]
    TooManyElements(usize),
}

/// One XFCC element: the key/value pairs one proxy hop added, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    /// (key as written, unescaped value).
    pub pairs: Vec<(String, String)>,
}

impl Element {
    /// Every value of `key` (case-insensitive), in order.
    pub fn values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// The value of a key that must appear at most once: `Ok(None)` when
    /// absent, `Err(())` when repeated (ambiguous, so refused).
    #[allow(clippy::result_unit_err)]
    pub fn single<'a>(&'a self, key: &str) -> Result<Option<&'a str>, ()> {
        let mut it = self
            .pairs
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str());
        let first = it.next();
        if it.next().is_some() {
            return Err(());
        }
        Ok(first)
    }
}

/// Parses a whole XFCC header value into its elements.
pub fn parse(header: &str, max_elements: usize) -> Result<Vec<Element>, XfccError> {
    if header.trim().is_empty() {
        return Err(XfccError::Empty);
    }
    let mut p = Parser {
        chars: header.chars().peekable(),
    };
    let mut elements = Vec::new();
    loop {
        if elements.len() >= max_elements {
            return Err(XfccError::TooManyElements(max_elements));
        }
        let (element, more) = p.element()?;
        elements.push(element);
        if !more {
            return Ok(elements);
        }
    }
}

/// The last element, the one the nearest (trusted) hop appended.
pub fn last_element(header: &str, max_elements: usize) -> Result<Element, XfccError> {
    parse(header, max_elements)?.pop().ok_or(XfccError::Empty)
}

/// The client certificate (PEM) of an XFCC header that Envoy itself wrote
/// from the verified downstream connection: a listener with
/// `forward_client_cert_details: SANITIZE_SET` and
/// `set_current_client_cert_details.cert: true` drops whatever XFCC the
/// client sent and writes exactly one element whose `Cert=` is the
/// connection's peer certificate, URL-encoded. The native build reads
/// `connection.peer_certificate` this way (Envoy's dynamic-module ABI has
/// no attribute for the whole certificate; docs/native.md). Anything but
/// exactly one element with exactly one `Cert=` reads as no certificate.
pub fn connection_certificate_pem(values: &[&str]) -> Option<String> {
    if values.len() != 1 {
        return None;
    }
    let mut elements = parse(values.first()?, 2).ok()?;
    if elements.len() != 1 {
        return None;
    }
    let element = elements.pop()?;
    let encoded = element.single("cert").ok()??;
    percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .ok()
        .map(|p| p.into_owned())
}

struct Parser<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
}

/// What ended a value.
#[derive(PartialEq, Eq)]
enum End {
    Pair,
    Element,
    Input,
}

fn is_token_key(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Parser<'_> {
    fn skip_ows(&mut self) {
        while self.chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            self.chars.next();
        }
    }

    /// Parses one element; `true` when a ',' follows (another element).
    fn element(&mut self) -> Result<(Element, bool), XfccError> {
        let mut element = Element::default();
        loop {
            self.skip_ows();
            match self.chars.peek() {
                None | Some(',') if element.pairs.is_empty() => {
                    return Err(XfccError::EmptyElement)
                }
                _ => {}
            }
            let key = self.key()?;
            let (value, end) = self.value()?;
            element.pairs.push((key, value));
            match end {
                End::Pair => continue,
                End::Element => return Ok((element, true)),
                End::Input => return Ok((element, false)),
            }
        }
    }

    fn key(&mut self) -> Result<String, XfccError> {
        let mut key = String::new();
        loop {
            match self.chars.next() {
                Some('=') => break,
                Some(',' | ';' | '"' | '\\') => return Err(XfccError::BadKey),
                Some(c) => key.push(c),
                None => return Err(XfccError::MissingEquals),
            }
        }
        let key = key.trim_end_matches([' ', '\t']).to_string();
        if !is_token_key(&key) {
            return Err(XfccError::BadKey);
        }
        Ok(key)
    }

    fn value(&mut self) -> Result<(String, End), XfccError> {
        self.skip_ows();
        let mut value = String::new();
        if self.chars.peek() == Some(&'"') {
            self.chars.next();
            loop {
                match self.chars.next() {
                    None => return Err(XfccError::UnterminatedQuote),
                    Some('\\') => match self.chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(XfccError::TrailingEscape),
                    },
                    Some('"') => break,
                    Some(c) => value.push(c),
                }
            }
            self.skip_ows();
            return match self.chars.next() {
                None => Ok((value, End::Input)),
                Some(';') => Ok((value, End::Pair)),
                Some(',') => Ok((value, End::Element)),
                Some(_) => Err(XfccError::TextAfterQuote),
            };
        }
        let end = loop {
            match self.chars.next() {
                None => break End::Input,
                Some(';') => break End::Pair,
                Some(',') => break End::Element,
                Some('"') => return Err(XfccError::TextAfterQuote),
                Some('\\') => match self.chars.next() {
                    Some(c) => value.push(c),
                    None => return Err(XfccError::TrailingEscape),
                },
                Some(c) => value.push(c),
            }
        };
        let trimmed = value.trim_end_matches([' ', '\t']);
        if trimmed.len() != value.len() {
            value.truncate(trimmed.len());
        }
        Ok((value, end))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_connection_certificate_is_the_one_element_envoy_set() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let enc: String =
            percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let one = format!("By=spiffe://gw;Hash=ab;Cert=\"{enc}\";Subject=\"CN=x\";URI=spiffe://p");
        assert_eq!(connection_certificate_pem(&[&one]).as_deref(), Some(pem));
        // Two elements, two header lines, two Cert=, none: no certificate.
        assert_eq!(connection_certificate_pem(&[&format!("{one},{one}")]), None);
        assert_eq!(connection_certificate_pem(&[&one, &one]), None);
        assert_eq!(
            connection_certificate_pem(&[&format!("Cert=a;{one}")]),
            None
        );
        assert_eq!(connection_certificate_pem(&["By=x;Hash=ab"]), None);
        assert_eq!(connection_certificate_pem(&[]), None);
        assert_eq!(connection_certificate_pem(&["Cert=\"unterminated"]), None);
    }

    use super::*;

    fn one(h: &str) -> Element {
        let mut v = parse(h, 8).unwrap();
        assert_eq!(v.len(), 1, "{h}");
        v.pop().unwrap()
    }

    #[test]
    fn envoy_shaped_element_parses() {
        let e = one(
            r#"By=spiffe://gw;Hash=abc123;Cert="-----BEGIN%20CERTIFICATE-----%0AMII";Subject="CN=a,O=b";URI=spiffe://x/y;DNS=a.example;DNS=b.example"#,
        );
        assert_eq!(e.single("hash"), Ok(Some("abc123")));
        assert_eq!(
            e.single("Cert"),
            Ok(Some("-----BEGIN%20CERTIFICATE-----%0AMII"))
        );
        assert_eq!(e.single("subject"), Ok(Some("CN=a,O=b")));
        assert_eq!(
            e.values("dns").collect::<Vec<_>>(),
            ["a.example", "b.example"]
        );
        assert_eq!(e.single("dns"), Err(()));
        assert_eq!(e.single("chain"), Ok(None));
    }

    #[test]
    fn quoted_values_keep_commas_semicolons_and_escaped_quotes() {
        let e = one(r#"Subject="CN=x\"y;z,w";URI=u"#);
        assert_eq!(e.single("subject"), Ok(Some(r#"CN=x"y;z,w"#)));
        assert_eq!(e.single("uri"), Ok(Some("u")));
    }

    #[test]
    fn escaped_commas_and_semicolons_outside_quotes_are_literal() {
        let e = one(r"Subject=CN=a\,O=b\;c;URI=u");
        assert_eq!(e.single("subject"), Ok(Some("CN=a,O=b;c")));
        assert_eq!(e.single("uri"), Ok(Some("u")));
    }

    #[test]
    fn multiple_elements_in_order_and_the_last_is_the_nearest_hop() {
        let v = parse("By=a;URI=first, By=b;URI=second,By=c;URI=third", 8).unwrap();
        assert_eq!(v.len(), 3);
        let last = last_element("By=a;URI=first, By=b;URI=second", 8).unwrap();
        assert_eq!(last.single("uri"), Ok(Some("second")));
        assert_eq!(last.single("by"), Ok(Some("b")));
    }

    #[test]
    fn a_quoted_comma_does_not_start_a_new_element() {
        let v = parse(r#"URI="a,URI=b";Hash=h"#, 8).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].single("uri"), Ok(Some("a,URI=b")));
    }

    #[test]
    fn malformed_headers_are_refused() {
        for (h, want) in [
            ("", XfccError::Empty),
            ("   ", XfccError::Empty),
            ("URI=a,", XfccError::EmptyElement),
            (",URI=a", XfccError::EmptyElement),
            ("URI=a,,URI=b", XfccError::EmptyElement),
            ("URI", XfccError::MissingEquals),
            ("=a", XfccError::BadKey),
            ("U\"RI=a", XfccError::BadKey),
            ("URI=\"abc", XfccError::UnterminatedQuote),
            ("URI=abc\\", XfccError::TrailingEscape),
            ("URI=\"abc\\", XfccError::TrailingEscape),
            ("URI=\"a\"b", XfccError::TextAfterQuote),
            ("URI=a\"b\"", XfccError::TextAfterQuote),
        ] {
            assert_eq!(parse(h, 8), Err(want), "{h:?}");
        }
    }

    #[test]
    fn element_count_is_bounded() {
        let h = ["URI=a"; 5].join(",");
        assert!(parse(&h, 5).is_ok());
        assert_eq!(parse(&h, 4), Err(XfccError::TooManyElements(4)));
    }

    #[test]
    fn whitespace_around_pairs_is_ignored_but_kept_inside_quotes() {
        let e = one(r#" URI = a ; Subject=" CN=x " "#);
        assert_eq!(e.single("uri"), Ok(Some("a")));
        assert_eq!(e.single("subject"), Ok(Some(" CN=x ")));
    }

    /// Cheap deterministic fuzzing: every byte string either parses or is
    /// refused, never panics, and a parse never yields more elements than
    /// the header has commas + 1.
    #[test]
    fn arbitrary_input_never_panics() {
        let alphabet: &[char] = &['U', 'R', 'I', '=', ',', ';', '"', '\\', ' ', 'a', '%', 'é'];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 24) as usize;
            let mut s = String::new();
            let mut x = seed;
            for _ in 0..len {
                s.push(alphabet[(x % alphabet.len() as u64) as usize]);
                x /= alphabet.len() as u64;
                if x == 0 {
                    x = seed.rotate_left(11);
                }
            }
            if let Ok(v) = parse(&s, 64) {
                assert!(v.len() <= s.matches(',').count() + 1, "{s:?}");
                assert!(v.iter().all(|e| !e.pairs.is_empty()), "{s:?}");
            }
        }
    }
}
