//! The component Spin would run for history — `history.wasm` composed with
//! `spin_adapter.wasm` — run in our own wasmtime host against a running
//! gateway's internal store API, answers exactly as the gateway's own REST
//! endpoint does, page after page, both ways, for both members.
//!
//! The host here gives the composition what Spin gives it: WASI, outbound
//! HTTP (plain HTTP to the gateway) and `fermyon:spin/variables`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use switchboard_e2e::{Options, Server};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

mod spin_variables {
    // The interface as Spin 3.x declares it (fermyon:spin@2.0.0, variables.wit).
    wasmtime::component::bindgen!({
        inline: "
            package fermyon:spin@2.0.0;
            interface variables {
                variant error {
                    invalid-name(string),
                    undefined(string),
                    provider(string),
                    other(string),
                }
                get: func(name: string) -> result<string, error>;
            }
            world variables-host {
                import variables;
            }
        ",
        world: "variables-host",
    });
}

use spin_variables::fermyon::spin::variables;

/// A token the gateway accepts for its store API (32 bytes or more).
const STORE_TOKEN: &str = "spin-adapter-test-token-0123456789abcdef";

/// Per-request state: what Spin would give the composed component.
struct SpinLike {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: PlainHttp,
    table: ResourceTable,
    variables: HashMap<String, String>,
}

impl WasiView for SpinLike {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for SpinLike {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl variables::Host for SpinLike {
    fn get(&mut self, name: String) -> Result<String, variables::Error> {
        self.variables
            .get(&name)
            .cloned()
            .ok_or(variables::Error::Undefined(name))
    }
}

/// Outbound HTTP without TLS, whole bodies (the store API's answers are small).
struct PlainHttp;

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<(), wasmtime_wasi_http::Error>> + Send>,
)>;

async fn send_plain(request: http::Request<WasiBody>) -> SendResult {
    use wasmtime_wasi_http::Error;
    let (mut parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let authority = parts
        .uri
        .authority()
        .ok_or(Error::HttpRequestUriInvalid)?
        .to_string();
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(Error::Connect)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(Error::Hyper)?;
    tokio::spawn(connection);
    // Origin form on the wire: the authority travels in the Host header.
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = path.parse().map_err(|_| Error::HttpRequestUriInvalid)?;
    let response = sender
        .send_request(http::Request::from_parts(parts, Full::new(body)))
        .await
        .map_err(Error::Hyper)?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(Error::Hyper)?.to_bytes();
    let body = Full::new(body)
        .map_err(|never: std::convert::Infallible| -> Error { match never {} })
        .boxed_unsync();
    Ok((
        http::Response::from_parts(parts, body),
        Box::new(async { Ok(()) }),
    ))
}

impl wasmtime_wasi_http::WasiHttpHooks for PlainHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<
            dyn Future<Output = wasmtime_wasi_http::Result<(), wasmtime_wasi_http::Error>> + Send,
        >,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        Box::new(send_plain(request))
    }
}

/// The composed history component, ready to serve requests.
struct SpinHistory {
    pre: ProxyPre<SpinLike>,
    variables: HashMap<String, String>,
}

impl SpinHistory {
    fn new(
        composed: &[u8],
        store_api_url: &str,
        token: &str,
        jwt_secret: &str,
    ) -> anyhow::Result<Self> {
        let engine = Engine::new(&Config::new())?;
        let component = Component::new(&engine, composed)?;
        let mut linker = Linker::<SpinLike>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        variables::add_to_linker::<SpinLike, HasSelf<SpinLike>>(&mut linker, |s| s)?;
        let pre = ProxyPre::new(linker.instantiate_pre(&component)?)?;
        let variables = HashMap::from([
            (
                spin_adapter::core::URL_VARIABLE.to_owned(),
                store_api_url.to_owned(),
            ),
            (
                spin_adapter::core::TOKEN_VARIABLE.to_owned(),
                token.to_owned(),
            ),
            (
                spin_adapter::core::CALLER_TOKEN_SECRET_VARIABLE.to_owned(),
                jwt_secret.to_owned(),
            ),
        ]);
        Ok(Self { pre, variables })
    }

    /// `GET path_and_query` with the client's bearer `token`; the status and JSON body.
    async fn get(&self, path_and_query: &str, token: &str) -> anyhow::Result<(u16, Value)> {
        self.get_with(
            path_and_query,
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
    }

    /// `GET path_and_query` with exactly these request headers.
    async fn get_with(
        &self,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, Value)> {
        let mut store = Store::new(
            self.pre.engine(),
            SpinLike {
                wasi: WasiCtx::builder().inherit_stderr().build(),
                http: WasiHttpCtx::new(),
                hooks: PlainHttp,
                table: ResourceTable::new(),
                variables: self.variables.clone(),
            },
        );
        let mut request = http::Request::get(format!("http://spin.test{path_and_query}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::new()).map_err(
            |never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} },
        ))?;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)?;
        let out = store.data_mut().http().new_response_outparam(sender)?;
        let pre = self.pre.clone();
        let task = tokio::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
        });
        let response = match receiver.await {
            Ok(response) => response.map_err(|code| anyhow::anyhow!("error code {code:?}"))?,
            Err(_) => {
                let outcome = task.await?;
                anyhow::bail!("no response: {outcome:?}");
            }
        };
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|code| anyhow::anyhow!("reading the body: {code:?}"))?
            .to_bytes();
        task.await??;
        let body = serde_json::from_slice(&body)
            .with_context(|| format!("a JSON body: {}", String::from_utf8_lossy(&body)))?;
        Ok((status, body))
    }
}

/// Pages of `chat` as `user`, following nextCursor from `first` (`cursor=` backwards or `after=` forwards).
async fn page_chain(
    mut get: impl AsyncFnMut(String) -> (u16, Value),
    chat: &str,
    query: &str,
    step: &str,
) -> Vec<(u16, Value)> {
    let mut pages = Vec::new();
    let mut query = query.to_owned();
    loop {
        let (status, page) = get(format!("/api/v1/chats/{chat}/messages?{query}")).await;
        let next = page["nextCursor"].as_str().map(str::to_owned);
        pages.push((status, page));
        match next {
            Some(cursor) if pages.len() < 20 => query = format!("{step}={cursor}&limit=7"),
            _ => return pages,
        }
    }
}

/// An embedded gateway with the store API on, answering to `STORE_TOKEN`.
async fn gateway_with_store_api() -> Server {
    Server::start_with(
        Options::default()
            .embedded()
            .arg("--store-api-token")
            .arg(STORE_TOKEN),
    )
    .await
}

/// history + spin-adapter, run in wasmtime against the gateway's store API, serves the same pages as the gateway's /api/v1/chats/{id}/messages.
#[tokio::test]
async fn composed_history_pages_like_the_gateway() -> anyhow::Result<()> {
    let composed =
        tokio::task::spawn_blocking(|| switchboard_spin_tests::compose("history")).await??;
    let server = gateway_with_store_api().await;

    // A chat with history and receipts: 17 messages from alice, 3 from bob, bob has read up to the 10th.
    let chat = server
        .create_chat("alice", json!({"members": ["bob"]}))
        .await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let mut ids = Vec::new();
    for i in 0..17 {
        ids.push(
            alice
                .send_id(&chat, &format!("a{i}"), &format!("a{i}"))
                .await,
        );
    }
    for i in 0..3 {
        bob.send_id(&chat, &format!("b{i}"), &format!("b{i}")).await;
    }
    bob.send_json(json!({"type": "ack", "chatId": chat, "messageId": ids[9], "status": "read"}))
        .await;
    // The sender hears of the read receipt once it is stored.
    alice
        .recv_until(|f| f["type"] == "ack" && f["status"] == "read")
        .await;

    let secret = server.secret().expect("a known JWT secret");
    let spin = SpinHistory::new(&composed, &server.base, STORE_TOKEN, secret)?;
    for user in ["alice", "bob"] {
        for (first, step) in [("limit=7", "cursor"), ("after=0&limit=7", "after")] {
            let native = page_chain(
                async |path: String| server.get(&path, user).await,
                &chat,
                first,
                step,
            )
            .await;
            let on_spin = page_chain(
                async |path: String| match spin.get(&path, &server.token(user)).await {
                    Ok(answer) => answer,
                    Err(e) => panic!("composed history failed on {path}: {e:#}"),
                },
                &chat,
                first,
                step,
            )
            .await;
            assert_eq!(native.len(), 3, "20 messages in pages of 7: {native:?}");
            assert!(
                native.iter().all(|(status, _)| *status == 200),
                "{native:?}"
            );
            assert_eq!(on_spin, native, "{user} {first}");
        }
    }
    // Message info and refusals come out the same too.
    for (path, user) in [
        (
            format!("/api/v1/chats/{chat}/messages/{}/receipts", ids[3]),
            "alice",
        ),
        (format!("/api/v1/chats/{chat}/messages"), "mallory"),
        (format!("/api/v1/chats/{chat}/messages?limit=0"), "alice"),
        ("/api/v1/chats/g:nope/messages".to_owned(), "alice"),
    ] {
        let native = server.get(&path, user).await;
        assert_eq!(
            spin.get(&path, &server.token(user)).await?,
            native,
            "{path} as {user}"
        );
    }

    // Nobody in front of the components on Spin: they check tokens
    // themselves. Claiming a user by header, an expired token, one signed
    // with another secret, or none at all gets 401, as from the gateway.
    let path = format!("/api/v1/chats/{chat}/messages");
    let expired = server.token_expiring("alice", -5);
    let foreign = switchboard_e2e::sign_token("alice", 3600, "another secret entirely");
    let claim = (chat_core::http::USER_HEADER, "alice".to_owned());
    let bearer = |token: &str| ("authorization", format!("Bearer {token}"));
    for case in [
        vec![claim.clone()],
        vec![claim.clone(), bearer("not-a-token")],
        vec![bearer(&expired)],
        vec![bearer(&foreign)],
        vec![],
    ] {
        let headers: Vec<(&str, &str)> = case.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (status, body) = spin.get_with(&path, &headers).await?;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthorized")),
            "{headers:?}"
        );
    }
    let (status, _) = server
        .request_with_auth(
            reqwest::Method::GET,
            &path,
            Some(&format!("Bearer {expired}")),
            None,
        )
        .await;
    assert_eq!(status, 401, "the gateway refuses the same expired token");
    Ok(())
}

/// Through the adapter, a wrong token is a 500 (the store API refuses it) and a gateway that is gone is a 503.
#[tokio::test]
async fn composed_history_fails_closed() -> anyhow::Result<()> {
    let composed =
        tokio::task::spawn_blocking(|| switchboard_spin_tests::compose("history")).await??;
    let server = gateway_with_store_api().await;
    let chat = server
        .create_chat("alice", json!({"members": ["bob"]}))
        .await;
    let path = format!("/api/v1/chats/{chat}/messages");

    let secret = server.secret().expect("a known JWT secret");
    let alice = server.token("alice");
    let wrong = SpinHistory::new(
        &composed,
        &server.base,
        &STORE_TOKEN.replace('0', "1"),
        secret,
    )?;
    let (status, body) = wrong.get(&path, &alice).await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (500, Some("internal")),
        "{body}"
    );

    let right = SpinHistory::new(&composed, &server.base, STORE_TOKEN, secret)?;
    assert_eq!(right.get(&path, &alice).await?.0, 200);

    let port = switchboard_e2e::free_port();
    let gone = SpinHistory::new(
        &composed,
        &format!("http://127.0.0.1:{port}"),
        STORE_TOKEN,
        secret,
    )?;
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(30), gone.get(&path, &alice)).await??;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    Ok(())
}

/// The store API is off without a token, and with one it refuses requests without it or with another.
#[tokio::test]
async fn store_api_is_off_by_default_and_authenticated() -> anyhow::Result<()> {
    let path = chat_core::store_api::Call::Settings.path();
    let plain = Server::start_with(Options::default().embedded()).await;
    let (status, _) = plain
        .request_with_auth(
            reqwest::Method::POST,
            &path,
            Some(&format!("Bearer {STORE_TOKEN}")),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 404, "no store API unless configured");

    let server = gateway_with_store_api().await;
    for auth in [
        None,
        Some("Bearer not-the-token".to_owned()),
        Some(STORE_TOKEN.to_owned()),
    ] {
        let (status, _) = server
            .request_with_auth(
                reqwest::Method::POST,
                &path,
                auth.as_deref(),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 401, "{auth:?}");
    }
    // A client's JWT is not a store API token either.
    let user_token = format!("Bearer {}", server.token("alice"));
    let (status, _) = server
        .request_with_auth(
            reqwest::Method::POST,
            &path,
            Some(&user_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 401);
    let (status, settings) = server
        .request_with_auth(
            reqwest::Method::POST,
            &path,
            Some(&format!("Bearer {STORE_TOKEN}")),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(settings["ok"]["maxContentBytes"], 4096, "{settings}");
    Ok(())
}

/// Every call of the store API over real HTTP, and each way a request can be
/// refused: what the adapter relies on, and what an operator would see.
#[tokio::test]
async fn store_api_serves_each_call_and_refuses_bad_requests() -> anyhow::Result<()> {
    use chat_core::store_api::Call;
    let server = gateway_with_store_api().await;
    let base = &server.gateway_bases()[0];
    let http = reqwest::Client::new();
    let post = |call: Call, body: String| {
        http.post(format!("{base}{}", call.path()))
            .bearer_auth(STORE_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let ok = |answer: Value| -> Value {
        assert!(answer.get("ok").is_some(), "an ok answer: {answer}");
        answer["ok"].clone()
    };

    // Chats: create, read back, list per user, change members.
    let chat = json!({"id": "g:store-api", "kind": "group", "name": "ops",
        "members": ["alice", "bob"], "admins": ["alice"], "createdAt": 1});
    let created: Value = post(Call::CreateChat, json!({"chat": chat}).to_string())
        .await?
        .json()
        .await?;
    assert_eq!(ok(created)[1], true, "newly created");
    let got: Value = post(Call::GetChat, json!({"chat": "g:store-api"}).to_string())
        .await?
        .json()
        .await?;
    assert_eq!(ok(got)["members"], json!(["alice", "bob"]));
    let listed: Value = post(Call::ChatsOf, json!({"user": "bob"}).to_string())
        .await?
        .json()
        .await?;
    assert_eq!(ok(listed)[0]["id"], "g:store-api");
    let member: Value = post(
        Call::IsMember,
        json!({"chat": "g:store-api", "user": "carol"}).to_string(),
    )
    .await?
    .json()
    .await?;
    assert_eq!(ok(member), false);
    let changed: Value = post(
        Call::UpdateMembers,
        json!({"chat": "g:store-api", "expectedMembers": ["alice", "bob"],
            "members": ["alice", "bob", "carol"], "admins": ["alice"]})
        .to_string(),
    )
    .await?
    .json()
    .await?;
    assert_eq!(ok(changed)["members"], json!(["alice", "bob", "carol"]));
    // A stale expectation is a conflict answer, not an HTTP failure.
    let stale: Value = post(
        Call::UpdateMembers,
        json!({"chat": "g:store-api", "expectedMembers": ["alice", "bob"],
            "members": ["alice"], "admins": ["alice"]})
        .to_string(),
    )
    .await?
    .json()
    .await?;
    assert_eq!(stale["err"]["kind"], "conflict", "{stale}");

    // Ids increase; presence answers for each user asked.
    let first: Value = post(Call::NextId, "{}".into()).await?.json().await?;
    let second: Value = post(Call::NextId, "{}".into()).await?.json().await?;
    assert!(ok(second).as_u64() > ok(first).as_u64());
    let presence: Value = post(
        Call::QueryPresence,
        json!({"users": ["alice", "nobody"]}).to_string(),
    )
    .await?
    .json()
    .await?;
    assert_eq!(ok(presence).as_array().map(Vec::len), Some(2));

    // Refusals: each with its own status.
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(post(Call::GetChat, "{not json".into()).await?), 400);
    assert_eq!(
        status(post(Call::GetChat, json!({"chat": "x", "evil": 1}).to_string()).await?),
        400,
        "unknown argument fields are refused"
    );
    assert_eq!(
        status(
            post(
                Call::PageAfter,
                json!({"chat": "g:store-api", "after": 0, "limit": 5000}).to_string()
            )
            .await?
        ),
        400,
        "pages are bounded"
    );
    let unknown = http
        .post(format!("{base}/internal/v1/message-store/drop-everything"))
        .bearer_auth(STORE_TOKEN)
        .body("{}")
        .send()
        .await?;
    assert_eq!(status(unknown), 404);
    let huge = format!(r#"{{"users": ["{}"]}}"#, "u".repeat(300 * 1024));
    assert_eq!(status(post(Call::QueryPresence, huge.clone()).await?), 413);
    // Without the token even a huge body is refused as unauthorised: the
    // token is checked before the body is read.
    let anonymous = http
        .post(format!("{base}{}", Call::QueryPresence.path()))
        .body(huge)
        .send()
        .await?;
    assert_eq!(status(anonymous), 401);
    Ok(())
}
