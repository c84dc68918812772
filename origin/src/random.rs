//! Randomness from the operating system's CSPRNG.

/// `N` bytes from the OS generator. Panics only if the OS has no working generator,
/// in which case no secret can be made safely and stopping is right.
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("the operating system's random generator failed");
    buf
}

/// `N` random bytes as lowercase hex: an id that only has to be unique.
pub fn hex<const N: usize>() -> String {
    bytes::<N>().iter().map(|b| format!("{b:02x}")).collect()
}
