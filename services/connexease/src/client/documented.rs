//! The calls Connexease documents, each with the page that describes it. Base URL
//! `https://api.connexease.com`; paths end in a slash (as the pages write them); answers
//! are bare JSON; errors `{"detail": …}` or `{"non_field_errors": […]}`.
//!
//! | call | page |
//! |---|---|
//! | `Authorization: Bearer <account access token>` | help.connexease.com/dev, "Authentication" |
//! | `POST /jwt/` `{"username", "password"}` → `{"token"}`, 24 hours, `Authorization: JWT <token>` | docs.connexease.com, "Authentication" (legacy) |
//! | `GET /stats` | help.connexease.com/dev, "Endpoints": per-channel message, customer and response-time counters, agents by uuid and name |
//! | `GET /templates/` | help.connexease.com/dev, "Templates" |
//! | `POST /template_message/single/` | help.connexease.com/dev, "Templates" |
//!
//! The members of `/stats` and of a template message's body are read and written as the
//! pages describe them in words; their exact names are to be confirmed with Connexease
//! (README, "Before going live").

use reqwest::Method;
use serde_json::{Value as Json, json};
use switchboard_secrets::Secret;

use super::{Answer, Attempt, Call, ClientError, HttpConnexease, Target, items};

/// `POST /jwt/`.
pub const JWT: &str = "/jwt/";
/// `GET /stats`.
pub const STATS: &str = "/stats";
/// `GET /templates/`.
pub const TEMPLATES: &str = "/templates/";
/// `POST /template_message/single/`.
pub const TEMPLATE_MESSAGE_SINGLE: &str = "/template_message/single/";

/// A template message to one recipient (docs: "Templates"; member names to confirm).
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateMessage {
    /// The channel's uuid it is sent on.
    pub channel: String,
    /// The template's uuid.
    pub template: String,
    /// The recipient's phone number, in international form.
    pub phone: String,
    /// The template's parameters, in order.
    pub parameters: Vec<String>,
}

impl HttpConnexease {
    /// A JWT for `username` (docs.connexease.com, "Authentication"): `POST /jwt/` with the
    /// username and password; retried on 5xx and failures to connect.
    pub(super) async fn jwt(
        &self,
        target: &Target,
        username: &str,
        password: &Secret,
    ) -> Result<Secret, ClientError> {
        let body = json!({"username": username, "password": password.expose()});
        let mut backoff = self.policy.initial_backoff;
        for attempt in 1..=self.policy.attempts {
            let last = attempt == self.policy.attempts;
            match self
                .attempt(target, &Method::POST, JWT, Some(&body), None)
                .await?
            {
                Attempt::Answered(200..=299, _, answer, _) => {
                    return answer["token"]
                        .as_str()
                        .filter(|t| !t.is_empty())
                        .map(|t| Secret::new(t.to_owned()))
                        .ok_or_else(|| {
                            ClientError::Unauthorized("POST /jwt/ answered no token".into())
                        });
                }
                Attempt::Answered(400 | 401 | 403, _, _, message) => {
                    return Err(ClientError::Unauthorized(message));
                }
                Attempt::Answered(status @ 500..=599, _, _, message) if last => {
                    return Err(ClientError::Server {
                        status,
                        message,
                        attempts: attempt,
                    });
                }
                Attempt::Answered(500..=599 | 429, ..) | Attempt::NotSent(_) if !last => {}
                Attempt::Answered(status, _, _, message) => {
                    return Err(ClientError::Server {
                        status,
                        message,
                        attempts: attempt,
                    });
                }
                Attempt::NotSent(message) | Attempt::NoAnswer(message) => {
                    return Err(ClientError::Network {
                        message,
                        attempts: attempt,
                    });
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.policy.max_backoff);
        }
        unreachable!("the last attempt returns")
    }

    /// `GET /stats` (help.connexease.com/dev, "Endpoints").
    pub async fn get_stats(&self, target: &Target) -> Result<Answer, ClientError> {
        self.send(target, Call::get(STATS)).await
    }

    /// `GET /templates/` (help.connexease.com/dev, "Templates"): the account's templates,
    /// from a bare list or a page's `results`.
    pub async fn templates(&self, target: &Target) -> Result<(Vec<Json>, u32), ClientError> {
        let answer = self.send(target, Call::get(TEMPLATES)).await?;
        Ok((items(&answer.body), answer.attempts))
    }

    /// `POST /template_message/single/` (help.connexease.com/dev, "Templates"). A message
    /// cannot be read back, so one that got no answer fails as unknown, never sent twice.
    pub async fn send_template(
        &self,
        target: &Target,
        message: &TemplateMessage,
    ) -> Result<Answer, ClientError> {
        let body = json!({
            "channel": message.channel,
            "template": message.template,
            "phone": message.phone,
            "parameters": message.parameters,
        });
        self.send(
            target,
            Call::change(Method::POST, TEMPLATE_MESSAGE_SINGLE, Some(body)),
        )
        .await
    }
}
