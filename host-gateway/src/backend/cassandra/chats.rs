//! Chats and the per-user chat index in Cassandra.
//!
//! The chat row is the truth; `user_chats` is an index that may briefly
//! hold extra rows (a member added by a change that then lost its
//! transaction, or one removed whose index row is not yet deleted), so every
//! read through it checks membership on the chat row itself. Index rows are
//! added before the chat row changes and removed after, so the index never
//! misses a member.

use async_trait::async_trait;
use futures_util::future::join_all;

use super::{CassandraStore, unavailable};
use crate::backend::{Chat, ChatDirectory, ChatKind, StoreError, StoreResult};

type ChatRow = (
    String,
    String,
    Option<String>,
    Option<Vec<String>>,
    Option<Vec<String>>,
    i64,
);

fn chat_of((id, kind, name, members, admins, created_at): ChatRow) -> StoreResult<Chat> {
    let kind = match kind.as_str() {
        "direct" => ChatKind::Direct,
        "group" => ChatKind::Group,
        other => {
            return Err(StoreError::Unavailable(format!(
                "cassandra: chat {id} has unknown kind {other:?}"
            )));
        }
    };
    Ok(Chat {
        id,
        kind,
        name,
        members: members.unwrap_or_default(),
        admins: admins.unwrap_or_default(),
        created_at,
    })
}

fn kind_name(kind: ChatKind) -> &'static str {
    match kind {
        ChatKind::Direct => "direct",
        ChatKind::Group => "group",
    }
}

impl CassandraStore {
    async fn index(&self, users: &[String], chat: &str) -> StoreResult<()> {
        for result in join_all(users.iter().map(|user| {
            self.session
                .execute_unpaged(&self.statements.index_chat, (user.as_str(), chat))
        }))
        .await
        {
            result.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn unindex(&self, users: &[String], chat: &str) -> StoreResult<()> {
        for result in join_all(users.iter().map(|user| {
            self.session
                .execute_unpaged(&self.statements.unindex_chat, (user.as_str(), chat))
        }))
        .await
        {
            result.map_err(unavailable)?;
        }
        Ok(())
    }
}

#[async_trait]
impl ChatDirectory for CassandraStore {
    async fn get_chat(&self, chat: &str) -> StoreResult<Option<Chat>> {
        let rows = self
            .session
            .execute_unpaged(&self.statements.get_chat, (chat,))
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(unavailable)?;
        rows.maybe_first_row::<ChatRow>()
            .map_err(unavailable)?
            .map(chat_of)
            .transpose()
    }

    async fn is_member(&self, chat: &str, user: &str) -> StoreResult<bool> {
        Ok(self
            .get_chat(chat)
            .await?
            .is_some_and(|c| c.members.iter().any(|m| m == user)))
    }

    async fn create_chat(&self, chat: Chat) -> StoreResult<(Chat, bool)> {
        self.index(&chat.members, &chat.id).await?;
        let result = self
            .session
            .execute_unpaged(
                &self.statements.create_chat,
                (
                    chat.id.as_str(),
                    kind_name(chat.kind),
                    chat.name.as_deref(),
                    &chat.members,
                    &chat.admins,
                    chat.created_at,
                ),
            )
            .await
            .map_err(unavailable)?;
        if super::applied(result)? {
            return Ok((chat, true));
        }
        let existing = self.get_chat(&chat.id).await?.ok_or_else(|| {
            StoreError::Unavailable(format!(
                "cassandra: chat {} exists but cannot be read",
                chat.id
            ))
        })?;
        Ok((existing, false))
    }

    async fn chats_of(&self, user: &str) -> StoreResult<Vec<Chat>> {
        let rows = self
            .session
            .execute_unpaged(&self.statements.chats_of, (user,))
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(unavailable)?;
        let ids: Vec<String> = rows
            .rows::<(String,)>()
            .map_err(unavailable)?
            .map(|row| row.map(|(id,)| id).map_err(unavailable))
            .collect::<StoreResult<_>>()?;
        let mut chats = Vec::with_capacity(ids.len());
        for chat in join_all(ids.iter().map(|id| self.get_chat(id))).await {
            if let Some(chat) = chat?
                && chat.members.iter().any(|m| m == user)
            {
                chats.push(chat);
            }
        }
        crate::backend::sort_newest_first(&mut chats);
        Ok(chats)
    }

    async fn update_members(
        &self,
        chat: &str,
        expected: &[String],
        members: Vec<String>,
        admins: Vec<String>,
    ) -> StoreResult<Chat> {
        let added: Vec<String> = members
            .iter()
            .filter(|m| !expected.contains(m))
            .cloned()
            .collect();
        let removed: Vec<String> = expected
            .iter()
            .filter(|m| !members.contains(m))
            .cloned()
            .collect();
        self.index(&added, chat).await?;
        let result = self
            .session
            .execute_unpaged(
                &self.statements.update_members,
                (&members, &admins, chat, expected),
            )
            .await
            .map_err(unavailable)?;
        if !super::applied(result)? {
            return Err(match self.get_chat(chat).await? {
                None => StoreError::NotFound,
                Some(_) => StoreError::Conflict("members changed concurrently".into()),
            });
        }
        self.unindex(&removed, chat).await?;
        self.get_chat(chat).await?.ok_or(StoreError::NotFound)
    }
}
