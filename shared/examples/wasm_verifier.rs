//! The smallest useful verifier built from `shared`, compiled to Wasm to measure what
//! token verification costs in bytes. Not shipped: `scripts/wasm-size` builds it and
//! prints its size; the edge worker carries the same code plus its I/O.
//!
//! Exports a buffer to write into, `set_keys(len)` (a JWK set) and
//! `verify(len, now) -> u32` (1 = valid, 0 = refused).

use shared::{KeySet, Validator};
use std::cell::RefCell;

thread_local! {
    static BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; 8192]);
    static KEYS: RefCell<KeySet> = RefCell::new(KeySet::default());
}

/// Address of the 8 KiB input buffer the host writes the JWK set or the token into.
#[unsafe(no_mangle)]
pub extern "C" fn buffer() -> *mut u8 {
    BUFFER.with(|b| b.borrow_mut().as_mut_ptr())
}

fn input(len: usize) -> Vec<u8> {
    BUFFER.with(|b| b.borrow()[..len.min(8192)].to_vec())
}

/// Loads the JWK set written to the buffer; returns whether it was accepted.
#[unsafe(no_mangle)]
pub extern "C" fn set_keys(len: usize) -> u32 {
    match KeySet::from_jwks(&input(len)) {
        Ok(keys) => {
            KEYS.with(|k| *k.borrow_mut() = keys);
            1
        }
        Err(_) => 0,
    }
}

/// Verifies the token written to the buffer at Unix time `now`.
#[unsafe(no_mangle)]
pub extern "C" fn verify(len: usize, now: u64) -> u32 {
    let validator = Validator::new("https://auth.example", "api");
    KEYS.with(|keys| validator.verify(&input(len), &keys.borrow(), now).is_ok() as u32)
}
