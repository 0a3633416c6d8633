//! The proxy-wasm ABI's byte encodings, as the SDK writes and reads them:
//! header maps (`u32` count, then `u32` name and value lengths, then each
//! name and value followed by a NUL) and property paths (segments joined by
//! NUL). Pure: the host shim (`host`) decodes what the SDK hands over and
//! encodes what it hands back.

/// Encodes `pairs` as a proxy-wasm header map.
pub fn encode_pairs<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let list: Vec<(&[u8], &[u8])> = pairs.into_iter().collect();
    let size = 4 + list
        .iter()
        .map(|(n, v)| 8 + n.len() + v.len() + 2)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&u32::try_from(list.len()).unwrap_or(u32::MAX).to_le_bytes());
    for (n, v) in &list {
        out.extend_from_slice(&u32::try_from(n.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&u32::try_from(v.len()).unwrap_or(u32::MAX).to_le_bytes());
    }
    for (n, v) in &list {
        out.extend_from_slice(n);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(b)).ok()
}

/// Decodes a proxy-wasm header map; `None` when it is malformed.
pub fn decode_pairs(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = u32_at(bytes, 0)?;
    // Every pair takes at least 10 bytes: never trust the count for an allocation.
    if count > bytes.len() / 10 {
        return None;
    }
    let mut lens = Vec::with_capacity(count);
    for i in 0..count {
        let at = 4 + i * 8;
        lens.push((u32_at(bytes, at)?, u32_at(bytes, at + 4)?));
    }
    let mut pos = 4 + count * 8;
    let mut out = Vec::with_capacity(count);
    for (nl, vl) in lens {
        let name = bytes.get(pos..pos.checked_add(nl)?)?;
        pos = pos.checked_add(nl)?.checked_add(1)?;
        let value = bytes.get(pos..pos.checked_add(vl)?)?;
        pos = pos.checked_add(vl)?.checked_add(1)?;
        out.push((name, value));
    }
    Some(out)
}

/// Splits a proxy-wasm property path into its segments.
pub fn split_path(bytes: &[u8]) -> Vec<&[u8]> {
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes.split(|b| *b == 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_map_round_trips() {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b":path", b"/a?b=1"),
            (b"x-empty", b""),
            (b"x", b"\xff\x80"),
        ];
        let bytes = encode_pairs(pairs.iter().copied());
        assert_eq!(decode_pairs(&bytes), Some(pairs));
    }

    #[test]
    fn an_empty_map_is_four_zero_bytes_and_empty_input_is_no_pairs() {
        assert_eq!(encode_pairs(std::iter::empty()), vec![0, 0, 0, 0]);
        assert_eq!(decode_pairs(&[]), Some(vec![]));
        assert_eq!(decode_pairs(&[0, 0, 0, 0]), Some(vec![]));
    }

    #[test]
    fn a_truncated_or_lying_map_is_refused() {
        let bytes = encode_pairs([(&b"name"[..], &b"value"[..])]);
        for cut in 1..bytes.len() - 1 {
            assert_eq!(decode_pairs(&bytes[..cut]), None, "cut at {cut}");
        }
        // A count far beyond what the bytes can hold.
        assert_eq!(decode_pairs(&[0xff, 0xff, 0xff, 0x7f, 0, 0]), None);
    }

    #[test]
    fn the_sdk_encoding_is_what_we_decode() {
        // What proxy-wasm 0.2's serialize_map writes for [("a","bc")].
        let sdk = [1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'a', 0, b'b', b'c', 0];
        assert_eq!(decode_pairs(&sdk), Some(vec![(&b"a"[..], &b"bc"[..])]));
    }

    #[test]
    fn a_path_splits_on_nul() {
        assert_eq!(
            split_path(b"xds\0route_name"),
            vec![&b"xds"[..], &b"route_name"[..]]
        );
        assert_eq!(split_path(b"plugin_root_id"), vec![&b"plugin_root_id"[..]]);
        assert!(split_path(b"").is_empty());
    }
}
