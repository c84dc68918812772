//! Arbitrary request bodies through the origin's own body extractors (JSON for
//! register, login and refresh; form for revoke and introspect), under each content
//! type a client might send: nothing may panic, and every refusal is a client error
//! (400, 413 or 415), never a 500.
#![no_main]

use libfuzzer_sys::fuzz_target;
use origin::error::ApiError;

const CONTENT_TYPES: [Option<&[u8]>; 5] = [
    Some(b"application/json"),
    Some(b"application/json; charset=utf-8"),
    Some(b"application/x-www-form-urlencoded"),
    Some(b"text/plain"),
    None,
];

fuzz_target!(|data: &[u8]| {
    // The first byte picks the content type, the rest is the body: libFuzzer's
    // mutations then explore each extractor's accept and reject paths.
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[pick as usize % CONTENT_TYPES.len()];
    let parsed = origin::auth::bodies::parse_bodies(content_type, body);
    for refusal in [
        parsed.credentials.as_ref().err(),
        parsed.refresh.as_ref().err(),
        parsed.token_form.as_ref().err(),
    ]
    .into_iter()
    .flatten()
    {
        assert!(
            matches!(
                refusal,
                ApiError::BadRequest(_) | ApiError::TooLarge | ApiError::UnsupportedMediaType(_)
            ),
            "a body was refused with a non-client error: {refusal:?}"
        );
    }
    // What a handler does first with the fields it got: still pure, still no panic.
    if let Ok(credentials) = &parsed.credentials {
        let _ = origin::auth::register::normalize_username(&credentials.username);
    }
});
