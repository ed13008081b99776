//! From frames to component invocations.
//!
//! Frames queue in lanes; a lane's worker takes everything queued (up to a
//! batch limit) and hands it to one component invocation. Idle, a batch is a
//! single frame and adds no latency; under load, one ~20 us instantiation
//! and one store commit serve many frames.
//!
//! Order: all frames of a chat go to the same lane (by hash of the chat id)
//! and a lane runs one `send` invocation at a time, so a chat's messages are
//! stored and acked in the order they arrived. Each lane's stored batches go
//! to its own fan-out task in that order, which runs while the lane commits
//! the next batch. Presence frames are laned by user for the same reason.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::envelope::{Envelope, Route};
use crate::backend::{ConnectionId, Router};
use crate::ids::now_ms;
use crate::metrics::{self, Lane};
use crate::runtime::{ConnectionEvent, InboundFrame, InvokeError, Lifecycle, Runtime, Stored};

/// Most frames one invocation takes. Large, because under load a lane's
/// batch is what it gathered during its previous invocation, and the cost
/// of an invocation and its store commit is mostly per batch.
const MAX_BATCH: usize = 512;
/// Most frame bytes one invocation takes (the batch ends with the frame
/// that reaches it), so a batch of large frames stays well within a
/// component's memory limit.
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Frames the lanes of a kind queue in all before readers wait
/// (backpressure to the sockets), split evenly among them. It is a total so
/// that fewer lanes do not mean less room: with 1,000 busy senders (16,000
/// frames in flight), one lane of 4,096 frames had half the peak of four
/// such lanes, and one lane of 16,384 had the same.
const QUEUED_FRAMES: usize = 16 * 1024;
/// Stored batches a lane's fan-out may fall behind its commits before the
/// lane waits for it.
const FANOUT_BACKLOG: usize = 64;
/// Most messages one fanout invocation takes (queued batches are joined up
/// to this).
const MAX_FANOUT_MESSAGES: usize = 512;

/// A frame and what the host needs to answer for it if the component fails.
#[derive(Debug)]
struct Job {
    frame: InboundFrame,
    client_msg_id: Option<String>,
    /// When the frame was queued, for the dispatch-wait histogram.
    queued: Instant,
}

#[derive(Debug)]
enum PresenceJob {
    Frame(Job),
    Lifecycle(ConnectionEvent),
}

/// Hands frames to the lanes. Cheap to share.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    send_lanes: Arc<[mpsc::Sender<Job>]>,
    presence_lanes: Arc<[mpsc::Sender<PresenceJob>]>,
}

fn lane_of(key: &str, lanes: usize) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

impl Dispatcher {
    /// Starts `lanes` workers for each routed component.
    pub fn start(runtime: Arc<Runtime>, router: Arc<dyn Router>, lanes: usize) -> Self {
        let mut send_lanes = Vec::with_capacity(lanes);
        let mut presence_lanes = Vec::with_capacity(lanes);
        let capacity = (QUEUED_FRAMES / lanes).max(MAX_BATCH);
        for _ in 0..lanes {
            let (tx, rx) = mpsc::channel(capacity);
            tokio::spawn(send_worker(runtime.clone(), router.clone(), rx));
            send_lanes.push(tx);
            let (tx, rx) = mpsc::channel(capacity);
            tokio::spawn(presence_worker(runtime.clone(), router.clone(), rx));
            presence_lanes.push(tx);
        }
        Self {
            send_lanes: send_lanes.into(),
            presence_lanes: presence_lanes.into(),
        }
    }

    /// Queues a routed frame; waits while its lane is full.
    pub async fn submit(
        &self,
        connection: ConnectionId,
        user_id: &str,
        envelope: Envelope,
        body: String,
    ) {
        let frame = InboundFrame {
            connection,
            user_id: user_id.to_owned(),
            kind: envelope.kind,
            body,
            received_at: now_ms(),
        };
        let job = Job {
            frame,
            client_msg_id: envelope.client_msg_id,
            queued: Instant::now(),
        };
        match envelope.route {
            Route::Send => {
                // Frames without a chat id are invalid anyway; any lane will do.
                let key = envelope.chat_id.as_deref().unwrap_or(user_id);
                let lane = &self.send_lanes[lane_of(key, self.send_lanes.len())];
                let _ = lane.send(job).await;
            }
            Route::Presence => {
                let _ = self
                    .presence_lane(user_id)
                    .send(PresenceJob::Frame(job))
                    .await;
            }
        }
    }

    /// Tells the presence component a connection opened or closed.
    pub async fn lifecycle(&self, connection: ConnectionId, user_id: &str, event: Lifecycle) {
        let event = ConnectionEvent {
            connection,
            user_id: user_id.to_owned(),
            event,
        };
        let _ = self
            .presence_lane(user_id)
            .send(PresenceJob::Lifecycle(event))
            .await;
    }

    fn presence_lane(&self, user_id: &str) -> &mpsc::Sender<PresenceJob> {
        &self.presence_lanes[lane_of(user_id, self.presence_lanes.len())]
    }
}

/// What a queued item weighs against `MAX_BATCH_BYTES`.
trait Weight {
    fn bytes(&self) -> usize;
}

impl Weight for Job {
    fn bytes(&self) -> usize {
        self.frame.body.len()
    }
}

impl Weight for PresenceJob {
    fn bytes(&self) -> usize {
        match self {
            PresenceJob::Frame(job) => job.bytes(),
            PresenceJob::Lifecycle(_) => 0,
        }
    }
}

/// Takes the first queued item (waiting for it) and whatever else is
/// queued, within the batch limits.
async fn next_batch<T: Weight>(rx: &mut mpsc::Receiver<T>) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut bytes = first.bytes();
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
        match rx.try_recv() {
            Ok(item) => {
                bytes += item.bytes();
                batch.push(item);
            }
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Splits jobs taken off `lane` into their frames and client message ids,
/// recording how long each waited there.
fn dequeued(jobs: Vec<Job>, lane: Lane) -> (Vec<InboundFrame>, Vec<Option<String>>) {
    jobs.into_iter()
        .map(|j| {
            metrics::dispatch_waited(lane, j.queued);
            (j.frame, j.client_msg_id)
        })
        .unzip()
}

/// The error frame for a frame whose component failed.
fn internal_error(client_msg_id: Option<&str>, error: &InvokeError) -> String {
    let message = match error {
        InvokeError::Timeout { .. } => "the server took too long to handle this frame; retry",
        _ => "the server failed to handle this frame; retry",
    };
    let mut frame = serde_json::json!({"type": "error", "code": "internal", "message": message});
    if let Some(id) = client_msg_id {
        frame["clientMsgId"] = id.into();
    }
    frame.to_string()
}

async fn send_worker(runtime: Arc<Runtime>, router: Arc<dyn Router>, mut rx: mpsc::Receiver<Job>) {
    // A batch's fan-out runs while the next batch commits. One fan-out task
    // per lane takes stored batches in commit order, so a chat's pushes keep
    // the order of its ids.
    let (stored_tx, stored_rx) = mpsc::channel(FANOUT_BACKLOG);
    tokio::spawn(fanout_worker(runtime.clone(), stored_rx));
    let fan_out = |frames: &[InboundFrame], client_ids: &[Option<String>], stored| {
        let items = with_origins(frames, client_ids, stored);
        let stored_tx = stored_tx.clone();
        async move {
            if !items.is_empty() {
                let _ = stored_tx.send((Instant::now(), items)).await;
            }
        }
    };
    while let Some(batch) = next_batch(&mut rx).await {
        let (frames, client_ids) = dequeued(batch, Lane::Send);
        match runtime.send(&frames).await {
            Ok(stored) => fan_out(&frames, &client_ids, stored).await,
            Err(e) if frames.len() > 1 => {
                // One bad frame must not fail its neighbours: retry each alone.
                // Sends are idempotent by clientMsgId, so a retried message
                // that was already stored is acked, not stored twice.
                tracing::warn!(error = %e, frames = frames.len(), "send batch failed; retrying frames one by one");
                for (i, frame) in frames.iter().enumerate() {
                    let one = std::slice::from_ref(frame);
                    let client_id = std::slice::from_ref(&client_ids[i]);
                    match runtime.send(one).await {
                        Ok(stored) => fan_out(one, client_id, stored).await,
                        Err(e) => fail(&*router, frame, client_ids[i].as_deref(), &e).await,
                    }
                }
            }
            Err(e) => fail(&*router, &frames[0], client_ids[0].as_deref(), &e).await,
        }
    }
}

async fn fail(
    router: &dyn Router,
    frame: &InboundFrame,
    client_msg_id: Option<&str>,
    error: &InvokeError,
) {
    tracing::error!(error = %error, kind = %frame.kind, "component failed on a frame");
    let reply = internal_error(client_msg_id, error);
    router
        .send_to_connection(frame.connection, reply.into())
        .await;
}

/// Pairs newly stored messages with the connection each came from (which
/// already has it, through its `sent` ack).
///
/// The component stores a batch's messages in frame order, so the search
/// resumes after the last match: one pass over the batch instead of one per
/// message (a batch holds up to `MAX_BATCH` frames). It still wraps around,
/// so any order gives the right answer.
fn with_origins(
    frames: &[InboundFrame],
    client_ids: &[Option<String>],
    stored: Vec<crate::runtime::bindings::Message>,
) -> Vec<Stored> {
    let mut resume = 0;
    stored
        .into_iter()
        .map(|message| {
            let is_origin = |i: &usize| {
                frames[*i].user_id == message.sender_id
                    && client_ids[*i].as_deref() == Some(&message.client_msg_id)
            };
            let found = (resume..frames.len()).chain(0..resume).find(is_origin);
            if let Some(i) = found {
                resume = i + 1;
            }
            Stored {
                origin: found.map(|i| frames[i].connection),
                message,
            }
        })
        .collect()
}

/// Runs the fanout component over stored batches in the order they come,
/// everything queued at once in one invocation.
async fn fanout_worker(runtime: Arc<Runtime>, mut stored: mpsc::Receiver<(Instant, Vec<Stored>)>) {
    while let Some((committed, mut items)) = stored.recv().await {
        metrics::fanout_waited(committed);
        while items.len() < MAX_FANOUT_MESSAGES {
            match stored.try_recv() {
                Ok((committed, more)) => {
                    metrics::fanout_waited(committed);
                    items.extend(more);
                }
                Err(_) => break,
            }
        }
        if let Err(e) = runtime.fanout(&items).await {
            // The messages are stored and acked; recipients catch up by cursor.
            tracing::error!(error = %e, messages = items.len(), "fanout failed");
        }
    }
}

async fn presence_worker(
    runtime: Arc<Runtime>,
    router: Arc<dyn Router>,
    mut rx: mpsc::Receiver<PresenceJob>,
) {
    while let Some(batch) = next_batch(&mut rx).await {
        // Keep arrival order: consecutive frames go in one call, consecutive
        // lifecycle events in another (a heartbeat after a disconnect must
        // not revive the connection).
        let mut batch = batch.into_iter().peekable();
        while let Some(first) = batch.next() {
            match first {
                PresenceJob::Frame(job) => {
                    let mut jobs = vec![job];
                    while let Some(PresenceJob::Frame(_)) = batch.peek() {
                        if let Some(PresenceJob::Frame(j)) = batch.next() {
                            jobs.push(j);
                        }
                    }
                    let (frames, client_ids) = dequeued(jobs, Lane::Presence);
                    if let Err(e) = runtime.presence_frames(&frames).await {
                        for (frame, client_id) in frames.iter().zip(&client_ids) {
                            fail(&*router, frame, client_id.as_deref(), &e).await;
                        }
                    }
                }
                PresenceJob::Lifecycle(event) => {
                    let mut events = vec![event];
                    while let Some(PresenceJob::Lifecycle(_)) = batch.peek() {
                        if let Some(PresenceJob::Lifecycle(e)) = batch.next() {
                            events.push(e);
                        }
                    }
                    if let Err(e) = runtime.presence_lifecycle(&events).await {
                        tracing::error!(error = %e, events = events.len(), "presence lifecycle failed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(body_bytes: usize) -> Job {
        Job {
            frame: InboundFrame {
                connection: 1,
                user_id: "alice".into(),
                kind: "sendMessage".into(),
                body: "x".repeat(body_bytes),
                received_at: 0,
            },
            client_msg_id: None,
            queued: Instant::now(),
        }
    }

    async fn batch_sizes(jobs: impl IntoIterator<Item = Job>) -> Vec<usize> {
        let (tx, mut rx) = mpsc::channel(QUEUED_FRAMES);
        for j in jobs {
            tx.send(j).await.unwrap();
        }
        drop(tx);
        let mut sizes = Vec::new();
        while let Some(batch) = next_batch(&mut rx).await {
            sizes.push(batch.len());
        }
        sizes
    }

    #[tokio::test]
    async fn a_batch_takes_what_is_queued_up_to_its_count() {
        let sizes = batch_sizes((0..MAX_BATCH + 10).map(|_| job(100))).await;
        assert_eq!(sizes, [MAX_BATCH, 10]);
    }

    fn sent(
        connection: ConnectionId,
        user: &str,
        client_msg_id: &str,
    ) -> (InboundFrame, Option<String>) {
        let mut j = job(10);
        j.frame.connection = connection;
        j.frame.user_id = user.into();
        (j.frame, Some(client_msg_id.into()))
    }

    fn message(user: &str, client_msg_id: &str) -> crate::runtime::bindings::Message {
        crate::runtime::bindings::Message {
            id: 1,
            chat_id: "dm:alice:bob".into(),
            sender_id: user.into(),
            client_msg_id: client_msg_id.into(),
            content: "hi".into(),
            timestamp: 0,
            prev_id: 0,
        }
    }

    #[test]
    fn stored_messages_are_paired_with_the_connection_they_came_from() {
        let (frames, client_ids): (Vec<_>, Vec<_>) = [
            sent(1, "alice", "a1"),
            sent(2, "bob", "a1"),
            sent(1, "alice", "a2"),
            sent(3, "carol", "c1"),
        ]
        .into_iter()
        .unzip();
        // Out of frame order, one refused (carol's), one from no frame here.
        let stored = ["bob/a1", "alice/a2", "alice/a1", "dave/d1"]
            .map(|k| k.split_once('/').unwrap())
            .map(|(user, id)| message(user, id))
            .to_vec();
        let origins: Vec<_> = with_origins(&frames, &client_ids, stored)
            .into_iter()
            .map(|s| (s.message.client_msg_id, s.origin))
            .collect();
        assert_eq!(
            origins,
            [
                ("a1".to_string(), Some(2)),
                ("a2".to_string(), Some(1)),
                ("a1".to_string(), Some(1)),
                ("d1".to_string(), None),
            ]
        );
    }

    #[tokio::test]
    async fn large_frames_end_a_batch_early() {
        // 1 MiB frames: the fourth reaches the byte limit and ends the batch.
        let sizes = batch_sizes((0..6).map(|_| job(1 << 20))).await;
        assert_eq!(sizes, [4, 2]);
    }
}
