//! The `aes128gcm` content coding of RFC 8188: the coding header, the
//! records, the padding delimiter, the key and nonce derivation. The
//! primitives are RustCrypto's (`aes-gcm`, `hkdf`; AES-GCM: see [`aead`]).
//!
//! ```text
//! header:  salt (16) | rs (u32, big endian) | idlen (1) | keyid (idlen)
//! records: rs octets each, the last one 17..=rs octets:
//!          AES-128-GCM(CEK, NONCE xor seq, data | delimiter | 0x00*) | tag (16)
//!          delimiter 0x01 in every record but the last, 0x02 in the last
//! CEK   = HKDF-SHA256(salt, IKM, "Content-Encoding: aes128gcm" 0x00, 16)
//! NONCE = HKDF-SHA256(salt, IKM, "Content-Encoding: nonce" 0x00, 12)
//! ```
//!
//! The gateway's input keying material is HMAC-SHA256(master secret,
//! `"aes128gcm:"` + key id) ([`ikm`]). Decryption ([`open`]) checks the
//! whole shape (header, record size, record count, the last record's
//! length) before it decrypts anything, and fails on the first record that
//! does not authenticate or whose delimiter is wrong: a body is accepted
//! whole or not at all. Encryption ([`Encoder`]) streams: it keeps at most
//! one record's plaintext between calls, and the length of its output
//! depends only on the plaintext's length ([`encrypted_len`]).

use self::aead::{Aes128Gcm, Nonce, Tag};
use aes_gcm::aead::{AeadInPlace, KeyInit};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Salt length.
pub const SALT_LEN: usize = 16;
/// The AEAD tag at the end of every record.
pub const TAG_LEN: usize = 16;
/// Salt, record size and key id length: the header without the key id.
pub const HEADER_FIXED_LEN: usize = SALT_LEN + 4 + 1;
/// The smallest record size RFC 8188 allows (one octet of data, the
/// delimiter, the tag).
pub const MIN_RECORD_SIZE: u32 = 18;
/// A record's overhead: the delimiter and the tag.
pub const RECORD_OVERHEAD: usize = 1 + TAG_LEN;
/// The prefix of the HMAC message that derives the input keying material
/// from a master secret (the contract's key separation from the signing
/// key, which is HMAC(master secret, key id)).
pub const IKM_LABEL: &[u8] = b"aes128gcm:";

const CEK_INFO: &[u8] = b"Content-Encoding: aes128gcm\0";
const NONCE_INFO: &[u8] = b"Content-Encoding: nonce\0";
const DELIMITER: u8 = 1;
const LAST_DELIMITER: u8 = 2;

/// Input keying material: 32 bytes of HMAC-SHA256.
pub type Ikm = [u8; 32];

/// Why a body is not a valid `aes128gcm` coding for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodingError {
    /// Fewer bytes than the header (salt, record size, key id).
    ShortHeader,
    /// A record size below 18 or above the configured maximum.
    RecordSize,
    /// More records than the configured maximum.
    TooManyRecords,
    /// No record, a last record shorter than 17 octets, or a stream that
    /// ends on a record whose delimiter says more follows.
    Truncated,
    /// A record with no delimiter, or the wrong one for its place.
    Padding,
    /// The header's key id is not the one the caller expects.
    KeyMismatch,
    /// A record did not authenticate: wrong key, or altered bytes.
    Authentication,
}

impl CodingError {
    /// `true` for the errors that say the sender does not hold the key (or
    /// the bytes were altered): 401, not 400.
    pub fn is_authentication(self) -> bool {
        matches!(self, CodingError::KeyMismatch | CodingError::Authentication)
    }

    /// A short, client-safe description.
    pub fn message(self) -> &'static str {
        match self {
            CodingError::ShortHeader => "the aes128gcm body is shorter than its coding header",
            CodingError::RecordSize => "the aes128gcm record size is out of range",
            CodingError::TooManyRecords => "the aes128gcm body has too many records",
            CodingError::Truncated => "the aes128gcm body is truncated",
            CodingError::Padding => "an aes128gcm record has an invalid padding delimiter",
            CodingError::KeyMismatch => {
                "the aes128gcm key id is not the key id of the request signature"
            }
            CodingError::Authentication => "the aes128gcm body does not decrypt",
        }
    }
}

/// The coding header of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub salt: [u8; SALT_LEN],
    pub rs: u32,
    pub keyid: &'a [u8],
}

impl<'a> Header<'a> {
    /// Parses the header at the start of `body`; returns it and the records
    /// after it.
    pub fn parse(body: &'a [u8]) -> Result<(Header<'a>, &'a [u8]), CodingError> {
        let (fixed, rest) = body
            .split_first_chunk::<HEADER_FIXED_LEN>()
            .ok_or(CodingError::ShortHeader)?;
        let (salt, tail) = fixed
            .split_first_chunk::<SALT_LEN>()
            .ok_or(CodingError::ShortHeader)?;
        let (rs, idlen) = tail
            .split_first_chunk::<4>()
            .ok_or(CodingError::ShortHeader)?;
        let idlen = usize::from(idlen.first().copied().unwrap_or(0));
        if rest.len() < idlen {
            return Err(CodingError::ShortHeader);
        }
        let (keyid, records) = rest.split_at(idlen);
        let rs = u32::from_be_bytes(*rs);
        if rs < MIN_RECORD_SIZE {
            return Err(CodingError::RecordSize);
        }
        Ok((
            Header {
                salt: *salt,
                rs,
                keyid,
            },
            records,
        ))
    }

    /// The header's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_FIXED_LEN + self.keyid.len());
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.rs.to_be_bytes());
        out.push(u8::try_from(self.keyid.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.keyid.get(..255).unwrap_or(self.keyid));
        out
    }
}

/// HMAC-SHA256(master, "aes128gcm:" || keyid): the input keying material of
/// a key id.
pub fn ikm(master: &[u8], keyid: &[u8]) -> Ikm {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(master) else {
        return [0; 32];
    };
    mac.update(IKM_LABEL);
    mac.update(keyid);
    mac.finalize().into_bytes().into()
}

/// A content encryption key and nonce base, derived from IKM and salt.
struct ContentKey {
    cipher: Aes128Gcm,
    nonce: [u8; 12],
}

impl ContentKey {
    fn derive(ikm: &[u8], salt: &[u8; SALT_LEN]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
        let mut cek = [0u8; 16];
        let mut nonce = [0u8; 12];
        // 16 and 12 bytes are far below HKDF-SHA256's 255 * 32 limit.
        let _ = hk.expand(CEK_INFO, &mut cek);
        let _ = hk.expand(NONCE_INFO, &mut nonce);
        ContentKey {
            cipher: Aes128Gcm::new(&cek.into()),
            nonce,
        }
    }

    /// The nonce of record `seq`: the nonce base XOR the 96-bit sequence number.
    fn nonce(&self, seq: u64) -> Nonce<aes_gcm::aead::consts::U12> {
        let mut n = self.nonce;
        let (_, low) = n.split_at_mut(4);
        for (b, s) in low.iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        n.into()
    }

    /// Decrypts one record in place (`buf` = ciphertext without the tag).
    fn open(&self, seq: u64, buf: &mut [u8], tag: &[u8]) -> Result<(), CodingError> {
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| CodingError::Truncated)?;
        self.cipher
            .decrypt_in_place_detached(&self.nonce(seq), b"", buf, &Tag::from(tag))
            .map_err(|_| CodingError::Authentication)
    }

    /// Encrypts `out[start..]` in place and appends the tag.
    fn seal(&self, seq: u64, out: &mut Vec<u8>, start: usize) {
        let Some(buf) = out.get_mut(start..) else {
            return;
        };
        match self
            .cipher
            .encrypt_in_place_detached(&self.nonce(seq), b"", buf)
        {
            Ok(tag) => out.extend_from_slice(&tag),
            // Only for a record beyond AES-GCM's 64 GiB limit, which a u32
            // record size cannot reach; never leave plaintext behind.
            Err(_) => out.truncate(start),
        }
    }
}

/// Bounds on what [`open`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest record size (`rs`) accepted.
    pub max_record_size: u32,
    /// Most records in one body.
    pub max_records: usize,
}

/// Decrypts a whole `aes128gcm` body. `keys` gets the header's key id and
/// returns the candidate input keying materials (several while a master
/// secret rotates; the first that authenticates the first record is used
/// for all of them), or [`CodingError::KeyMismatch`].
///
/// The shape is checked before any decryption: header, record size,
/// record count, a last record of at least 17 octets.
pub fn open<K: AsRef<[u8]>>(
    body: &[u8],
    limits: &Limits,
    keys: impl FnOnce(&[u8]) -> Result<Vec<K>, CodingError>,
) -> Result<Vec<u8>, CodingError> {
    open_indexed(body, limits, keys).map(|(plain, _)| plain)
}

/// [`open`], also returning the index of the candidate that opened it.
pub fn open_indexed<K: AsRef<[u8]>>(
    body: &[u8],
    limits: &Limits,
    keys: impl FnOnce(&[u8]) -> Result<Vec<K>, CodingError>,
) -> Result<(Vec<u8>, usize), CodingError> {
    let (header, records) = Header::parse(body)?;
    if header.rs > limits.max_record_size {
        return Err(CodingError::RecordSize);
    }
    let rs = header.rs as usize;
    if records.is_empty() {
        return Err(CodingError::Truncated);
    }
    let count = records.len().div_ceil(rs);
    if count > limits.max_records {
        return Err(CodingError::TooManyRecords);
    }
    let last_len = records.len() - (count - 1) * rs;
    if last_len < RECORD_OVERHEAD {
        return Err(CodingError::Truncated);
    }
    let candidates = keys(header.keyid)?;
    let mut out = Vec::with_capacity(records.len());
    let mut key: Option<ContentKey> = None;
    let mut index = 0;
    for (seq, record) in records.chunks(rs).enumerate() {
        let last = seq + 1 == count;
        let (ct, tag) = record.split_at(record.len().saturating_sub(TAG_LEN));
        let start = out.len();
        let seq = seq as u64;
        match &key {
            Some(k) => {
                out.extend_from_slice(ct);
                k.open(seq, out.get_mut(start..).unwrap_or_default(), tag)?;
            }
            None => {
                // The first record picks the key among the candidates.
                let mut found = None;
                for (i, c) in candidates.iter().enumerate() {
                    let k = ContentKey::derive(c.as_ref(), &header.salt);
                    out.truncate(start);
                    out.extend_from_slice(ct);
                    if k.open(seq, out.get_mut(start..).unwrap_or_default(), tag)
                        .is_ok()
                    {
                        found = Some(k);
                        index = i;
                        break;
                    }
                }
                if found.is_none() {
                    out.truncate(start);
                    return Err(CodingError::Authentication);
                }
                key = found;
            }
        }
        // The delimiter is the last non-zero octet of the record.
        let plain = out.get(start..).unwrap_or_default();
        let Some(pos) = plain.iter().rposition(|&b| b != 0) else {
            return Err(CodingError::Padding);
        };
        let delimiter = plain.get(pos).copied().unwrap_or(0);
        match (delimiter, last) {
            (LAST_DELIMITER, true) | (DELIMITER, false) => {}
            // The stream ends on a record that says more follows.
            (DELIMITER, true) => return Err(CodingError::Truncated),
            _ => return Err(CodingError::Padding),
        }
        out.truncate(start + pos);
    }
    Ok((out, index))
}

/// The length of what [`Encoder`] produces for `plain_len` bytes of
/// plaintext: the header, every byte, and 17 octets per record (at least
/// one record; every record but the last carries `rs - 17` bytes).
pub fn encrypted_len(plain_len: u64, rs: u32, keyid_len: usize) -> u64 {
    let per = u64::from(rs.max(MIN_RECORD_SIZE)) - RECORD_OVERHEAD as u64;
    let records = plain_len.div_ceil(per).max(1);
    (HEADER_FIXED_LEN + keyid_len) as u64 + plain_len + records * RECORD_OVERHEAD as u64
}

/// Streaming encryption: [`Encoder::push`] as plaintext arrives,
/// [`Encoder::finish`] at its end. Between calls it keeps at most
/// `rs - 17` bytes (one record's data): a record is sealed as soon as more
/// than that has arrived, so the last record is never empty unless the
/// whole plaintext is.
pub struct Encoder {
    key: ContentKey,
    header: Option<Vec<u8>>,
    per_record: usize,
    seq: u64,
    carry: Vec<u8>,
    /// Plaintext bytes taken in.
    pub plain_bytes: u64,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("per_record", &self.per_record)
            .field("seq", &self.seq)
            .field("carry", &self.carry.len())
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// An encoder with record size `rs` (at least 18) and key id `keyid`
    /// (at most 255 bytes) in its header; `salt` must be fresh for every
    /// message under the same IKM.
    pub fn new(ikm: &[u8], salt: [u8; SALT_LEN], rs: u32, keyid: &[u8]) -> Option<Self> {
        if rs < MIN_RECORD_SIZE || keyid.len() > 255 {
            return None;
        }
        let header = Header { salt, rs, keyid }.encode();
        Some(Encoder {
            key: ContentKey::derive(ikm, &salt),
            header: Some(header),
            per_record: rs as usize - RECORD_OVERHEAD,
            seq: 0,
            carry: Vec::new(),
            plain_bytes: 0,
        })
    }

    fn emit_header(&mut self, out: &mut Vec<u8>) {
        if let Some(h) = self.header.take() {
            out.extend_from_slice(&h);
        }
    }

    fn seal(&mut self, data: &[u8], delimiter: u8, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(data);
        out.push(delimiter);
        self.key.seal(self.seq, out, start);
        self.seq += 1;
    }

    /// Takes `data` in and appends to `out` the header (first call) and
    /// every record that is now complete.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        self.emit_header(out);
        self.plain_bytes += data.len() as u64;
        let per = self.per_record;
        while self.carry.len() + data.len() > per {
            let need = per - self.carry.len();
            let (head, tail) = data.split_at(need.min(data.len()));
            if self.carry.is_empty() {
                self.seal(head, DELIMITER, out);
            } else {
                let mut carry = std::mem::take(&mut self.carry);
                carry.extend_from_slice(head);
                self.seal(&carry, DELIMITER, out);
                carry.clear();
                self.carry = carry;
            }
            data = tail;
        }
        self.carry.extend_from_slice(data);
    }

    /// Appends the header (if no call emitted it yet) and the last record.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        self.emit_header(out);
        let carry = std::mem::take(&mut self.carry);
        self.seal(&carry, LAST_DELIMITER, out);
    }

    /// Bytes held between calls (at most `rs - 17`).
    pub fn held(&self) -> usize {
        self.carry.len()
    }
}

/// Encrypts a whole body (clients, the CLI, tests).
pub fn seal(
    plain: &[u8],
    ikm: &[u8],
    salt: [u8; SALT_LEN],
    rs: u32,
    keyid: &[u8],
) -> Option<Vec<u8>> {
    let mut enc = Encoder::new(ikm, salt, rs, keyid)?;
    let mut out = Vec::with_capacity(encrypted_len(plain.len() as u64, rs, keyid.len()) as usize);
    enc.push(plain, &mut out);
    enc.finish(&mut out);
    Some(out)
}

/// AES-128-GCM, the one primitive the records need, behind RustCrypto's
/// AEAD traits (`KeyInit`, `AeadInPlace`: seal and open in place with a
/// detached tag). Two backends: RustCrypto's `aes-gcm` (constant-time
/// software on wasm32, AES-NI and CLMUL detected at run time elsewhere) and,
/// with the `native-aead` feature off wasm32 (the native build,
/// filters/native), `ring`'s assembly (AES-NI, CLMUL, AVX). [`Aes128Gcm`] is
/// the one the codec uses. Declared after the codec so that the wasm
/// modules, which keep RustCrypto, stay byte for byte what they were.
pub mod aead {
    pub use aes_gcm::{Nonce, Tag};

    /// The codec's AES-128-GCM: ring's.
    #[cfg(all(feature = "native-aead", not(target_arch = "wasm32")))]
    pub use self::ring_gcm::RingAes128Gcm as Aes128Gcm;
    #[cfg(all(feature = "native-aead", not(target_arch = "wasm32")))]
    pub use self::ring_gcm::RingAes128Gcm as Ring;
    /// The codec's AES-128-GCM: RustCrypto's.
    #[cfg(not(all(feature = "native-aead", not(target_arch = "wasm32"))))]
    pub use aes_gcm::Aes128Gcm;
    /// RustCrypto's AES-128-GCM whatever the codec uses (the tests compare
    /// the backends, the bench measures both).
    pub use aes_gcm::Aes128Gcm as RustCrypto;

    /// The codec's backend, by name (benches).
    pub const BACKEND: &str = if cfg!(all(feature = "native-aead", not(target_arch = "wasm32"))) {
        "ring"
    } else {
        "aes-gcm (RustCrypto)"
    };

    #[cfg(all(feature = "native-aead", not(target_arch = "wasm32")))]
    mod ring_gcm {
        use aes_gcm::aead::consts::{U0, U12, U16};
        use aes_gcm::aead::{AeadCore, AeadInPlace, Error, Key, KeyInit, KeySizeUser, Nonce, Tag};
        use ring::aead::{Aad, LessSafeKey, UnboundKey, AES_128_GCM};

        /// `ring`'s AES-128-GCM behind RustCrypto's AEAD traits.
        pub struct RingAes128Gcm(Option<LessSafeKey>);

        impl KeySizeUser for RingAes128Gcm {
            type KeySize = U16;
        }

        impl KeyInit for RingAes128Gcm {
            fn new(key: &Key<Self>) -> Self {
                // A 16-byte key is what AES_128_GCM takes, so this cannot
                // fail; if it did, every open fails and every seal errs.
                RingAes128Gcm(
                    UnboundKey::new(&AES_128_GCM, AsRef::<[u8]>::as_ref(key))
                        .ok()
                        .map(LessSafeKey::new),
                )
            }
        }

        impl AeadCore for RingAes128Gcm {
            type NonceSize = U12;
            type TagSize = U16;
            type CiphertextOverhead = U0;
        }

        fn nonce(n: &Nonce<RingAes128Gcm>) -> Result<ring::aead::Nonce, Error> {
            ring::aead::Nonce::try_assume_unique_for_key(AsRef::<[u8]>::as_ref(n))
                .map_err(|_| Error)
        }

        impl AeadInPlace for RingAes128Gcm {
            fn encrypt_in_place_detached(
                &self,
                n: &Nonce<Self>,
                aad: &[u8],
                buffer: &mut [u8],
            ) -> Result<Tag<Self>, Error> {
                let key = self.0.as_ref().ok_or(Error)?;
                let tag = key
                    .seal_in_place_separate_tag(nonce(n)?, Aad::from(aad), buffer)
                    .map_err(|_| Error)?;
                let bytes: [u8; 16] = tag.as_ref().try_into().map_err(|_| Error)?;
                Ok(bytes.into())
            }

            fn decrypt_in_place_detached(
                &self,
                n: &Nonce<Self>,
                aad: &[u8],
                buffer: &mut [u8],
                tag: &Tag<Self>,
            ) -> Result<(), Error> {
                let key = self.0.as_ref().ok_or(Error)?;
                let tag =
                    ring::aead::Tag::try_from(AsRef::<[u8]>::as_ref(tag)).map_err(|_| Error)?;
                key.open_in_place_separate_tag(nonce(n)?, Aad::from(aad), tag, buffer, 0..)
                    .map(|_| ())
                    .map_err(|_| Error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use proptest::prelude::*;

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    const LIMITS: Limits = Limits {
        max_record_size: 1 << 20,
        max_records: 1 << 20,
    };

    /// RFC 8188 §3.1: one record, rs 4096, empty key id.
    #[test]
    fn rfc_8188_section_3_1_decrypts_and_reencrypts_byte_for_byte() {
        let body = b64("I1BsxtFttlv3u_Oo94xnmwAAEAAA-NAVub2qFgBEuQKRapoZu-IxkIva3MEB1PD-ly8Thjg");
        let ikm = b64("yqdlZ-tYemfogSmv7Ws5PQ");
        let (h, _) = Header::parse(&body).unwrap();
        assert_eq!((h.rs, h.keyid), (4096, &b""[..]));
        // Intermediate values of the RFC.
        let k = ContentKey::derive(&ikm, &h.salt);
        assert_eq!(k.nonce.to_vec(), b64("Bcs8gkIRKLI8GeI8"));
        let plain = open(&body, &LIMITS, |_| Ok(vec![ikm.clone()])).unwrap();
        assert_eq!(plain, b"I am the walrus");
        let again = seal_raw(b"I am the walrus", &ikm, h.salt, 4096, b"");
        assert_eq!(again, body);
    }

    /// RFC 8188 §3.2: two records of rs 25, key id "a1", the first record
    /// padded with one 0x00.
    #[test]
    fn rfc_8188_section_3_2_two_padded_records_decrypt() {
        let body = b64(
            "uNCkWiNYzKTnBN9ji3-qWAAAABkCYTHOG8chz_gnvgOqdGYovxyjuqRyJFjEDyoF1Fvkj6hQPdPHI51OEUKEpgz3SsLWIqS_uA",
        );
        assert_eq!(body.len(), 73);
        let ikm = b64("BO3ZVPxUlnLORbVGMpbT1Q");
        let (h, records) = Header::parse(&body).unwrap();
        assert_eq!((h.rs, h.keyid, records.len()), (25, &b"a1"[..], 50));
        let plain = open(&body, &LIMITS, |kid| {
            assert_eq!(kid, b"a1");
            Ok(vec![ikm.clone()])
        });
        assert_eq!(plain.unwrap(), b"I am the walrus");
    }

    fn seal_raw(plain: &[u8], ikm: &[u8], salt: [u8; 16], rs: u32, keyid: &[u8]) -> Vec<u8> {
        seal(plain, ikm, salt, rs, keyid).unwrap()
    }

    const MASTER: &[u8] = b"0123456789abcdef0123456789abcdef";
    const KEYID: &[u8] = b"phone-1:alice:1750000600";

    fn keys_of(master: &'static [u8]) -> impl FnOnce(&[u8]) -> Result<Vec<Ikm>, CodingError> {
        move |kid| Ok(vec![ikm(master, kid)])
    }

    fn enc(plain: &[u8], rs: u32) -> Vec<u8> {
        seal(plain, &ikm(MASTER, KEYID), [7; 16], rs, KEYID).unwrap()
    }

    #[test]
    fn malformed_shapes_are_named() {
        let good = enc(b"hello world", 4096);
        assert_eq!(
            open(&good, &LIMITS, keys_of(MASTER)).unwrap(),
            b"hello world"
        );
        assert_eq!(
            open(&good[..10], &LIMITS, keys_of(MASTER)),
            Err(CodingError::ShortHeader)
        );
        // key id announced longer than what follows
        let hdr_len = HEADER_FIXED_LEN + KEYID.len();
        assert_eq!(
            open(&good[..hdr_len - 1], &LIMITS, keys_of(MASTER)),
            Err(CodingError::ShortHeader)
        );
        // header only: no record
        assert_eq!(
            open(&good[..hdr_len], &LIMITS, keys_of(MASTER)),
            Err(CodingError::Truncated)
        );
        // a last record shorter than delimiter + tag
        assert_eq!(
            open(&good[..hdr_len + 16], &LIMITS, keys_of(MASTER)),
            Err(CodingError::Truncated)
        );
        // record size below 18
        let mut bad = good.clone();
        bad[16..20].copy_from_slice(&17u32.to_be_bytes());
        assert_eq!(
            open(&bad, &LIMITS, keys_of(MASTER)),
            Err(CodingError::RecordSize)
        );
        // above the configured maximum
        let small = Limits {
            max_record_size: 1024,
            max_records: 4,
        };
        assert_eq!(
            open(&good, &small, keys_of(MASTER)),
            Err(CodingError::RecordSize)
        );
        // too many records
        let many = enc(&[1u8; 100], 18);
        assert_eq!(
            open(&many, &small, keys_of(MASTER)),
            Err(CodingError::TooManyRecords)
        );
        // the wrong master secret
        assert_eq!(
            open(&good, &LIMITS, keys_of(b"another master secret, 32 bytes!")),
            Err(CodingError::Authentication)
        );
        // the caller refuses the key id
        assert_eq!(
            open(&good, &LIMITS, |_| Err::<Vec<Ikm>, _>(
                CodingError::KeyMismatch
            )),
            Err(CodingError::KeyMismatch)
        );
    }

    #[test]
    fn a_stream_cut_at_a_record_boundary_is_truncated_and_a_wrong_delimiter_is_padding() {
        // 3 records of rs 20 (3 data bytes each): cut after the second.
        let body = enc(b"abcdefghi", 20);
        let hdr_len = HEADER_FIXED_LEN + KEYID.len();
        assert_eq!(body.len(), hdr_len + 3 * 20);
        assert_eq!(
            open(&body[..hdr_len + 40], &LIMITS, keys_of(MASTER)),
            Err(CodingError::Truncated)
        );
        // A record sealed with delimiter 2 before the end, or with 3.
        let k = ContentKey::derive(&ikm(MASTER, KEYID), &[7; 16]);
        let (header, _) = Header::parse(&body).unwrap();
        for (delims, want) in [
            (vec![2u8, 2], CodingError::Padding),
            (vec![1, 3], CodingError::Padding),
            (vec![1, 0], CodingError::Padding),
        ] {
            let mut out = header.encode();
            for (seq, d) in delims.iter().enumerate() {
                let start = out.len();
                out.extend_from_slice(b"abc");
                out.push(*d);
                k.seal(seq as u64, &mut out, start);
            }
            assert_eq!(
                open(&out, &LIMITS, keys_of(MASTER)),
                Err(want),
                "{delims:?}"
            );
        }
        // Padding zeros after the delimiter are allowed.
        let mut out = header.encode();
        let start = out.len();
        out.extend_from_slice(b"ab\x02\x00");
        k.seal(0, &mut out, start);
        assert_eq!(open(&out, &LIMITS, keys_of(MASTER)).unwrap(), b"ab");
    }

    #[test]
    fn rotation_tries_every_candidate_and_the_encoder_length_is_exact() {
        let body = enc(b"rotate me", 64);
        let keys = |kid: &[u8]| Ok(vec![ikm(b"old", kid), ikm(MASTER, kid)]);
        assert_eq!(open(&body, &LIMITS, keys).unwrap(), b"rotate me");
        for (len, rs) in [
            (0usize, 18u32),
            (1, 18),
            (2, 18),
            (47, 64),
            (48, 64),
            (49, 64),
        ] {
            let b = enc(&vec![9u8; len], rs);
            assert_eq!(
                b.len() as u64,
                encrypted_len(len as u64, rs, KEYID.len()),
                "{len} {rs}"
            );
        }
    }

    fn chunked(plain: &[u8], rs: u32, cuts: &[usize]) -> (Vec<u8>, usize) {
        let mut e = Encoder::new(&ikm(MASTER, KEYID), [3; 16], rs, KEYID).unwrap();
        let mut out = Vec::new();
        let mut rest = plain;
        let mut max_held = 0;
        for c in cuts {
            let (a, b) = rest.split_at((*c).min(rest.len()));
            e.push(a, &mut out);
            max_held = max_held.max(e.held());
            rest = b;
        }
        e.push(rest, &mut out);
        max_held = max_held.max(e.held());
        e.finish(&mut out);
        (out, max_held)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Round trip for record sizes from 18 up, whatever the chunking;
        /// the output does not depend on how the plaintext arrived, and the
        /// encoder never holds more than one record's data.
        #[test]
        fn round_trip_any_record_size_any_chunking(
            plain in proptest::collection::vec(any::<u8>(), 0..600),
            rs in 18u32..300,
            cuts in proptest::collection::vec(0usize..200, 0..6),
        ) {
            let whole = seal(&plain, &ikm(MASTER, KEYID), [3; 16], rs, KEYID).unwrap();
            let (streamed, held) = chunked(&plain, rs, &cuts);
            prop_assert_eq!(&streamed, &whole);
            prop_assert!(held <= rs as usize - RECORD_OVERHEAD);
            prop_assert_eq!(whole.len() as u64, encrypted_len(plain.len() as u64, rs, KEYID.len()));
            prop_assert_eq!(open(&whole, &LIMITS, keys_of(MASTER)).unwrap(), plain);
        }

        /// Every proper prefix of a body is refused.
        #[test]
        fn every_truncation_is_refused(
            plain in proptest::collection::vec(any::<u8>(), 0..120),
            rs in 18u32..60,
        ) {
            let body = enc(&plain, rs);
            for cut in 0..body.len() {
                prop_assert!(open(&body[..cut], &LIMITS, keys_of(MASTER)).is_err(), "cut {}", cut);
            }
        }

        /// Every single-bit flip is refused, except in the record size
        /// field, which RFC 8188 does not authenticate: there a flip may
        /// still decrypt, but only ever to the same plaintext.
        #[test]
        fn every_bit_flip_is_refused_or_changes_nothing(
            plain in proptest::collection::vec(any::<u8>(), 0..80),
            rs in 18u32..60,
        ) {
            let body = enc(&plain, rs);
            for i in 0..body.len() * 8 {
                let mut b = body.clone();
                b[i / 8] ^= 1 << (i % 8);
                match open(&b, &LIMITS, keys_of(MASTER)) {
                    Err(_) => {}
                    Ok(p) => {
                        prop_assert!((SALT_LEN..SALT_LEN + 4).contains(&(i / 8)), "bit {}", i);
                        prop_assert_eq!(&p, &plain);
                    }
                }
            }
        }
    }

    /// The native build's backend (`ring`) against RustCrypto's: the same
    /// key, nonce and plaintext give byte-identical ciphertexts and tags,
    /// each opens the other's, and neither opens an altered record.
    #[cfg(all(feature = "native-aead", not(target_arch = "wasm32")))]
    mod backends {
        use super::super::aead::{Ring, RustCrypto};
        use super::super::*;
        use super::*;
        use aes_gcm::aead::consts::{U12, U16};
        use aes_gcm::aead::{AeadCore, AeadInPlace, KeyInit};

        trait Gcm: AeadCore<NonceSize = U12, TagSize = U16> + AeadInPlace {}
        impl<A: AeadCore<NonceSize = U12, TagSize = U16> + AeadInPlace> Gcm for A {}

        fn seal<A: Gcm>(a: &A, nonce: [u8; 12], buf: &mut [u8]) -> [u8; 16] {
            a.encrypt_in_place_detached(&nonce.into(), b"", buf)
                .unwrap()
                .into()
        }

        fn opens<A: Gcm>(a: &A, nonce: [u8; 12], buf: &mut [u8], tag: [u8; 16]) -> bool {
            a.decrypt_in_place_detached(&nonce.into(), b"", buf, &tag.into())
                .is_ok()
        }

        fn check(cek: [u8; 16], nonce: [u8; 12], plain: &[u8]) -> Result<(), TestCaseError> {
            let (r, c) = (Ring::new(&cek.into()), RustCrypto::new(&cek.into()));
            let (mut a, mut b) = (plain.to_vec(), plain.to_vec());
            let ta = seal(&r, nonce, &mut a);
            let tb = seal(&c, nonce, &mut b);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(ta, tb);
            // each opens the other's
            let mut x = a.clone();
            prop_assert!(opens(&c, nonce, &mut x, ta));
            prop_assert_eq!(&x, plain);
            let mut y = b.clone();
            prop_assert!(opens(&r, nonce, &mut y, tb));
            prop_assert_eq!(&y, plain);
            // an altered tag, byte or nonce opens with neither
            let mut bad_tag = ta;
            bad_tag[plain.len() % 16] ^= 1;
            prop_assert!(!opens(&r, nonce, &mut a.clone(), bad_tag));
            prop_assert!(!opens(&c, nonce, &mut a.clone(), bad_tag));
            if !a.is_empty() {
                let mut flipped = a.clone();
                flipped[plain.len() / 2] ^= 0x80;
                prop_assert!(!opens(&r, nonce, &mut flipped.clone(), ta));
                prop_assert!(!opens(&c, nonce, &mut flipped, ta));
            }
            let mut other = nonce;
            other[11] ^= 1;
            prop_assert!(!opens(&r, other, &mut a.clone(), ta));
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            #[test]
            fn ring_and_rustcrypto_agree_byte_for_byte(
                cek in any::<[u8; 16]>(),
                nonce in any::<[u8; 12]>(),
                plain in proptest::collection::vec(any::<u8>(), 0..5000),
            ) {
                check(cek, nonce, &plain)?;
            }
        }

        /// The codec runs on ring with this feature: RFC 8188's example
        /// (§3.1) opens with RustCrypto under the codec's derived key and
        /// nonce, and the codec (ring) seals it back byte for byte.
        #[test]
        fn the_native_codec_uses_ring_and_reproduces_rfc_8188() {
            assert_eq!(aead::BACKEND, "ring");
            let body =
                b64("I1BsxtFttlv3u_Oo94xnmwAAEAAA-NAVub2qFgBEuQKRapoZu-IxkIva3MEB1PD-ly8Thjg");
            let ikm = b64("yqdlZ-tYemfogSmv7Ws5PQ");
            let (h, records) = Header::parse(&body).unwrap();
            let k = ContentKey::derive(&ikm, &h.salt);
            let mut cek = [0u8; 16];
            Hkdf::<Sha256>::new(Some(&h.salt), &ikm)
                .expand(CEK_INFO, &mut cek)
                .unwrap();
            let (ct, tag) = records.split_at(records.len() - TAG_LEN);
            let mut buf = ct.to_vec();
            let nonce: [u8; 12] = k.nonce(0).into();
            assert!(opens(
                &RustCrypto::new(&cek.into()),
                nonce,
                &mut buf,
                tag.try_into().unwrap()
            ));
            assert_eq!(&buf, b"I am the walrus\x02");
            assert_eq!(seal_raw(b"I am the walrus", &ikm, h.salt, 4096, b""), body);
        }

        #[test]
        fn sixteen_kib_records_agree() {
            let plain: Vec<u8> = (0..16 * 1024 + 7).map(|i| (i % 253) as u8).collect();
            check([0x42; 16], [7; 12], &plain).unwrap();
        }
    }

    #[test]
    fn record_sizes_up_to_the_limit_round_trip() {
        let plain: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        for rs in [18u32, 19, 31, 32, 33, 4096, 65_536, 70_017, 1 << 20] {
            let body = enc(&plain, rs);
            let limits = Limits {
                max_record_size: 1 << 20,
                max_records: 1 << 20,
            };
            assert_eq!(
                open(&body, &limits, keys_of(MASTER)).unwrap(),
                plain,
                "rs {rs}"
            );
        }
    }
}
