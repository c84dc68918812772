//! The REST front against Upstash's documented protocol (docs: "REST API"), errors
//! included, with a real Redis behind it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

struct Front {
    child: Child,
    base: String,
    token: String,
    prefix: String,
    http: reqwest::Client,
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(redis_url: &str) -> Front {
    let port = free_port();
    let token = format!("tok{}", std::process::id() as u64 * 1000 + port as u64);
    let child = Command::new(env!("CARGO_BIN_EXE_redis-rest"))
        .env("REST_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("REDIS_URL", redis_url)
        .env("REST_TOKEN", &token)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-rest");
    let front = Front {
        child,
        base: format!("http://127.0.0.1:{port}"),
        token,
        prefix: format!("rest-test-{port}:"),
        http: reqwest::Client::new(),
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return front;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-rest did not start");
}

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

impl Front {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.expect("front reachable");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}")),
        )
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            path,
            Some(&self.token.clone()),
            Some(body.to_string()),
        )
        .await
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

#[tokio::test]
async fn a_command_array_runs_and_replies_with_its_result() {
    let front = start(&redis_url()).await;
    let (k, missing) = (front.key("a"), front.key("missing"));
    assert_eq!(
        front.post("/", json!(["SET", k, "value", "EX", 100])).await,
        (200, json!({"result": "OK"}))
    );
    assert_eq!(
        front.post("/", json!(["GET", k])).await,
        (200, json!({"result": "value"}))
    );
    assert_eq!(
        front.post("/", json!(["MGET", k, missing])).await,
        (200, json!({"result": ["value", null]}))
    );
    assert_eq!(
        front.post("/", json!(["INCR", front.key("n")])).await,
        (200, json!({"result": 1}))
    );
    assert_eq!(
        front.post("/", json!(["DEL", k, front.key("n")])).await,
        (200, json!({"result": 2}))
    );
}

#[tokio::test]
async fn the_path_style_appends_the_body_and_query_parameters() {
    let front = start(&redis_url()).await;
    let k = front.key("p");
    let token = front.token.clone();
    assert_eq!(
        front
            .send(
                reqwest::Method::GET,
                &format!("/set/{k}/bar"),
                Some(&token),
                None
            )
            .await,
        (200, json!({"result": "OK"}))
    );
    assert_eq!(
        front
            .send(
                reqwest::Method::GET,
                &format!("/get/{k}"),
                Some(&token),
                None
            )
            .await,
        (200, json!({"result": "bar"}))
    );
    let body = r#"{"json":"value"}"#.to_string();
    assert_eq!(
        front
            .send(
                reqwest::Method::POST,
                &format!("/set/{k}?EX=100"),
                Some(&token),
                Some(body.clone())
            )
            .await
            .0,
        200
    );
    assert_eq!(
        front.post("/", json!(["GET", k])).await,
        (200, json!({"result": body}))
    );
    let (_, ttl) = front.post("/", json!(["TTL", k])).await;
    assert!(
        (1..=100).contains(&ttl["result"].as_i64().unwrap()),
        "{ttl}"
    );
    front.post("/", json!(["DEL", k])).await;
}

/// The edge's session read (edge/src/store.rs, `mget_url`): `GET /mget/k1/k2/k3`,
/// each key percent-encoded, so a key's braces, colons or slash stay one argument.
#[tokio::test]
async fn the_path_style_decodes_each_segment_into_one_argument() {
    let front = start(&redis_url()).await;
    let tagged = front.key("sess:{p0042}:u:s");
    let slashed = front.key("a/b%c");
    front.post("/", json!(["SET", tagged, "record"])).await;
    front.post("/", json!(["SET", slashed, "other"])).await;
    let encode = |key: &str| {
        key.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let path = format!(
        "/mget/{}/{}/{}",
        encode(&tagged),
        encode(&slashed),
        encode(&front.key("missing"))
    );
    let token = front.token.clone();
    assert_eq!(
        front
            .send(reqwest::Method::GET, &path, Some(&token), None)
            .await,
        (200, json!({"result": ["record", "other", null]}))
    );
    front.post("/", json!(["DEL", tagged, slashed])).await;
}

#[tokio::test]
async fn a_pipeline_replies_per_command_errors_included() {
    let front = start(&redis_url()).await;
    let (a, b) = (front.key("p1"), front.key("p2"));
    let (status, body) = front
        .post(
            "/pipeline",
            json!([
                ["SET", a, "valuex"],
                ["SETEX", b, 13, "valuez"],
                ["INCR", a],
                ["GET", b],
                ["DEL", a, b]
            ]),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body[0], json!({"result": "OK"}));
    assert_eq!(body[1], json!({"result": "OK"}));
    assert!(
        body[2]["error"]
            .as_str()
            .unwrap()
            .starts_with("ERR value is not an integer"),
        "{body}"
    );
    assert_eq!(body[3], json!({"result": "valuez"}));
    assert_eq!(body[4], json!({"result": 2}));
}

#[tokio::test]
async fn a_transaction_runs_atomically_and_a_bad_one_is_discarded() {
    let front = start(&redis_url()).await;
    let a = front.key("t1");
    let (status, body) = front
        .post(
            "/multi-exec",
            json!([["SET", a, "1"], ["INCR", a], ["DEL", a]]),
        )
        .await;
    assert_eq!(
        (status, body),
        (200, json!([{"result": "OK"}, {"result": 2}, {"result": 1}]))
    );
    let (status, body) = front
        .post("/multi-exec", json!([["SET", a, "1"], ["NOSUCHCOMMAND"]]))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].is_string());
    assert_eq!(
        front.post("/", json!(["EXISTS", a])).await,
        (200, json!({"result": 0})),
        "discarded as a whole"
    );
}

#[tokio::test]
async fn failed_commands_and_malformed_requests_are_400_with_an_error() {
    let front = start(&redis_url()).await;
    let (status, body) = front.post("/", json!(["GET"])).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error": "ERR wrong number of arguments for 'get' command"})
    );
    for bad in [
        json!([]),
        json!({"cmd": "GET"}),
        json!(["GET", {"k": 1}]),
        json!(["GET", null]),
        json!("GET"),
    ] {
        let (status, body) = front.post("/", bad.clone()).await;
        assert_eq!(status, 400, "{bad}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    let token = front.token.clone();
    let (status, body) = front
        .send(
            reqwest::Method::POST,
            "/",
            Some(&token),
            Some("not json".into()),
        )
        .await;
    assert_eq!((status, body["error"].is_string()), (400, true));
    let (status, body) = front.post("/pipeline", json!([["GET", "k"], "GET"])).await;
    assert_eq!((status, body["error"].is_string()), (400, true));
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_401_json_on_every_endpoint() {
    let front = start(&redis_url()).await;
    for path in ["/", "/pipeline", "/multi-exec", "/get/x"] {
        for token in [None, Some("wrong")] {
            let (status, body) = front
                .send(
                    reqwest::Method::POST,
                    path,
                    token,
                    Some(r#"[["GET","x"]]"#.into()),
                )
                .await;
            assert_eq!(status, 401, "{path} {token:?}");
            assert!(
                body["error"].as_str().unwrap().contains("WRONGPASS"),
                "{body}"
            );
        }
    }
    let (status, _) = front
        .send(
            reqwest::Method::GET,
            &format!("/get/x?_token={}", front.token),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "token as a query parameter");
}

#[tokio::test]
async fn only_head_get_post_and_put_are_allowed() {
    let front = start(&redis_url()).await;
    let token = front.token.clone();
    let (status, body) = front
        .send(reqwest::Method::DELETE, "/get/x", Some(&token), None)
        .await;
    assert_eq!((status, body["error"].is_string()), (405, true));
}

#[tokio::test]
async fn base64_encoding_applies_to_strings_but_not_ok() {
    let front = start(&redis_url()).await;
    let k = front.key("b64");
    let send = |cmd: Value| {
        front
            .http
            .post(&front.base)
            .bearer_auth(&front.token)
            .header("Upstash-Encoding", "base64")
            .body(cmd.to_string())
            .send()
    };
    let set: Value = send(json!(["SET", k, "bar"]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(set, json!({"result": "OK"}));
    let get: Value = send(json!(["GET", k])).await.unwrap().json().await.unwrap();
    assert_eq!(get, json!({"result": "YmFy"}));
    front.post("/", json!(["DEL", k])).await;
}

#[tokio::test]
async fn an_unreachable_redis_is_503_not_a_command_error() {
    let front = start("redis://127.0.0.1:1").await;
    let (status, body) = front.post("/", json!(["GET", "x"])).await;
    assert_eq!((status, body["error"].is_string()), (503, true));
    let (status, _) = front.post("/pipeline", json!([["GET", "x"]])).await;
    assert_eq!(status, 503);
}
