//! Browser mode (DESIGN §7): the refresh token travels in a cookie page scripts cannot
//! read, so a cross-site scripting bug cannot steal it.
//!
//! A client asks for it with `X-Token-Delivery: cookie` on login and refresh. The
//! token response then leaves out `refresh_token` and sets it as
//! `__Secure-refresh_token=…; Max-Age=<refresh lifetime>; Path=/auth; HttpOnly; Secure;
//! SameSite=Strict` (without the prefix only under `DEV_COOKIE_NAMES`), and refresh
//! reads it from there.
//!
//! CSRF: a cookie goes wherever the browser sends requests, so the cookie is read
//! only when the request carries that custom header, which a cross-origin page can
//! send only after a CORS preflight (Fetch standard §3.2.2) the edge refuses to
//! unlisted origins; a refresh carrying the cookie without the header is refused
//! before any lookup. And a cookie-mode request whose `Origin` is neither this
//! server's nor listed in `ALLOWED_ORIGINS` is refused: the edge applies that rule
//! in front, the origin again when reached directly (OWASP CSRF cheat sheet: a custom
//! header plus an Origin check; SameSite is defence in depth only, since a page of
//! another port is still the same site).

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use shared::origins::{AllowedOrigins, is_loopback_host};

use super::TokenResponse;
use crate::device::{cookie_values, read_cookie};
use crate::error::{ApiError, ApiResult};

/// The request header choosing browser mode.
pub const DELIVERY_HEADER: &str = "x-token-delivery";

/// How the refresh token is handed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// In the JSON body, both ways (services, CLIs, mobile apps).
    Json,
    /// In an `HttpOnly` cookie (browsers).
    Cookie,
}

/// The delivery a request asks for: `X-Token-Delivery: cookie`, or JSON without the
/// header. Any other value, or the header twice, is a 400: a client that misspells it
/// must not silently get its refresh token in a body its page scripts can read.
pub fn delivery(headers: &HeaderMap) -> ApiResult<Delivery> {
    let mut values = headers.get_all(DELIVERY_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(Delivery::Json);
    };
    if values.next().is_some() {
        return Err(ApiError::BadRequest(
            "more than one X-Token-Delivery header",
        ));
    }
    match value.to_str().map(str::trim) {
        Ok(v) if v.eq_ignore_ascii_case("cookie") => Ok(Delivery::Cookie),
        _ => Err(ApiError::BadRequest(
            "X-Token-Delivery must be \"cookie\" (or absent for JSON)",
        )),
    }
}

/// The cookie's name: `__Secure-` makes browsers refuse it unless set over HTTPS with
/// `Secure` (RFC 6265bis §4.1.3.1); `__Host-` would need `Path=/`, and the token must
/// go to `/auth` only. `dev_names`: without the prefix, for `http://127.0.0.1`.
pub fn name(dev_names: bool) -> &'static str {
    if dev_names {
        "refresh_token"
    } else {
        "__Secure-refresh_token"
    }
}

/// The `Set-Cookie` value holding `token` for `max_age_secs`.
pub fn set(name: &str, token: &str, max_age_secs: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={token}; Max-Age={max_age_secs}; Path=/auth; HttpOnly; Secure; SameSite=Strict"
    ))
    .expect("cookie names and base64url tokens are valid header text")
}

/// The `Set-Cookie` value that removes the cookie (same name, path and attributes,
/// RFC 6265bis §5.6: a cookie is replaced only by one of the same name, domain and path).
pub fn clear(name: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}=; Max-Age=0; Path=/auth; HttpOnly; Secure; SameSite=Strict"
    ))
    .expect("cookie names are valid header text")
}

/// The token response as `delivery` wants it: in browser mode the refresh token moves
/// from the body to the cookie `name`, living as long as the token does.
pub fn deliver(mut tokens: TokenResponse, delivery: Delivery, name: &str) -> Response {
    let in_cookie = match delivery {
        Delivery::Json => None,
        Delivery::Cookie => tokens.refresh_token.take(),
    };
    let max_age = tokens.refresh_token_expires_in;
    let mut response = tokens.into_response();
    if let Some(token) = in_cookie {
        response
            .headers_mut()
            .append(header::SET_COOKIE, set(name, &token, max_age));
    }
    response
}

/// `response` with the cookie `name` cleared.
pub fn cleared(mut response: Response, name: &str) -> Response {
    response
        .headers_mut()
        .append(header::SET_COOKIE, clear(name));
    response
}

/// The refresh token a request's cookie holds, if sent once.
pub fn read<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    read_cookie(headers, name).filter(|v| !v.is_empty())
}

/// How many cookies named `name` the request carries. More than one means someone
/// planted another (a sibling subdomain can set one with `Domain=` and the same
/// path, which the `__Secure-` prefix does not stop): refresh refuses such a request
/// (400) without clearing, since a clear would remove the real, host-only cookie and
/// leave the planted one.
pub fn count(headers: &HeaderMap, name: &str) -> usize {
    cookie_values(headers, name).count()
}

/// Whether a request that ends the session should also clear the cookie: it is in
/// browser mode, or it carries the cookie (once or more).
pub fn should_clear(headers: &HeaderMap, name: &str) -> bool {
    headers.contains_key(DELIVERY_HEADER) || count(headers, name) > 0
}

/// The `Origin` rule for a browser-mode request (DESIGN §7). `via_edge`: the request
/// came with the edge's valid proof, and the edge, which owns CORS and knows its own
/// public origin, already applied the rule. Reached directly, the server's own origin
/// is `https://` and the request's `Host` (behind a TLS terminator the origin cannot
/// see the scheme), or `http://` and a loopback `Host` in development.
pub fn check_origin(
    headers: &HeaderMap,
    allowed: &AllowedOrigins,
    via_edge: bool,
) -> ApiResult<()> {
    if via_edge {
        return Ok(());
    }
    let mut values = headers.get_all(header::ORIGIN).iter();
    let Some(origin) = values.next() else {
        return Ok(());
    };
    let refused = ApiError::Forbidden("origin not allowed");
    if values.next().is_some() {
        return Err(refused);
    }
    let origin = origin
        .to_str()
        .map_err(|_| ApiError::Forbidden("origin not allowed"))?;
    // The scheme is not in the request: `https`, or `http` only on a loopback host
    // (development), so a plain-http page of the same host is never "own".
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let own = match host {
        Some(host) if origin == format!("http://{host}") && is_loopback_host(host) => {
            origin.to_string()
        }
        Some(host) => format!("https://{host}"),
        None => String::new(),
    };
    if allowed.admits(Some(origin), &own) {
        Ok(())
    } else {
        Err(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_delivery_is_json_without_the_header_cookie_with_it_and_an_error_otherwise() {
        assert_eq!(delivery(&headers(&[])).unwrap(), Delivery::Json);
        assert_eq!(
            delivery(&headers(&[(DELIVERY_HEADER, "cookie")])).unwrap(),
            Delivery::Cookie
        );
        assert_eq!(
            delivery(&headers(&[(DELIVERY_HEADER, "Cookie")])).unwrap(),
            Delivery::Cookie
        );
        for bad in [
            &[(DELIVERY_HEADER, "cookies")][..],
            &[(DELIVERY_HEADER, "")],
            &[(DELIVERY_HEADER, "json")],
            &[(DELIVERY_HEADER, "cookie"), (DELIVERY_HEADER, "cookie")],
        ] {
            assert!(
                matches!(delivery(&headers(bad)), Err(ApiError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_cookie_is_locked_down_and_cleared_with_the_same_path() {
        assert_eq!(name(false), "__Secure-refresh_token");
        assert_eq!(name(true), "refresh_token");
        assert_eq!(
            set("__Secure-refresh_token", "abc", 600),
            "__Secure-refresh_token=abc; Max-Age=600; Path=/auth; HttpOnly; Secure; SameSite=Strict"
        );
        assert_eq!(
            clear("refresh_token"),
            "refresh_token=; Max-Age=0; Path=/auth; HttpOnly; Secure; SameSite=Strict"
        );
    }

    #[test]
    fn the_cookie_is_read_by_exact_name_once_and_never_empty() {
        let both = headers(&[("cookie", "refresh_token=r1; device=d")]);
        assert_eq!(read(&both, "refresh_token"), Some("r1"));
        assert_eq!(read(&both, "__Secure-refresh_token"), None);
        assert_eq!(
            read(&headers(&[("cookie", "refresh_token=")]), "refresh_token"),
            None
        );
        let twice = headers(&[("cookie", "refresh_token=a"), ("cookie", "refresh_token=b")]);
        assert_eq!(read(&twice, "refresh_token"), None);
        assert!(should_clear(&twice, "refresh_token"));
        assert_eq!(count(&twice, "refresh_token"), 2);
        assert_eq!(count(&both, "refresh_token"), 1);
        assert_eq!(count(&both, "token"), 0);
        assert!(should_clear(&headers(&[(DELIVERY_HEADER, "cookie")]), "x"));
        assert!(!should_clear(
            &headers(&[("cookie", "device=d")]),
            "refresh_token"
        ));
    }

    #[test]
    fn reached_directly_only_its_own_or_a_listed_origin_passes() {
        let allowed = AllowedOrigins::parse("https://app.example").unwrap();
        let check = |pairs: &[(&'static str, &'static str)], via_edge| {
            check_origin(&headers(pairs), &allowed, via_edge).is_ok()
        };
        let host = ("host", "auth.example");
        assert!(check(&[host], false), "no Origin: not a browser");
        assert!(check(&[host, ("origin", "https://auth.example")], false));
        assert!(check(&[host, ("origin", "https://app.example")], false));
        assert!(!check(&[host, ("origin", "https://evil.example")], false));
        assert!(
            !check(&[host, ("origin", "https://auth.example:8443")], false),
            "another port is another origin"
        );
        assert!(!check(&[host, ("origin", "null")], false));
        assert!(
            !check(&[host, ("origin", "http://auth.example")], false),
            "a plain-http page of the same host is not this server"
        );
        let local = ("host", "127.0.0.1:8080");
        assert!(
            check(&[local, ("origin", "http://127.0.0.1:8080")], false),
            "development"
        );
        assert!(
            !check(&[("origin", "https://auth.example")], false),
            "no Host"
        );
        assert!(!check(
            &[
                host,
                ("origin", "https://app.example"),
                ("origin", "https://app.example")
            ],
            false
        ));
        assert!(
            check(&[host, ("origin", "https://evil.example")], true),
            "the edge decided"
        );
    }
}
