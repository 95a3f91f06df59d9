//! Just enough OpenPGP (RFC 4880) to know which key a repository's key
//! file holds: ASCII armor, packet framing, and v4 fingerprints
//! (SHA-1 of 0x99 ‖ 2-byte length ‖ public-key packet body).

use base64::Engine;
use sha1::{Digest, Sha1};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("ASCII armor: {0}")]
    Armor(String),
    #[error("not an OpenPGP key: {0}")]
    Packet(String),
    #[error("OpenPGP v{0} keys are not supported (v4 only)")]
    Version(u8),
    #[error("holds no public key")]
    NoKey,
    #[error("holds a secret key: export the public key only (gpg --export --armor FPR)")]
    Secret,
}

/// Decodes ASCII armor (every `BEGIN PGP PUBLIC KEY BLOCK` in the text,
/// checking each CRC-24), or returns binary input unchanged.
pub fn dearmor(data: &[u8]) -> Result<Vec<u8>, KeyError> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(data.to_vec());
    };
    if !text.contains("-----BEGIN PGP") {
        return Ok(data.to_vec());
    }
    let mut out = Vec::new();
    let mut lines = text.lines().map(str::trim_end);
    let mut blocks = 0;
    while let Some(line) = lines.next() {
        if !line.starts_with("-----BEGIN PGP") {
            continue;
        }
        if line.contains("PRIVATE KEY") {
            return Err(KeyError::Secret);
        }
        if line != "-----BEGIN PGP PUBLIC KEY BLOCK-----" {
            return Err(KeyError::Armor(format!("unexpected block `{line}`")));
        }
        blocks += 1;
        let mut b64 = String::new();
        let mut crc: Option<String> = None;
        let mut in_headers = true;
        let mut ended = false;
        for l in lines.by_ref() {
            if l.starts_with("-----END PGP PUBLIC KEY BLOCK-----") {
                ended = true;
                break;
            }
            if in_headers {
                if l.is_empty() {
                    in_headers = false;
                    continue;
                }
                // Headers are `Key: value`; a block without them starts with data.
                if l.contains(": ") {
                    continue;
                }
                in_headers = false;
            }
            if let Some(c) = l.strip_prefix('=').filter(|c| c.len() == 4) {
                crc = Some(c.to_owned());
            } else {
                b64.push_str(l.trim());
            }
        }
        if !ended {
            return Err(KeyError::Armor("no END line".into()));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| KeyError::Armor(format!("bad base64: {e}")))?;
        if let Some(c) = crc {
            let want = base64::engine::general_purpose::STANDARD
                .decode(c.as_bytes())
                .map_err(|e| KeyError::Armor(format!("bad checksum line: {e}")))?;
            let got = crc24(&bytes).to_be_bytes();
            if want[..] != got[1..] {
                return Err(KeyError::Armor(
                    "checksum mismatch: the key file is damaged".into(),
                ));
            }
        }
        out.extend(bytes);
    }
    if blocks == 0 {
        return Err(KeyError::Armor("no PUBLIC KEY BLOCK".into()));
    }
    Ok(out)
}

/// RFC 4880 6.1 CRC-24.
fn crc24(data: &[u8]) -> u32 {
    let mut crc: u32 = 0xB704CE;
    for &b in data {
        crc ^= (b as u32) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x1000000 != 0 {
                crc ^= 0x1864CFB;
            }
        }
    }
    crc & 0xFFFFFF
}

/// One packet: its tag and body.
struct Packet<'a> {
    tag: u8,
    body: &'a [u8],
}

/// Splits binary OpenPGP data into packets (old and new header formats).
fn packets(data: &[u8]) -> Result<Vec<Packet<'_>>, KeyError> {
    let mut out = Vec::new();
    let mut i = 0;
    let short = || KeyError::Packet("truncated packet".into());
    while i < data.len() {
        let hdr = data[i];
        if hdr & 0x80 == 0 {
            return Err(KeyError::Packet(format!("byte {i} is not a packet header")));
        }
        i += 1;
        let (tag, len) = if hdr & 0x40 != 0 {
            let tag = hdr & 0x3f;
            let o1 = *data.get(i).ok_or_else(short)? as usize;
            i += 1;
            let len = match o1 {
                0..=191 => o1,
                192..=223 => {
                    let o2 = *data.get(i).ok_or_else(short)? as usize;
                    i += 1;
                    ((o1 - 192) << 8) + o2 + 192
                }
                255 => {
                    let b = data.get(i..i + 4).ok_or_else(short)?;
                    i += 4;
                    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
                }
                _ => {
                    return Err(KeyError::Packet(
                        "partial body lengths are not used by keys".into(),
                    ))
                }
            };
            (tag, len)
        } else {
            let tag = (hdr >> 2) & 0x0f;
            let len = match hdr & 3 {
                0 => {
                    let b = *data.get(i).ok_or_else(short)? as usize;
                    i += 1;
                    b
                }
                1 => {
                    let b = data.get(i..i + 2).ok_or_else(short)?;
                    i += 2;
                    u16::from_be_bytes([b[0], b[1]]) as usize
                }
                2 => {
                    let b = data.get(i..i + 4).ok_or_else(short)?;
                    i += 4;
                    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
                }
                _ => data.len() - i,
            };
            (tag, len)
        };
        let body = data.get(i..i + len).ok_or_else(short)?;
        i += len;
        out.push(Packet { tag, body });
    }
    Ok(out)
}

const TAG_SECRET_KEY: u8 = 5;
const TAG_PUBLIC_KEY: u8 = 6;

/// The v4 fingerprints (40 uppercase hex digits) of the primary keys in
/// `data` (armored or binary), in order.
pub fn primary_fingerprints(data: &[u8]) -> Result<Vec<String>, KeyError> {
    let bin = dearmor(data)?;
    let mut out = Vec::new();
    for p in packets(&bin)? {
        match p.tag {
            TAG_SECRET_KEY => return Err(KeyError::Secret),
            TAG_PUBLIC_KEY => {
                let version = *p.body.first().ok_or(KeyError::NoKey)?;
                if version != 4 {
                    return Err(KeyError::Version(version));
                }
                let len = u16::try_from(p.body.len())
                    .map_err(|_| KeyError::Packet("public key packet too long".into()))?;
                let mut h = Sha1::new();
                h.update([0x99]);
                h.update(len.to_be_bytes());
                h.update(p.body);
                out.push(hex::encode_upper(h.finalize()));
            }
            _ => {}
        }
    }
    if out.is_empty() {
        return Err(KeyError::NoKey);
    }
    Ok(out)
}

/// A fingerprint as written by people (`2596 A99E …`, lowercase, `0x…`) in
/// the canonical form, or None when it is not 40 hex digits.
pub fn normalize_fingerprint(f: &str) -> Option<String> {
    let f: String = f
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    (f.len() == 40 && f.chars().all(|c| c.is_ascii_hexdigit())).then(|| f.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v4 ed25519 key generated once with gpg (`nodeforge test repository
    /// key`); gpg --with-colons reports the fingerprint below.
    const FIXTURE: &str = include_str!("../../tests/fixtures/test-repo-key.asc");
    const FIXTURE_FPR: &str = include_str!("../../tests/fixtures/test-repo-key.fpr");

    #[test]
    fn fixture_key_fingerprint_matches_gpg() {
        let fprs = primary_fingerprints(FIXTURE.as_bytes()).unwrap();
        assert_eq!(fprs, vec![FIXTURE_FPR.trim().to_owned()]);
        // The binary form gives the same.
        let bin = dearmor(FIXTURE.as_bytes()).unwrap();
        assert_eq!(primary_fingerprints(&bin).unwrap(), fprs);
    }

    #[test]
    fn new_format_packet_headers_give_the_same_fingerprint() {
        let bin = dearmor(FIXTURE.as_bytes()).unwrap();
        // gpg writes the key packet with an old-format header (tag 6,
        // one-byte length): rewrite it as a new-format header (0xC6).
        assert_eq!(bin[0] & 0xC0, 0x80, "old format expected");
        assert_eq!((bin[0] >> 2) & 0x0f, TAG_PUBLIC_KEY);
        let len = bin[1] as usize;
        assert!(len < 192);
        let mut new = vec![0xC0 | TAG_PUBLIC_KEY, len as u8];
        new.extend_from_slice(&bin[2..]);
        assert_eq!(
            primary_fingerprints(&new).unwrap(),
            vec![FIXTURE_FPR.trim().to_owned()]
        );
        // And with a five-octet length.
        let mut five = vec![0xC0 | TAG_PUBLIC_KEY, 255, 0, 0, 0, len as u8];
        five.extend_from_slice(&bin[2..]);
        assert_eq!(
            primary_fingerprints(&five).unwrap(),
            primary_fingerprints(&new).unwrap()
        );
        // A truncated packet is an error, not a panic.
        assert_eq!(
            primary_fingerprints(&new[..10]).unwrap_err(),
            KeyError::Packet("truncated packet".into())
        );
    }

    #[test]
    fn damaged_armor_is_refused() {
        let damaged = FIXTURE.replacen("m", "n", 1);
        assert!(
            matches!(
                primary_fingerprints(damaged.as_bytes()),
                Err(KeyError::Armor(_))
            ),
            "{:?}",
            primary_fingerprints(damaged.as_bytes())
        );
        assert_eq!(
            primary_fingerprints(b"just text").unwrap_err(),
            KeyError::Packet("byte 0 is not a packet header".into())
        );
    }

    #[test]
    fn fingerprints_are_normalized() {
        assert_eq!(
            normalize_fingerprint("2596 a99e AAB3 3821 893C  0A79 458C A832 957F 5868").as_deref(),
            Some("2596A99EAAB33821893C0A79458CA832957F5868")
        );
        assert_eq!(normalize_fingerprint("2596A99E"), None);
    }

    #[test]
    fn crc24_known_value() {
        // RFC 4880's CRC-24 of the empty string is its initial value.
        assert_eq!(crc24(b""), 0xB704CE);
    }
}
