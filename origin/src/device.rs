//! Remembered devices: what keeps lock-out from being a weapon.
//!
//! Per-account throttling lets anyone lock an account by guessing wrong from
//! anywhere. So a successful login also sets a cookie that names the device and
//! the account, MAC'd by the origin (the "device cookie" of OWASP's guidance on
//! slowing online guessing). A login that presents a valid one for the account it
//! names is throttled in a bucket of that device's own, with the account's limits:
//! not an exemption (a stolen laptop still gets 5 free guesses, then delays), but
//! the guesses of everyone else, who hold no such cookie, cannot lock it.
//!
//! Why a device and not "an address the account recently succeeded from": addresses
//! are shared (carrier-grade NAT puts thousands of people behind one) and change
//! (phones), so an attacker on the victim's network would share the victim's bucket
//! and could lock it again, while the victim on a new network would have none. A
//! cookie is bound to the one browser that logged in and cannot be forged.
//!
//! The cookie is `HttpOnly; Secure; SameSite=Strict; Path=/auth/login`: only the
//! login endpoint ever sees it. It holds a random 128-bit device id and an
//! HMAC-SHA256 over the account and that id, keyed with a secret derived from the
//! signing key ([`crate::keys::Keys::device`]): no state on the server.

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The cookie's name (with `DEV_COOKIE_NAMES`: without the `__Secure-` prefix).
pub fn cookie_name(dev_names: bool) -> &'static str {
    if dev_names {
        "device"
    } else {
        "__Secure-device"
    }
}

/// How long a device is remembered: a year (renewed at each login from it).
pub const MAX_AGE_SECS: u64 = 365 * 86_400;

fn mac(key: &[u8; 32], account_id: &str, device_id: &str) -> [u8; 32] {
    let mut mac = hmac_sha256::HMAC::new(key);
    mac.update(b"edge-auth device v1\n");
    mac.update(account_id.as_bytes());
    mac.update(b"\n");
    mac.update(device_id.as_bytes());
    mac.finalize()
}

/// A cookie value for `account_id` (the throttle's id of the account): a fresh
/// device id, or `device_id` when the login came from a remembered device.
pub fn token(key: &[u8; 32], account_id: &str, device_id: Option<&str>) -> String {
    let id = match device_id {
        Some(id) => id.to_string(),
        None => URL_SAFE_NO_PAD.encode(crate::random::bytes::<16>()),
    };
    format!("{id}.{}", URL_SAFE_NO_PAD.encode(mac(key, account_id, &id)))
}

/// The device id of a cookie value, if one of `keys` made it for `account_id`.
pub fn verify(keys: &[[u8; 32]], account_id: &str, token: &str) -> Option<String> {
    let (id, given) = token.split_once('.')?;
    if id.len() != 22 || URL_SAFE_NO_PAD.decode(id).ok()?.len() != 16 {
        return None;
    }
    let given = URL_SAFE_NO_PAD.decode(given).ok()?;
    keys.iter()
        .any(|key| shared::proof::constant_time_eq(&mac(key, account_id, id), &given))
        .then(|| id.to_string())
}

/// The values of every cookie named `name` in the request, in order.
pub fn cookie_values<'h>(headers: &'h HeaderMap, name: &str) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// The value of cookie `name` in the request, if sent once.
pub fn read_cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let mut found = cookie_values(headers, name);
    let value = found.next()?;
    // Two cookies of one name (one set for a parent path, say): trust neither.
    found.next().is_none().then_some(value)
}

/// The `Set-Cookie` value that remembers the device.
pub fn set_cookie(name: &str, token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={token}; Max-Age={MAX_AGE_SECS}; Path=/auth/login; HttpOnly; Secure; SameSite=Strict"
    ))
    .expect("cookie names and base64url values are valid header text")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn a_cookie_verifies_for_its_account_and_key_only() {
        let cookie = token(&KEY, "acct-a", None);
        let id = verify(&[KEY], "acct-a", &cookie).expect("valid");
        assert_eq!(id.len(), 22);
        assert_eq!(verify(&[KEY], "acct-b", &cookie), None, "another account");
        assert_eq!(verify(&[[8; 32]], "acct-a", &cookie), None, "another key");
        assert_eq!(
            verify(&[[8; 32], KEY], "acct-a", &cookie),
            Some(id.clone()),
            "a retired key"
        );
        assert_eq!(
            token(&KEY, "acct-a", Some(&id)),
            cookie,
            "renewed, same device"
        );
    }

    #[test]
    fn forged_or_malformed_cookies_name_no_device() {
        let cookie = token(&KEY, "acct", None);
        let (id, mac) = cookie.split_once('.').unwrap();
        let other_id = URL_SAFE_NO_PAD.encode([1u8; 16]);
        for bad in [
            "",
            ".",
            "abc",
            &format!("{other_id}.{mac}"),
            &format!("{id}.{}", URL_SAFE_NO_PAD.encode([0u8; 32])),
            &format!("{id}x.{mac}"),
            &format!("{id}.{mac}="),
        ] {
            assert_eq!(verify(&[KEY], "acct", bad), None, "{bad}");
        }
    }

    #[test]
    fn the_cookie_is_read_once_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; device=xyz; other=2"),
        );
        assert_eq!(read_cookie(&headers, "device"), Some("xyz"));
        assert_eq!(read_cookie(&headers, "dev"), None);
        headers.append(header::COOKIE, HeaderValue::from_static("device=again"));
        assert_eq!(read_cookie(&headers, "device"), None, "two of one name");
    }

    #[test]
    fn the_set_cookie_value_is_locked_down() {
        let value = set_cookie("__Secure-device", "t");
        let text = value.to_str().unwrap();
        for part in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/auth/login",
            "Max-Age=31536000",
        ] {
            assert!(text.contains(part), "{text}");
        }
    }
}
