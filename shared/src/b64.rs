//! Unpadded base64url (RFC 7515 §2, RFC 4648 §5), strict on input.

use alloc::string::String;
use alloc::vec::Vec;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::Error;

pub(crate) fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes unpadded base64url. Padding, the standard alphabet's `+` and `/`,
/// whitespace and non-zero trailing bits are all errors, so each byte string has
/// exactly one accepted encoding and a flipped bit can never decode to the same bytes.
pub(crate) fn decode(text: &[u8]) -> Result<Vec<u8>, Error> {
    URL_SAFE_NO_PAD.decode(text).map_err(|_| Error::Base64)
}

/// Decodes into exactly `N` bytes.
pub(crate) fn decode_array<const N: usize>(text: &[u8]) -> Result<[u8; N], Error> {
    decode(text)?.try_into().map_err(|_| Error::Base64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_canonical_encodings_are_rejected() {
        assert_eq!(decode(b"AQ").unwrap(), [1]);
        assert_eq!(decode(b"AR"), Err(Error::Base64), "trailing bits set");
        assert_eq!(decode(b"AQ=="), Err(Error::Base64), "padding");
        assert_eq!(decode(b"+/8"), Err(Error::Base64), "standard alphabet");
        assert_eq!(decode(b"A Q"), Err(Error::Base64), "whitespace");
        assert_eq!(decode(b"A"), Err(Error::Base64), "impossible length");
    }
}
