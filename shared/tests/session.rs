//! The session decision the edge makes from what the store returned.

mod common;

use common::*;
use shared::Error;
use shared::session::{SessionRecord, SessionState, Stored, session_state};

/// A record of a session authenticated at `auth_time` (Unix seconds) and ending at `exp`.
fn record(auth_time: u64, exp: u64) -> SessionRecord {
    SessionRecord {
        ver: 4,
        sub: claims().sub,
        scope: "profile:read".into(),
        auth_time_ms: auth_time * 1000,
        exp,
    }
}

fn ms(seconds: u64) -> String {
    (seconds * 1000).to_string()
}

fn state(record: Option<&str>, not_before: Option<&str>) -> Result<SessionState, Error> {
    let claims = verify(&token()).unwrap();
    session_state(
        &claims,
        record.map(str::as_bytes),
        not_before.map(str::as_bytes),
        NOW,
    )
}

vectors! {
    fn a_present_record_for_the_same_user_is_active_with_its_scope() {
        let rec = record(NOW - 3600, NOW + 86_400);
        assert_eq!(state(Some(&rec.encode()), None), Ok(SessionState::Active(rec)));
    }

    fn an_absent_record_means_the_session_is_not_active() {
        assert_eq!(state(None, None), Ok(SessionState::Absent));
        assert_eq!(state(None, Some(&ms(NOW))), Ok(SessionState::Absent));
    }

    fn a_record_of_another_user_is_revoked() {
        let mut rec = record(NOW - 3600, NOW + 86_400);
        rec.sub = "someone-else".into();
        assert_eq!(state(Some(&rec.encode()), None), Ok(SessionState::Revoked));
    }

    fn a_session_past_its_absolute_lifetime_is_revoked() {
        assert_eq!(state(Some(&record(NOW - 3600, NOW).encode()), None), Ok(SessionState::Revoked));
    }

    fn logout_everywhere_after_the_session_started_revokes_it() {
        let rec = record(NOW - 3600, NOW + 86_400).encode();
        assert_eq!(state(Some(&rec), Some(&ms(NOW - 10))), Ok(SessionState::Revoked));
    }

    fn logout_everywhere_in_the_same_millisecond_as_the_login_revokes_it() {
        let rec = record(NOW - 3600, NOW + 86_400);
        let same = rec.auth_time_ms.to_string();
        assert_eq!(state(Some(&rec.encode()), Some(&same)), Ok(SessionState::Revoked));
    }

    fn a_login_one_millisecond_after_logout_everywhere_is_active() {
        let rec = record(NOW - 3600, NOW + 86_400);
        let before = (rec.auth_time_ms - 1).to_string();
        assert_eq!(state(Some(&rec.encode()), Some(&before)), Ok(SessionState::Active(rec)));
    }

    fn logout_everywhere_before_the_session_started_leaves_it_active() {
        let rec = record(NOW - 100, NOW + 86_400);
        let not_before = ms(NOW - 200);
        assert_eq!(state(Some(&rec.encode()), Some(&not_before)), Ok(SessionState::Active(rec)));
    }

    fn an_undecodable_store_value_is_an_error_never_active() {
        let good = record(NOW - 3600, NOW + 86_400).encode();
        let bad_records = [
            "",
            "null",
            "{}",
            "[]",
            r#"{"v":1,"sub":"u","scope":"","auth_time_ms":1,"exp":2}"#,
            r#"{"v":3,"ver":1,"sub":"u","scope":"","auth_time_ms":1,"exp":2}"#,
            &good.replace("\"v\":2", "\"v\":2,\"v\":2"),
        ];
        for bad in bad_records {
            assert_eq!(state(Some(bad), None), Err(Error::Record), "{bad}");
        }
        for bad in ["", "-1", "1.5", "soon", "99999999999999999999999"] {
            assert_eq!(state(Some(&good), Some(bad)), Err(Error::Record), "{bad}");
            assert_eq!(state(None, Some(bad)), Err(Error::Record), "{bad} with no record");
        }
    }

    fn key_prefixes_that_would_move_the_cluster_hash_tag_are_refused() {
        assert!(shared::session::is_key_prefix("auth:") && shared::session::is_key_prefix(""));
        for bad in ["a{", "}", "a b", "a\n"] {
            assert!(!shared::session::is_key_prefix(bad), "{bad:?}");
        }
    }

    fn a_record_round_trips_and_escapes_its_strings() {
        let rec = SessionRecord { ver: 1, sub: "u-1".into(), scope: "a:b c!".into(), auth_time_ms: 1, exp: 2 };
        assert_eq!(Stored::decode(rec.encode().as_bytes()), Ok(Stored::Active(rec)));
        let hostile = SessionRecord { ver: 1, sub: "u\",\"sub\":\"admin".into(), scope: "".into(), auth_time_ms: 1, exp: 2 };
        assert_eq!(Stored::decode(hostile.encode().as_bytes()), Err(Error::Record), "not an identifier, but never injected");
        let tombstone = SessionRecord::tombstone(3, "u\",\"revoked\":false");
        assert_eq!(Stored::decode(tombstone.as_bytes()), Err(Error::Record), "never injected either");
    }

    fn a_tombstone_revokes_the_session_whatever_the_not_before() {
        let tombstone = SessionRecord::tombstone(5, &claims().sub);
        assert_eq!(state(Some(&tombstone), None), Ok(SessionState::Revoked));
        assert_eq!(state(Some(&tombstone), Some(&ms(NOW - 99_999))), Ok(SessionState::Revoked));
    }
}
