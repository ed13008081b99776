//! Creating, reading and listing chats over HTTP.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_e2e::Server;

/// Pause between creations so that every chat has its own `createdAt` millisecond.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

/// A direct chat `dm:a:b` is created once (201) with the caller added, then returned as is (200), and listed for both members only.
#[tokio::test]
async fn direct_chat_identity() {
    let server = Server::start().await;
    let (status, chat) = server
        .post("/api/v1/chats", "bob", json!({"members": ["alice"]}))
        .await;
    assert_eq!(status, 201, "{chat}");
    assert_eq!(chat["chatId"], "dm:alice:bob");
    assert_eq!(chat["kind"], "direct");
    assert_eq!(chat["members"], json!(["alice", "bob"]), "caller added");
    assert_eq!(chat["admins"], json!([]));
    assert!(
        chat["createdAt"].as_i64().unwrap() > 1_700_000_000_000,
        "{chat}"
    );
    assert!(chat.get("name").is_none(), "{chat}");

    for (user, body) in [
        ("alice", json!({"members": ["alice", "bob"]})),
        ("alice", json!({"members": ["bob"]})),
        ("alice", json!({"members": ["bob", "bob", "alice"]})),
        ("bob", json!({"members": ["alice"]})),
    ] {
        let (status, again) = server.post("/api/v1/chats", user, body.clone()).await;
        assert_eq!((status, &again), (200, &chat), "{user} {body}");
    }

    for user in ["alice", "bob"] {
        let (status, list) = server.get("/api/v1/chats", user).await;
        assert_eq!(status, 200);
        assert_eq!(list, json!({"chats": [chat.clone()]}), "{user}");
        let (status, one) = server.get("/api/v1/chats/dm:alice:bob", user).await;
        assert_eq!((status, &one), (200, &chat));
    }
    assert_eq!(
        server.get("/api/v1/chats/dm%3Aalice%3Abob", "alice").await,
        (200, chat.clone()),
        "a percent-encoded id is the same chat"
    );

    let (_, list) = server.get("/api/v1/chats", "carol").await;
    assert_eq!(list, json!({"chats": []}));
    let (status, body) = server.get("/api/v1/chats/dm:alice:bob", "carol").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("chat_not_found"))
    );
    let (status, body) = server.get("/api/v1/chats/dm:alice:zed", "alice").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("chat_not_found"))
    );
}

/// A name or more than two members make a group `g:...` with the caller as admin, visible to every member and listed newest first.
#[tokio::test]
async fn groups_and_listing() {
    let server = Server::start().await;
    let direct = server
        .create_chat("alice", json!({"members": ["bob"]}))
        .await;

    tick().await;
    let (status, team) = server
        .post(
            "/api/v1/chats",
            "alice",
            json!({"members": ["bob", "carol"], "name": "Team"}),
        )
        .await;
    assert_eq!(status, 201, "{team}");
    let team_id = team["chatId"].as_str().unwrap().to_owned();
    assert!(team_id.starts_with("g:"), "{team}");
    assert_eq!(team["kind"], "group");
    assert_eq!(team["name"], "Team");
    assert_eq!(team["admins"], json!(["alice"]));
    assert_eq!(team["members"], json!(["alice", "bob", "carol"]));

    tick().await;
    let (status, pair) = server
        .post(
            "/api/v1/chats",
            "alice",
            json!({"members": ["bob"], "name": "Lunch"}),
        )
        .await;
    assert_eq!((status, pair["kind"].as_str()), (201, Some("group")));
    assert_ne!(pair["chatId"], json!(direct));
    // Three members without a name: a group, and a new one each time.
    tick().await;
    let (status, trio) = server
        .post(
            "/api/v1/chats",
            "carol",
            json!({"members": ["alice", "bob"]}),
        )
        .await;
    assert_eq!((status, trio["kind"].as_str()), (201, Some("group")));
    assert_eq!(trio["admins"], json!(["carol"]));
    tick().await;
    let (_, trio_again) = server
        .post(
            "/api/v1/chats",
            "carol",
            json!({"members": ["alice", "bob"]}),
        )
        .await;
    assert_ne!(trio_again["chatId"], trio["chatId"]);

    for user in ["bob", "carol"] {
        let (status, shown) = server.get(&format!("/api/v1/chats/{team_id}"), user).await;
        assert_eq!((status, &shown), (200, &team), "{user}");
    }
    assert_eq!(
        server
            .get(&format!("/api/v1/chats/{team_id}"), "dave")
            .await
            .0,
        404
    );

    let listed = |list: &Value| -> Vec<String> {
        list["chats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["chatId"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, alices) = server.get("/api/v1/chats", "alice").await;
    let newest_first = vec![
        trio_again["chatId"].as_str().unwrap().to_owned(),
        trio["chatId"].as_str().unwrap().to_owned(),
        pair["chatId"].as_str().unwrap().to_owned(),
        team_id.clone(),
        direct.clone(),
    ];
    assert_eq!(listed(&alices), newest_first);
    let (_, carols) = server.get("/api/v1/chats", "carol").await;
    assert_eq!(
        listed(&carols),
        [newest_first[0].clone(), newest_first[1].clone(), team_id]
    );
}

/// At most 256 members: 256 is created, 257 is 422 too_many_members and creates nothing.
#[tokio::test]
async fn member_limit() {
    let server = Server::start().await;
    let members: Vec<String> = (1..=255).map(|i| format!("user{i}")).collect();
    let (status, big) = server
        .post(
            "/api/v1/chats",
            "alice",
            json!({"members": members, "name": "Full"}),
        )
        .await;
    assert_eq!(status, 201, "{big}");
    assert_eq!(big["members"].as_array().unwrap().len(), 256);

    let members: Vec<String> = (1..=256).map(|i| format!("other{i}")).collect();
    let (status, body) = server
        .post(
            "/api/v1/chats",
            "alice",
            json!({"members": members, "name": "Too big"}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("too_many_members")),
        "{body}"
    );
    let (_, list) = server.get("/api/v1/chats", "alice").await;
    assert_eq!(
        list["chats"].as_array().unwrap().len(),
        1,
        "nothing created"
    );
    let (_, list) = server.get("/api/v1/chats", "other1").await;
    assert_eq!(list, json!({"chats": []}));
}

/// Malformed chat requests are 400 bad_request (no other member, bad ids, bad names, not JSON), unauthenticated ones 401, other methods 405.
#[tokio::test]
async fn bad_requests() {
    let server = Server::start().await;
    let long_name = "n".repeat(101);
    for body in [
        json!({"members": []}),
        json!({"members": ["alice"]}),
        json!({"members": ["alice", "alice"]}),
        json!({"members": ["not valid!"]}),
        json!({"members": ["bob", ""]}),
        json!({"members": ["bob"], "name": ""}),
        json!({"members": ["bob"], "name": long_name}),
        json!({"members": "bob"}),
        json!({}),
        json!([1, 2]),
    ] {
        let (status, reply) = server.post("/api/v1/chats", "alice", body.clone()).await;
        assert_eq!(
            (status, reply["code"].as_str()),
            (400, Some("bad_request")),
            "{body}: {reply}"
        );
    }
    let (_, list) = server.get("/api/v1/chats", "alice").await;
    assert_eq!(list, json!({"chats": []}), "nothing was created");

    let not_json = reqwest::Client::new()
        .post(format!("{}/api/v1/chats", server.base))
        .bearer_auth(server.token("alice"))
        .header("content-type", "application/json")
        .body("{members")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status().as_u16(), 400);

    let (status, body) = server
        .request(
            reqwest::Method::POST,
            "/api/v1/chats",
            None,
            Some(json!({"members": ["bob"]})),
        )
        .await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let (status, body) = server
        .request(reqwest::Method::PUT, "/api/v1/chats", Some("alice"), None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (405, Some("method_not_allowed")),
        "{body}"
    );

    let huge = reqwest::Client::new()
        .post(format!("{}/api/v1/chats", server.base))
        .bearer_auth(server.token("alice"))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"members":["bob"],"name":"{}"}}"#,
            "x".repeat(300 * 1024)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status().as_u16(), 413, "a body over 256 KiB");
}
