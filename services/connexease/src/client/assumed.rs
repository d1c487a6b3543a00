//! **Assumed**: the calls the seeds' operations and the directory need, which no
//! Connexease page publishes. Each path, body and answer below is our assumption, written
//! in the documented conventions (trailing slashes, `uuid` ids, bare JSON, `detail`
//! errors) so that only these lines change when Connexease confirms the real ones
//! (README, "Before going live"). The simulator serves exactly these, marked the same way.
//!
//! | call | body | answer |
//! |---|---|---|
//! | `GET /groups/` | | `[{"uuid", "name"}]` (or a page's `results`) |
//! | `GET /agents/` | | `[{"uuid", "email", "name", "status": "online" \| "away" \| "offline"}]` |
//! | `GET /custom_fields/` | | `[{"key", "label", "type": "text" \| "tags", "scope": "conversation" \| "customer"}]` |
//! | `GET /conversations/{uuid}/` | | a conversation |
//! | `POST /conversations/{uuid}/assign/` | `{"group"}`, `{"agent"}` or `{"auto": true, "group"?}` (uuids) | the conversation |
//! | `POST /conversations/{uuid}/archive/`, `/unarchive/` | | the conversation |
//! | `PATCH /conversations/{uuid}/custom_fields/` | `{"custom_fields": {"<key>": "text" or ["tag", …]}}` | the conversation |
//! | `GET /customers/{uuid}/` | | a customer (a change read back) |
//! | `PATCH /customers/{uuid}/` | any of `{"name", "email", "phone", "social": {…}}` | the customer |
//! | `PATCH /customers/{uuid}/custom_fields/` | `{"custom_fields": {…}}` | the customer |
//!
//! A conversation: `{"uuid", "status": "open" | "archived", "customer": {"uuid", …},
//! "group": {"uuid", "name"} | null, "agent": {"uuid", …} | null, "custom_fields": {…},
//! "external_id"}`. A customer: `{"uuid", "name", "email", "phone", "social",
//! "custom_fields"}`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{Value as Json, json};

use super::{
    Answer, AssignTo, Call, ClientError, ConnexeaseApi, HttpConnexease, Target, items, segment,
    uuid_at,
};

/// `GET /groups/`, `/agents/`, `/custom_fields/`.
pub const GROUPS: &str = "/groups/";
pub const AGENTS: &str = "/agents/";
pub const CUSTOM_FIELDS: &str = "/custom_fields/";

pub fn conversation_path(uuid: &str) -> String {
    format!("/conversations/{}/", segment(uuid))
}

pub fn customer_path(uuid: &str) -> String {
    format!("/customers/{}/", segment(uuid))
}

/// Whether `fields` all hold their values in `custom_fields` of `body`.
fn fields_hold(body: &Json, fields: &BTreeMap<String, Json>) -> bool {
    fields
        .iter()
        .all(|(key, value)| &body["custom_fields"][key] == value)
}

#[async_trait]
impl ConnexeaseApi for HttpConnexease {
    async fn check(&self, target: &Target) -> Result<Answer, ClientError> {
        let (templates, attempts) = self.templates(target).await?;
        Ok(Answer {
            body: json!({"templates": templates.len()}),
            attempts,
        })
    }

    async fn stats(&self, target: &Target) -> Result<Answer, ClientError> {
        self.get_stats(target).await
    }

    async fn directory(&self, target: &Target) -> Result<Answer, ClientError> {
        let groups = self.send(target, Call::get(GROUPS)).await?;
        let agents = self.send(target, Call::get(AGENTS)).await?;
        let fields = self.send(target, Call::get(CUSTOM_FIELDS)).await?;
        let attempts = groups.attempts + agents.attempts + fields.attempts;
        let id = |item: &Json| uuid_at(item, "uuid").or_else(|| uuid_at(item, "id"));
        let group_list: Vec<Json> = items(&groups.body)
            .iter()
            .map(|g| json!({"id": id(g), "name": g["name"]}))
            .collect();
        let agents_list: Vec<Json> = items(&agents.body)
            .iter()
            .map(|a| {
                let availability = a["status"].as_str().or_else(|| a["availability"].as_str());
                json!({"id": id(a), "email": a["email"], "name": a["name"], "availability": availability})
            })
            .collect();
        Ok(Answer {
            body: json!({"groups": group_list, "agents": agents_list, "fields": items(&fields.body)}),
            attempts,
        })
    }

    async fn conversation(&self, target: &Target, id: &str) -> Result<Answer, ClientError> {
        self.send(target, Call::get(conversation_path(id))).await
    }

    async fn assign(
        &self,
        target: &Target,
        conversation: &str,
        to: &AssignTo,
    ) -> Result<Answer, ClientError> {
        let body = match to {
            AssignTo::Group(group) => json!({"group": group}),
            AssignTo::Agent(agent) => json!({"agent": agent}),
            AssignTo::Auto(group) => json!({"auto": true, "group": group}),
        };
        let path = conversation_path(conversation);
        let call = Call::change(Method::POST, format!("{path}assign/"), Some(body));
        let call = match to.clone() {
            AssignTo::Group(group) => call.read_back(path, move |now| {
                uuid_at(now, "group").as_deref() == Some(group.as_str())
            }),
            AssignTo::Agent(agent) => call.read_back(path, move |now| {
                uuid_at(now, "agent").as_deref() == Some(agent.as_str())
            }),
            // Whether an auto-assignment happened cannot be read back (the agent may have
            // been there before): with no answer, its outcome is unknown, never sent twice.
            AssignTo::Auto(_) => call,
        };
        self.send(target, call).await
    }

    async fn set_archived(
        &self,
        target: &Target,
        conversation: &str,
        archived: bool,
    ) -> Result<Answer, ClientError> {
        let action = if archived { "archive" } else { "unarchive" };
        let path = conversation_path(conversation);
        let call = Call::change(Method::POST, format!("{path}{action}/"), None)
            .read_back(path, move |now| (now["status"] == "archived") == archived);
        self.send(target, call).await
    }

    async fn set_conversation_fields(
        &self,
        target: &Target,
        conversation: &str,
        fields: &BTreeMap<String, Json>,
    ) -> Result<Answer, ClientError> {
        let path = conversation_path(conversation);
        let wanted = fields.clone();
        let call = Call::change(
            Method::PATCH,
            format!("{path}custom_fields/"),
            Some(json!({"custom_fields": fields})),
        )
        .read_back(path, move |now| fields_hold(now, &wanted));
        self.send(target, call).await
    }

    async fn update_customer(
        &self,
        target: &Target,
        customer: &str,
        update: &Json,
    ) -> Result<Answer, ClientError> {
        let path = customer_path(customer);
        let wanted = update.clone();
        let call = Call::change(Method::PATCH, path.clone(), Some(update.clone())).read_back(
            path,
            move |now| {
                wanted.as_object().is_some_and(|members| {
                    members.iter().all(|(key, value)| match value {
                        Json::Object(social) => social
                            .iter()
                            .all(|(network, handle)| &now[key][network] == handle),
                        value => &now[key] == value,
                    })
                })
            },
        );
        self.send(target, call).await
    }

    async fn set_customer_fields(
        &self,
        target: &Target,
        customer: &str,
        fields: &BTreeMap<String, Json>,
    ) -> Result<Answer, ClientError> {
        let path = customer_path(customer);
        let wanted = fields.clone();
        let call = Call::change(
            Method::PATCH,
            format!("{path}custom_fields/"),
            Some(json!({"custom_fields": fields})),
        )
        .read_back(path, move |now| fields_hold(now, &wanted));
        self.send(target, call).await
    }
}
