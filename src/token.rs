//! Invitation tokens: 256 bits, URL-safe base64 (43 characters), and the short code a person
//! can type instead ([`ShortCode`], 50 bits, derived from the token's hash).
//!
//! A token is derived from a secret key and the invitation it belongs to ([`TokenKey::derive`],
//! HMAC-SHA256 over the account id, the attempt and the invitation's creation time), the way
//! Django derives its password-reset tokens. So the token of an invitation can be made again
//! after a crash, and a mail sent again carries the same working link as the first; only a new
//! attempt (the resend annotation, an address change, expiry) makes a new token. The key lives in
//! a Kubernetes Secret, not in the store: a copy of the store alone yields no token.
//!
//! Only the SHA-256 of a token is ever stored; the plaintext exists in memory between issuing and
//! mailing (and in the optional invitation Secret). The fingerprint shown in status is the first
//! 8 hex characters of the hash: enough to match a mail to its invitation, useless to an attacker.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Random bytes in a token (256 bits; the floor is 128).
const TOKEN_BYTES: usize = 32;
/// Longest token text we accept as input; anything longer is malformed, not unknown.
pub const MAX_TOKEN_LEN: usize = 128;

/// A freshly issued token. Its Debug output never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({})", self.hash().fingerprint())
    }
}

impl Token {
    /// Draw a new token from the OS CSPRNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes)?;
        Ok(Self(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// The text people paste or follow in a link.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash under which the store keeps it.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

/// The secret invitation tokens are derived from: 256 bits, from the OS CSPRNG or read from the
/// key Secret. Its Debug output never shows it.
#[derive(Clone)]
pub struct TokenKey([u8; KEY_BYTES]);

/// Bytes in a [`TokenKey`] (256 bits).
pub const KEY_BYTES: usize = 32;

/// What is wrong with key material read from outside.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not exactly [`KEY_BYTES`] bytes.
    #[error("the token key must be {KEY_BYTES} bytes, found {0}")]
    Length(usize),
    /// No randomness for a new key.
    #[error("no randomness available for a token key: {0}")]
    Random(String),
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(***)")
    }
}

impl TokenKey {
    /// A new key from the OS CSPRNG. Errors: no randomness ([`KeyError::Random`]).
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; KEY_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self(bytes))
    }

    /// A key from its bytes, as the key Secret holds them. Errors: not [`KEY_BYTES`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        <[u8; KEY_BYTES]>::try_from(bytes)
            .map(Self)
            .map_err(|_| KeyError::Length(bytes.len()))
    }

    /// The key's bytes, to store in the key Secret.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The token of one invitation: HMAC-SHA256 (RFC 2104) under this key of the account id,
    /// the attempt and the invitation's creation time in microseconds since the epoch (the
    /// precision the store keeps), each length-prefixed so that no two invitations share an
    /// input. The same invitation always gives the same token; another one, or another key, an
    /// unrelated one.
    pub fn derive(&self, user_id: &str, attempt: i32, created_at: jiff::Timestamp) -> Token {
        use hmac::{KeyInit, Mac};
        let mut mac =
            hmac::Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(b"usher invitation token v1");
        for part in [
            user_id.as_bytes(),
            &attempt.to_be_bytes(),
            &created_at.as_microsecond().to_be_bytes(),
        ] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        Token(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }
}

impl TokenKey {
    /// The short code of the invitation whose token hashes to `hash`: [`CODE_BITS`] bits of
    /// HMAC-SHA256 (RFC 2104) under this key of the hash, under a label of its own so that it
    /// shares nothing with a token. Derived from the hash, every invitation has one (a rotated or
    /// older random token too), it is the same in every copy of the mail, and a copy of the
    /// store alone (which holds the hash) yields none.
    pub fn short_code(&self, hash: &TokenHash) -> ShortCode {
        use hmac::{KeyInit, Mac};
        let mut mac =
            hmac::Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(b"usher short code v1");
        mac.update(hash.as_str().as_bytes());
        let out = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&out[..8]);
        ShortCode(u64::from_be_bytes(first) >> (64 - CODE_BITS))
    }
}

/// Bits in a [`ShortCode`]: 50, ten characters of Crockford base32.
pub const CODE_BITS: u32 = 50;
/// Characters in a [`ShortCode`], not counting the hyphen it is shown with.
pub const CODE_LEN: usize = (CODE_BITS / 5) as usize;

/// The short code a person can type instead of following the link: [`CODE_BITS`] bits, shown as
/// ten characters of Crockford base32 (no I, L, O or U) in two groups, `7K3QD-M9XTV`. It
/// redeems only together with the invited address, and is throttled per address (SECURITY.md
/// gives the arithmetic). Its Debug output never shows it.
#[derive(Clone, Copy)]
pub struct ShortCode(u64);

impl std::fmt::Debug for ShortCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShortCode(***)")
    }
}

impl PartialEq for ShortCode {
    /// Constant time: the comparison says nothing about how close a guess was.
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for ShortCode {}

impl ShortCode {
    /// The code as people see it: ten characters in two groups of five, `7K3QD-M9XTV`.
    pub fn expose(&self) -> String {
        let digits = crockford::encode(self.0);
        let padded = format!("{digits:0>CODE_LEN$}");
        format!("{}-{}", &padded[..CODE_LEN / 2], &padded[CODE_LEN / 2..])
    }

    /// Read a code as a person types it: case does not matter, hyphens and spaces are ignored,
    /// and I, L and O read as 1, 1 and 0 (Crockford). None when it is not ten such characters.
    pub fn parse(text: &str) -> Option<Self> {
        let compact: String = text
            .chars()
            .filter(|c| !matches!(c, '-' | ' ' | '\t'))
            .collect();
        if compact.chars().count() != CODE_LEN {
            return None;
        }
        crockford::decode(&compact).ok().map(Self)
    }
}

/// Whether `text` is shaped like a token we issue (URL-safe base64 of 32 bytes).
/// Malformed input is answered 400 without touching the store.
pub fn well_formed(text: &str) -> bool {
    text.len() == 43
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The SHA-256 of a token, hex encoded (64 characters).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenHash(String);

impl TokenHash {
    /// Hash a token's text.
    pub fn of(token: &str) -> Self {
        Self(hex::encode(Sha256::digest(token.as_bytes())))
    }

    /// A hash as stored (trusted to be 64 hex characters).
    pub fn from_stored(hex: String) -> Self {
        Self(hex)
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// First 8 hex characters, shown in status and logs.
    pub fn fingerprint(&self) -> String {
        self.0.chars().take(8).collect()
    }

    /// Compare with another hash in constant time.
    pub fn matches(&self, other: &TokenHash) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn tokens_carry_256_bits_and_are_url_safe() {
        let t = Token::generate().unwrap();
        assert!(well_formed(t.expose()), "{}", t.expose());
        let decoded = URL_SAFE_NO_PAD.decode(t.expose()).unwrap();
        assert_eq!(decoded.len() * 8, 256);
    }

    #[test]
    fn hash_is_sha256_hex_and_fingerprint_its_prefix() {
        // SHA-256("abc"), FIPS 180-2 test vector.
        let h = TokenHash::of("abc");
        assert_eq!(
            h.as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(h.fingerprint(), "ba7816bf");
        assert!(h.matches(&TokenHash::of("abc")));
        assert!(!h.matches(&TokenHash::of("abd")));
    }

    #[test]
    fn a_derived_token_is_the_same_for_its_invitation_only() {
        let key = TokenKey::generate().unwrap();
        let at: jiff::Timestamp = "2026-12-01T10:00:00.123456Z".parse().unwrap();
        let t = key.derive("u1", 1, at);
        assert!(well_formed(t.expose()), "{}", t.expose());
        assert_eq!(URL_SAFE_NO_PAD.decode(t.expose()).unwrap().len() * 8, 256);
        // Made again after a crash, from what the store keeps (microseconds): the same link.
        let stored = jiff::Timestamp::from_microsecond(at.as_microsecond()).unwrap();
        assert_eq!(key.derive("u1", 1, stored), t);
        // Anything else: another token.
        let others = [
            key.derive("u1", 2, at),
            key.derive("u2", 1, at),
            key.derive("u1", 1, at + jiff::SignedDuration::from_micros(1)),
            key.derive("u", 11, at),
            TokenKey::generate().unwrap().derive("u1", 1, at),
        ];
        let distinct: HashSet<_> = others.iter().map(|o| o.expose().to_string()).collect();
        assert_eq!(distinct.len(), others.len());
        assert!(!distinct.contains(t.expose()));
        // RFC 4231 test case 2 pins the primitive: HMAC-SHA256("Jefe", "what do ya want for
        // nothing?").
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_short_code_is_ten_typeable_characters_of_fifty_bits() {
        let key = TokenKey::generate().unwrap();
        let hash = TokenHash::of("some token");
        let code = key.short_code(&hash);
        let shown = code.expose();
        assert_eq!(shown.len(), CODE_LEN + 1, "{shown}");
        assert_eq!(&shown[5..6], "-");
        assert!(
            shown
                .chars()
                .filter(|c| *c != '-')
                .all(|c| "0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(c)),
            "{shown}"
        );
        // The same for every copy; another token, or another key, gives another one.
        assert_eq!(key.short_code(&hash), code);
        assert_ne!(key.short_code(&TokenHash::of("another token")), code);
        assert_ne!(TokenKey::generate().unwrap().short_code(&hash), code);
        assert_eq!(format!("{code:?}"), "ShortCode(***)");
        // Typed by a person: any case, with or without the hyphen or spaces, I/L/O for 1/1/0.
        let typed = shown.to_lowercase().replace('-', " ");
        assert_eq!(ShortCode::parse(&typed), Some(code));
        assert_eq!(ShortCode::parse(&shown.replace('-', "")), Some(code));
        let misread = shown.replace('1', "l").replace('0', "O");
        assert_eq!(ShortCode::parse(&misread), Some(code));
        // Not ten characters of the alphabet: not a code.
        for bad in [
            "",
            "ABCDE",
            "ABCDE-FGHJK-M",
            "ABCDE-FGHJU",
            "ÄBCDE-FGHJK",
            "ABCDE-FGHJ!",
        ] {
            assert_eq!(ShortCode::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn short_codes_spread_over_all_fifty_bits() {
        // Leading zeros are kept, so every code is ten characters, and the top and bottom bits
        // both vary: no bit of the fifty is lost to the encoding.
        let key = TokenKey::generate().unwrap();
        let (mut or, mut and) = (0u64, u64::MAX);
        for i in 0..2_000 {
            let code = key.short_code(&TokenHash::of(&i.to_string()));
            assert_eq!(code.expose().len(), CODE_LEN + 1);
            assert_eq!(ShortCode::parse(&code.expose()), Some(code));
            or |= code.0;
            and &= code.0;
        }
        assert_eq!(or, (1 << CODE_BITS) - 1);
        assert_eq!(and, 0);
        assert_eq!(ShortCode(0).expose(), "00000-00000");
        assert_eq!(ShortCode((1 << CODE_BITS) - 1).expose(), "ZZZZZ-ZZZZZ");
    }

    #[test]
    fn a_key_is_32_bytes_and_never_shown() {
        let key = TokenKey::generate().unwrap();
        assert_eq!(key.bytes().len(), KEY_BYTES);
        assert!(TokenKey::from_bytes(key.bytes()).is_ok());
        assert!(matches!(
            TokenKey::from_bytes(&[0; 16]),
            Err(KeyError::Length(16))
        ));
        assert_eq!(format!("{key:?}"), "TokenKey(***)");
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let t = Token::generate().unwrap();
        let shown = format!("{t:?}");
        assert!(!shown.contains(t.expose()));
        assert!(shown.contains(&t.hash().fingerprint()));
    }

    /// Bit and byte statistics of a stream of 32-byte draws.
    struct Tally {
        draws: usize,
        ones: [u32; TOKEN_BYTES * 8],
        bytes: [u64; 256],
    }

    impl Tally {
        fn new() -> Self {
            Self {
                draws: 0,
                ones: [0; TOKEN_BYTES * 8],
                bytes: [0; 256],
            }
        }

        fn add(&mut self, draw: &[u8]) {
            self.draws += 1;
            for (i, b) in draw.iter().enumerate() {
                self.bytes[usize::from(*b)] += 1;
                for bit in 0..8 {
                    self.ones[i * 8 + bit] += u32::from((b >> bit) & 1);
                }
            }
        }

        /// Per bit position, ones ~ Binomial(n, 1/2); the largest |z| over the positions.
        fn worst_bit_z(&self) -> (usize, f64) {
            let n = self.draws as f64;
            let sd = n.sqrt() / 2.0;
            self.ones
                .iter()
                .map(|&c| ((f64::from(c) - n / 2.0) / sd).abs())
                .enumerate()
                .fold(
                    (0, 0.0),
                    |worst, (i, z)| if z > worst.1 { (i, z) } else { worst },
                )
        }

        /// Pearson's chi-square of the byte values against uniform (255 degrees of freedom).
        fn byte_chi_square(&self) -> f64 {
            let expected = self.bytes.iter().sum::<u64>() as f64 / 256.0;
            self.bytes
                .iter()
                .map(|&c| (c as f64 - expected).powi(2) / expected)
                .sum()
        }
    }

    // Thresholds, each failed by a correct generator with probability below 1e-6, so the test
    // does not flake. Bits: 6 sd two-sided is p = 2.0e-9 per position, 5.1e-7 for all 256 (union
    // bound). Bytes: chi-square with 255 df has mean 255 and sd 22.6; its 1e-6 tails are about
    // 162 and 377 (Wilson-Hilferty), and 150..400 is looser still. The low tail matters: too
    // even a spread is a counter, not randomness.
    const MAX_BIT_Z: f64 = 6.0;
    const CHI_SQUARE_255_DF: std::ops::Range<f64> = 150.0..400.0;

    #[test]
    fn a_hundred_thousand_tokens_are_unique_and_of_full_entropy() {
        const N: usize = 100_000;
        let mut seen = HashSet::with_capacity(N);
        let mut tally = Tally::new();
        for _ in 0..N {
            let token = Token::generate().unwrap();
            let text = token.expose();
            assert!(well_formed(text), "{text}");
            let bytes = URL_SAFE_NO_PAD.decode(text).unwrap();
            assert!(bytes.len() * 8 >= 128, "{} bits", bytes.len() * 8);
            assert_eq!(bytes.len(), TOKEN_BYTES);
            // Only the hash is stored: it must not be, or contain, the secret.
            let hash = token.hash();
            assert_ne!(hash.as_str(), text);
            assert!(!hash.as_str().contains(text));
            tally.add(&bytes);
            assert!(seen.insert(bytes), "a token repeated: {text}");
        }
        let (bit, z) = tally.worst_bit_z();
        assert!(
            z < MAX_BIT_Z,
            "bit {bit} is biased: z = {z:.1} over {N} tokens"
        );
        let chi2 = tally.byte_chi_square();
        assert!(
            CHI_SQUARE_255_DF.contains(&chi2),
            "byte values are not uniform: chi-square {chi2:.1} (255 df)"
        );
    }

    /// The checks above prove something only if bad sources fail them.
    #[test]
    fn the_entropy_checks_catch_bad_sources() {
        let draws = |f: &dyn Fn(usize) -> [u8; TOKEN_BYTES]| {
            let mut tally = Tally::new();
            for i in 0..100_000 {
                tally.add(&f(i));
            }
            tally
        };
        // A counter spreads byte values perfectly evenly.
        let counter = draws(&|i| std::array::from_fn(|j| ((i * TOKEN_BYTES + j) % 256) as u8));
        assert!(!CHI_SQUARE_255_DF.contains(&counter.byte_chi_square()));
        // Real randomness with one bit stuck at zero (a masking bug).
        let stuck = draws(&|_| {
            let mut b = [0u8; TOKEN_BYTES];
            getrandom::fill(&mut b).unwrap();
            b[7] &= 0b1110_1111;
            b
        });
        assert_eq!(stuck.worst_bit_z().0, 7 * 8 + 4);
        assert!(stuck.worst_bit_z().1 >= MAX_BIT_Z);
        // A slightly biased bit: 51% ones is 6.3 sd at this sample size.
        let biased = draws(&|i| {
            let mut b = [0u8; TOKEN_BYTES];
            getrandom::fill(&mut b).unwrap();
            b[0] = (b[0] & !1) | u8::from(i % 100 < 51);
            b
        });
        assert!(biased.worst_bit_z().1 >= MAX_BIT_Z);
    }

    #[test]
    fn hash_comparison_looks_at_every_byte() {
        // `matches` is subtle's constant-time equality (no early exit); what a test can check
        // is that a difference anywhere, first or last character, is seen.
        let token = Token::generate().unwrap();
        let hash = token.hash();
        assert!(hash.matches(&TokenHash::of(token.expose())));
        let stored = hash.as_str().to_string();
        for at in [0, stored.len() / 2, stored.len() - 1] {
            let mut other = stored.clone().into_bytes();
            other[at] = if other[at] == b'0' { b'1' } else { b'0' };
            let other = TokenHash::from_stored(String::from_utf8(other).unwrap());
            assert!(!hash.matches(&other), "a difference at {at} went unseen");
        }
        assert!(!hash.matches(&TokenHash::from_stored(stored[..63].to_string())));
        assert!(!hash.matches(&TokenHash::from_stored(String::new())));
    }

    #[test]
    fn malformed_inputs_are_recognised() {
        assert!(!well_formed(""));
        assert!(!well_formed("short"));
        assert!(!well_formed(&"a".repeat(44)));
        assert!(!well_formed(&format!("{}+", "a".repeat(42))));
        assert!(well_formed(&"a".repeat(43)));
    }
}
