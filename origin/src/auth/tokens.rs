//! Refresh tokens: 256 random bits, stored only as a SHA-256 hash.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A refresh token's secret. Its `Debug` prints nothing of it.
pub struct RefreshToken([u8; 32]);

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshToken(..)")
    }
}

impl RefreshToken {
    /// 256 bits from the OS CSPRNG (DESIGN.md §2).
    pub fn generate() -> Self {
        RefreshToken(crate::random::bytes())
    }

    /// Reads a token as clients send it: exactly 43 base64url characters.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 43 {
            return None;
        }
        URL_SAFE_NO_PAD
            .decode(text)
            .ok()?
            .try_into()
            .ok()
            .map(RefreshToken)
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// What Postgres stores. A fast hash is enough: the input has 256 bits of entropy,
    /// so there is nothing to brute-force.
    pub fn hash(&self) -> Vec<u8> {
        hmac_sha256::Hash::hash(&self.0).to_vec()
    }

    /// A one-time pad only the holder of this token can compute.
    fn pad(&self) -> [u8; 32] {
        let mut h = hmac_sha256::Hash::new();
        h.update(b"edge-auth refresh successor seal v1");
        h.update(self.0);
        h.finalize()
    }

    /// Seals `successor` under this token, so that only someone presenting this token
    /// again can recover it (the grace-window retry). The stored value reveals nothing
    /// without this token, which Postgres never holds.
    pub fn seal(&self, successor: &RefreshToken) -> Vec<u8> {
        self.pad()
            .iter()
            .zip(successor.0)
            .map(|(p, s)| p ^ s)
            .collect()
    }

    pub fn unseal(&self, sealed: &[u8]) -> Option<RefreshToken> {
        let sealed: [u8; 32] = sealed.try_into().ok()?;
        let mut out = [0u8; 32];
        for (o, (p, s)) in out.iter_mut().zip(self.pad().iter().zip(sealed)) {
            *o = p ^ s;
        }
        Some(RefreshToken(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_through_its_text() {
        let token = RefreshToken::generate();
        let text = token.encode();
        assert_eq!(text.len(), 43);
        assert_eq!(RefreshToken::parse(&text).unwrap().hash(), token.hash());
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        for bad in [
            "",
            "short",
            &"A".repeat(44),
            &format!("{}=", "A".repeat(42)),
            &"+".repeat(43),
            &"A".repeat(42),
        ] {
            assert!(RefreshToken::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn only_the_parent_unseals_its_successor() {
        let (parent, child, stranger) = (
            RefreshToken::generate(),
            RefreshToken::generate(),
            RefreshToken::generate(),
        );
        let sealed = parent.seal(&child);
        assert_ne!(sealed, child.0.to_vec(), "sealed is not the child");
        assert_eq!(parent.unseal(&sealed).unwrap().hash(), child.hash());
        assert_ne!(stranger.unseal(&sealed).unwrap().hash(), child.hash());
        assert!(parent.unseal(&sealed[..31]).is_none());
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let token = RefreshToken::generate();
        assert_eq!(format!("{token:?}"), "RefreshToken(..)");
    }
}
