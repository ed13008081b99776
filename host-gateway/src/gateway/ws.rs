//! One task per WebSocket connection: authenticate, register, then pump
//! frames both ways until either side leaves.
//!
//! The connection is registered before the handshake is answered, so a
//! client whose handshake has completed is already reachable: a message
//! stored after that moment is pushed to it, and one stored before is in the
//! catch-up page it asks for next. Registering afterwards left a window in
//! which a message was neither.
//!
//! The task reads client frames, routes them (`envelope`) and queues them
//! (`dispatch`); it writes whatever the components queued for this
//! connection (its `Outbox`). Framing faults end the connection with the
//! WebSocket close code that names them; everything else is an `error`
//! frame and the connection lives on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, StatusCode};
use tokio::sync::{Notify, mpsc};

use super::App;
use super::envelope;
use super::rest::{bearer_token, error};
use crate::auth::Identity;
use crate::backend::{ConnectionId, Frame, Outbox};
use crate::runtime::Lifecycle;

/// How long a closing handshake may take before the socket is just dropped.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(2);

/// Bytes read from a socket at a time. Allocated per socket up front, so
/// idle connections pay for it: 2 KiB holds most chat frames in one read.
const READ_BUFFER_BYTES: usize = 2 * 1024;

/// Frames queued for one connection before it counts as lagging.
const OUTBOX_CAPACITY: usize = 1024;
/// Bytes of queued frames gathered into one socket write.
const WRITE_BATCH_BYTES: usize = 4 * 1024;
/// Most queued frames gathered into one socket write.
const WRITE_BATCH_FRAMES: usize = 64;

/// `GET /chat/connect`: authenticate before upgrading.
pub async fn upgrade(
    State(app): State<Arc<App>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Some(user_id) = query.get("userId") else {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "userId is required",
        );
    };
    let token = query
        .get("token")
        .map(String::as_str)
        .or_else(|| bearer_token(&headers));
    let Some(token) = token else {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a token is required",
        );
    };
    let identity = match app.auth.verify(token, Some(user_id)) {
        Ok(identity) => identity,
        Err(e) => return error(StatusCode::UNAUTHORIZED, "unauthorized", &e.to_string()),
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let (frames_tx, frames_rx) = mpsc::channel(OUTBOX_CAPACITY);
    let lagged = Arc::new(Notify::new());
    let outbox = Outbox {
        frames: frames_tx,
        lagged: lagged.clone(),
    };
    let registration = Registration::open(app.clone(), identity.user_id.clone(), outbox).await;
    upgrade
        // Chat frames are small and most sockets are idle: tungstenite's
        // 128 KiB default buffers would cost ~130 KiB per idle connection.
        // The write buffer only fills while frames queued together are
        // written (see `connection`), and is empty between writes.
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BATCH_BYTES)
        .max_write_buffer_size(app.max_frame_bytes * 16)
        .max_message_size(app.max_frame_bytes)
        .max_frame_size(app.max_frame_bytes)
        // A failed upgrade drops this closure, and with it the registration.
        .on_upgrade(move |socket| {
            connection(app, identity, registration, frames_rx, lagged, socket)
        })
}

/// A connection's entry in the router and its presence. Ended by `close`,
/// or, if the connection never got its socket (a failed upgrade, a client
/// gone mid-handshake, a runtime shutting down), when dropped.
struct Registration {
    app: Arc<App>,
    user: String,
    connection_id: ConnectionId,
    open: bool,
}

impl Registration {
    async fn open(app: Arc<App>, user: String, outbox: Outbox) -> Self {
        // The guard exists before the first await: the handshake's future is
        // dropped if its client goes away, and what was registered by then
        // must be undone.
        let registration = Registration {
            connection_id: app.next_connection_id(),
            app,
            user,
            open: true,
        };
        crate::metrics::connection_opened();
        let (app, user, connection_id) = (
            &registration.app,
            &registration.user,
            registration.connection_id,
        );
        app.backends
            .router
            .register(user, connection_id, outbox)
            .await;
        app.dispatcher
            .lifecycle(connection_id, user, Lifecycle::Connected)
            .await;
        tracing::debug!(%user, connection_id, "connected");
        registration
    }

    async fn close(mut self) {
        self.open = false;
        leave(&self.app, &self.user, self.connection_id).await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let (app, user, connection_id) = (self.app.clone(), self.user.clone(), self.connection_id);
        // Outside a runtime there is nobody left to tell.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { leave(&app, &user, connection_id).await });
        }
    }
}

async fn leave(app: &App, user: &str, connection_id: ConnectionId) {
    app.backends.router.unregister(user, connection_id).await;
    app.dispatcher
        .lifecycle(connection_id, user, Lifecycle::Disconnected)
        .await;
    crate::metrics::connection_closed();
    tracing::debug!(%user, connection_id, "disconnected");
}

fn error_frame(code: &str, message: &str, client_msg_id: Option<&str>) -> Message {
    let mut frame = serde_json::json!({"type": "error", "code": code, "message": message});
    if let Some(id) = client_msg_id {
        frame["clientMsgId"] = id.into();
    }
    Message::Text(frame.to_string().into())
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// How a read error ends the connection.
fn close_for(error: axum::Error) -> Message {
    match error
        .into_inner()
        .downcast::<tungstenite::Error>()
        .map(|e| *e)
    {
        Ok(tungstenite::Error::Capacity(_)) => close(close_code::SIZE, "frame too large"),
        Ok(tungstenite::Error::Utf8(_)) => {
            close(close_code::INVALID, "invalid UTF-8 in a text frame")
        }
        _ => close(close_code::PROTOCOL, "protocol error"),
    }
}

/// Time until the token expires (never negative).
fn until_expiry(identity: &Identity) -> Duration {
    let now = crate::ids::now_ms() / 1000;
    Duration::from_secs((identity.expires_at - now).max(0) as u64)
}

async fn connection(
    app: Arc<App>,
    identity: Identity,
    registration: Registration,
    mut frames_rx: mpsc::Receiver<Frame>,
    lagged: Arc<Notify>,
    socket: WebSocket,
) {
    let connection_id = registration.connection_id;
    let user = identity.user_id.clone();
    let (mut sink, mut stream) = socket.split();
    let expiry = tokio::time::sleep(until_expiry(&identity));
    tokio::pin!(expiry);
    let mut shutting_down = app.shutting_down.clone();
    let mut ping = tokio::time::interval(app.heartbeat_interval);
    ping.reset();

    let farewell: Option<Message> = loop {
        tokio::select! {
            incoming = stream.next() => match incoming {
                None => break None,
                Some(Err(e)) => {
                    tracing::debug!(%user, connection_id, error = ?e, "read failed");
                    break Some(close_for(e));
                }
                Some(Ok(Message::Text(text))) => {
                    crate::metrics::frame_in();
                    match envelope::parse(&text) {
                        Ok(env) => app.dispatcher.submit(connection_id, &user, env, text.to_string()).await,
                        Err(e) => {
                            let reply = error_frame(e.code(), &e.message(), e.client_msg_id());
                            if sink.send(reply).await.is_err() {
                                break None;
                            }
                        }
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let reply = error_frame("unsupported_frame", "binary frames are not supported; send JSON text", None);
                    if sink.send(reply).await.is_err() {
                        break None;
                    }
                }
                // Pings are answered by the WebSocket layer; pongs need nothing.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) => break None,
            },
            Some(frame) = frames_rx.recv() => {
                // A client that stops reading blocks this write once its TCP
                // window is full; its outbox then fills and flags it lagging,
                // which must end the wait rather than wait behind it.
                // Frames queued behind it go out in the same write: one
                // syscall instead of one per frame under load.
                let write = async {
                    sink.feed(Message::Text(Utf8Bytes::from(&*frame))).await?;
                    for _ in 1..WRITE_BATCH_FRAMES {
                        let Ok(frame) = frames_rx.try_recv() else { break };
                        sink.feed(Message::Text(Utf8Bytes::from(&*frame))).await?;
                    }
                    sink.flush().await
                };
                tokio::select! {
                    sent = write => {
                        if sent.is_err() {
                            break None;
                        }
                    }
                    _ = lagged.notified() => {
                        break Some(close(close_code::AGAIN, "too slow to read; reconnect and catch up"));
                    }
                }
            }
            _ = lagged.notified() => {
                // The client does not keep up; it reconnects and catches up from the store.
                break Some(close(close_code::AGAIN, "too slow to read; reconnect and catch up"));
            }
            _ = &mut expiry => break Some(close(close_code::POLICY, "token expired")),
            // The only value ever sent is `true`.
            _ = shutting_down.changed() => {
                break Some(close(close_code::AWAY, "server shutting down; reconnect"));
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break None;
                }
            }
        }
    };
    if let Some(message) = farewell {
        // Bounded: the peer may be the one not reading.
        let _ = tokio::time::timeout(FAREWELL_TIMEOUT, async {
            let _ = sink.send(message).await;
            let _ = sink.close().await;
        })
        .await;
    }

    registration.close().await;
}
