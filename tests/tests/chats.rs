//! Creating and listing chats over HTTP.

use serde_json::json;
use switchboard_e2e::Server;

/// A direct chat is created once (201), then returned (200), and listed for both members.
#[tokio::test]
async fn direct_chat_identity() {
    let server = Server::start().await;
    let (status, chat) = server
        .post("/api/v1/chats", "bob", json!({"members": ["alice"]}))
        .await;
    assert_eq!(status, 201);
    assert_eq!(chat["chatId"], "dm:alice:bob");
    assert_eq!(chat["kind"], "direct");
    assert_eq!(chat["members"], json!(["alice", "bob"]));
    let (status, again) = server
        .post(
            "/api/v1/chats",
            "alice",
            json!({"members": ["alice", "bob"]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(again, chat);
    for user in ["alice", "bob"] {
        let (status, list) = server.get("/api/v1/chats", user).await;
        assert_eq!(status, 200);
        assert_eq!(list["chats"], json!([chat.clone()]));
    }
    let (_, list) = server.get("/api/v1/chats", "carol").await;
    assert_eq!(list["chats"], json!([]));
    assert_eq!(
        server
            .get("/api/v1/chats/dm%3Aalice%3Abob", "alice")
            .await
            .0,
        200
    );
    assert_eq!(
        server.get("/api/v1/chats/dm:alice:bob", "carol").await.0,
        404
    );
}

/// Groups: named, the creator is admin, at most 256 members; one member alone is refused.
#[tokio::test]
async fn groups_and_limits() {
    let server = Server::start().await;
    let (status, group) = server
        .post(
            "/api/v1/chats",
            "alice",
            json!({"members": ["bob", "carol"], "name": "Team"}),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(group["kind"], "group");
    assert_eq!(group["name"], "Team");
    assert_eq!(group["admins"], json!(["alice"]));

    let members: Vec<String> = (1..=255).map(|i| format!("user{i}")).collect();
    let (status, big) = server
        .post(
            "/api/v1/chats",
            "alice",
            json!({"members": members, "name": "Full"}),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(big["members"].as_array().unwrap().len(), 256);
    let members: Vec<String> = (1..=256).map(|i| format!("user{i}")).collect();
    let (status, body) = server
        .post(
            "/api/v1/chats",
            "alice",
            json!({"members": members, "name": "Too big"}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("too_many_members"))
    );

    let (status, _) = server
        .post("/api/v1/chats", "alice", json!({"members": []}))
        .await;
    assert_eq!(status, 400);
    let (status, _) = server
        .post("/api/v1/chats", "alice", json!({"members": ["not valid!"]}))
        .await;
    assert_eq!(status, 400);
}
