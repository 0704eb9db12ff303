//! Invitation tokens: 256 random bits from the operating system's CSPRNG, URL-safe base64.
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
    fn ten_thousand_tokens_are_distinct() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(Token::generate().unwrap().expose().to_string()));
        }
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
    fn debug_never_prints_the_secret() {
        let t = Token::generate().unwrap();
        let shown = format!("{t:?}");
        assert!(!shown.contains(t.expose()));
        assert!(shown.contains(&t.hash().fingerprint()));
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
