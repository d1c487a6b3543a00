//! The integration aggregate: a connected service its HTTP actions share (base URL,
//! credentials, default headers, allowed methods, least permission level, a rate limit
//! counted across all of them). Pure: checks, the view callers get, and how an action's
//! request reads once its integration is applied.

use switchboard_eventlog::{EventLogError, RecordedEvent};
use switchboard_proto::actions::v1::{
    ActionDefinition, AuthKind, HttpAuth, HttpSpec, Integration, IntegrationOperation,
    IntegrationSaved, PermissionLevel,
};

use super::{StoredAuth, Violations, event_types, limits, request_spec, valid_name, validate_auth};

/// The integration stored in `event`, and whether the event deletes it; `None` for an
/// event that is not an integration's.
pub fn decode(event: &RecordedEvent) -> Result<Option<(Integration, bool)>, EventLogError> {
    let deleted = match event.event_type.as_str() {
        event_types::INTEGRATION_SAVED => false,
        event_types::INTEGRATION_DELETED => true,
        _ => return Ok(None),
    };
    Ok(event
        .decode::<IntegrationSaved>()?
        .integration
        .map(|i| (i, deleted)))
}

/// Integrations one workspace may have.
pub const PER_WORKSPACE: usize = 100;

/// The HTTP methods an action may use.
pub const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Header names that carry credentials: those belong in `auth`, where they are sealed.
const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

/// What an integration's sealed secret is bound to.
pub fn secret_owner(workspace_id: &str, integration_id: &str) -> String {
    format!("{workspace_id}/integration/{integration_id}/auth")
}

/// The key its shared rate limit is counted under.
pub fn rate_limit_key(integration: &Integration) -> String {
    format!("{}/{}", integration.workspace_id, integration.id)
}

/// The integration an action's request goes to, if it names one.
pub fn of(definition: &ActionDefinition) -> Option<&str> {
    request_spec(definition)
        .map(|http| http.integration_id.as_str())
        .filter(|id| !id.is_empty())
}

/// Every mistake in an integration as given; `previous` is the stored one a replace keeps
/// the secret of.
pub fn violations(
    integration: &Integration,
    previous: Option<&Integration>,
) -> Vec<super::FieldViolation> {
    let mut v = Violations::default();
    if !valid_name(&integration.name) {
        v.push(
            "name",
            "required: a letter, then up to 63 of a-z, 0-9 and `_`",
        );
    }
    v.max_bytes(
        "description",
        &integration.description,
        limits::DESCRIPTION_BYTES,
    );
    check_base_url(&mut v, &integration.base_url);
    if integration.headers.len() > limits::HEADERS {
        v.push("headers", format!("at most {}", limits::HEADERS));
    }
    for (name, value) in &integration.headers {
        let field = format!("headers[{name}]");
        if !super::valid_header_name(name) {
            v.push(field.clone(), "not a valid header name");
        } else if CREDENTIAL_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            v.push(
                field.clone(),
                "credentials go in `auth`, where they are sealed and never shown",
            );
        }
        if value.len() > limits::HEADER_VALUE_BYTES || reqwest_invalid_value(value) {
            v.push(
                field,
                format!(
                    "a header value of at most {} bytes, no line breaks",
                    limits::HEADER_VALUE_BYTES
                ),
            );
        }
    }
    let stored = match previous.and_then(|p| p.auth.as_ref()) {
        Some(auth) => StoredAuth::Known(auth),
        None => StoredAuth::None,
    };
    validate_auth(&mut v, integration.auth.as_ref(), stored);
    if integration.rate_limit_per_minute > limits::RATE_PER_MINUTE_MAX {
        v.push(
            "rate_limit_per_minute",
            format!("at most {}", limits::RATE_PER_MINUTE_MAX),
        );
    }
    if PermissionLevel::try_from(integration.permission_level).is_err() {
        v.push(
            "permission_level",
            format!("unknown value {}", integration.permission_level),
        );
    }
    for (i, method) in integration.allowed_methods.iter().enumerate() {
        let upper = method.to_ascii_uppercase();
        if !METHODS.contains(&upper.as_str()) {
            v.push(
                format!("allowed_methods[{i}]"),
                format!("one of {}", METHODS.join(", ")),
            );
        } else if integration.allowed_methods[..i]
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method))
        {
            v.push(format!("allowed_methods[{i}]"), "listed twice");
        }
    }
    v.found
}

fn reqwest_invalid_value(value: &str) -> bool {
    value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

fn check_base_url(v: &mut Violations, url: &str) {
    let parsed = url::Url::parse(url.trim()).ok();
    if url.len() > limits::URL_BYTES {
        v.push("base_url", format!("at most {} bytes", limits::URL_BYTES));
    } else if !(url.starts_with("https://") || url.starts_with("http://"))
        || parsed.as_ref().is_none_or(|u| u.host().is_none())
    {
        v.push(
            "base_url",
            "required: the service's base URL, `https://api.example.com/v1`",
        );
    } else if url.contains("{{") || url.contains("{%") {
        v.push(
            "base_url",
            "a fixed URL: templates go in the actions' paths",
        );
    } else if parsed.as_ref().is_some_and(|u| {
        u.query().is_some()
            || u.fragment().is_some()
            || !u.username().is_empty()
            || u.password().is_some()
    }) {
        v.push(
            "base_url",
            "no query, fragment or credentials: credentials go in `auth`",
        );
    }
}

/// Fills defaults and clears what is never stored (the plain secret, the operations).
pub fn normalize(integration: &mut Integration) {
    integration.name = integration.name.trim().to_owned();
    integration.base_url = integration.base_url.trim().trim_end_matches('/').to_owned();
    if integration.permission_level == 0 {
        integration.permission_level = PermissionLevel::Agent as i32;
    }
    for method in &mut integration.allowed_methods {
        *method = method.to_ascii_uppercase();
    }
    let auth = integration.auth.get_or_insert_with(HttpAuth::default);
    if auth.kind == 0 {
        auth.kind = AuthKind::None as i32;
    }
    auth.secret.clear();
    auth.secret_set = !auth.sealed_secret.is_empty();
    integration.operations.clear();
}

/// The integration as callers see it: no secret, sealed or not.
pub fn public_view(mut integration: Integration) -> Integration {
    if let Some(auth) = integration.auth.as_mut() {
        auth.secret_set = !auth.sealed_secret.is_empty();
        auth.secret.clear();
        auth.sealed_secret.clear();
    }
    integration
}

/// An action as one of its integration's operations.
pub fn operation(definition: &ActionDefinition) -> Option<IntegrationOperation> {
    let http = request_spec(definition)?;
    Some(IntegrationOperation {
        action_id: definition.id.clone(),
        name: definition.name.clone(),
        method: http.method.clone(),
        path: http.url.clone(),
        enabled: definition.enabled,
    })
}

/// Why `integration` does not let `http` run as it is, if it does not: the method is not
/// one it allows.
pub fn refusal(integration: &Integration, http: &HttpSpec) -> Option<String> {
    let allowed = &integration.allowed_methods;
    (!allowed.is_empty() && !allowed.iter().any(|m| m.eq_ignore_ascii_case(&http.method))).then(
        || {
            format!(
                "the integration `{}` allows only {}; this request is {}",
                integration.name,
                allowed.join(", "),
                http.method.to_ascii_uppercase()
            )
        },
    )
}

/// The request as it is sent under `integration`: the URL is the base URL and the action's
/// path, the integration's headers come first (the action's win), its credentials are the
/// ones used.
pub fn apply(http: &HttpSpec, integration: &Integration) -> HttpSpec {
    let mut applied = http.clone();
    applied.url = format!("{}{}", integration.base_url, http.url);
    for (name, value) in &integration.headers {
        if !http.headers.keys().any(|n| n.eq_ignore_ascii_case(name)) {
            applied.headers.insert(name.clone(), value.clone());
        }
    }
    applied.auth = integration.auth.clone();
    applied
}

/// The level an action runs at under `integration`: its own, raised to the integration's.
pub fn permission_level(definition: &ActionDefinition, integration: Option<&Integration>) -> i32 {
    integration.map_or(definition.permission_level, |i| {
        definition.permission_level.max(i.permission_level)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shop() -> Integration {
        Integration {
            workspace_id: "ws_1".into(),
            name: "shop".into(),
            base_url: "https://shop.example.com/api/".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_plain_integration_is_valid_and_normalized() {
        let mut shop = shop();
        assert!(violations(&shop, None).is_empty());
        normalize(&mut shop);
        assert_eq!(shop.base_url, "https://shop.example.com/api");
        assert_eq!(shop.permission_level, PermissionLevel::Agent as i32);
    }

    #[test]
    fn every_mistake_is_named() {
        let mut bad = shop();
        bad.name = "Shop".into();
        bad.base_url = "https://{{ lead.host }}/x".into();
        bad.headers
            .insert("Authorization".into(), "Bearer x".into());
        bad.allowed_methods = vec!["GET".into(), "get".into(), "TRACE".into()];
        bad.rate_limit_per_minute = 1_000_000;
        bad.auth = Some(HttpAuth {
            kind: AuthKind::Bearer as i32,
            ..Default::default()
        });
        let fields: Vec<String> = violations(&bad, None)
            .into_iter()
            .map(|v| v.field)
            .collect();
        for field in [
            "name",
            "base_url",
            "headers[Authorization]",
            "auth.secret",
            "rate_limit_per_minute",
            "allowed_methods[1]",
            "allowed_methods[2]",
        ] {
            assert!(fields.contains(&field.to_owned()), "{field} in {fields:?}");
        }
    }

    #[test]
    fn a_replace_keeps_the_stored_secret() {
        let stored = Integration {
            auth: Some(HttpAuth {
                kind: AuthKind::Bearer as i32,
                sealed_secret: vec![1, 2, 3],
                ..Default::default()
            }),
            ..shop()
        };
        let mut again = shop();
        again.auth = Some(HttpAuth {
            kind: AuthKind::Bearer as i32,
            ..Default::default()
        });
        assert!(violations(&again, Some(&stored)).is_empty());
    }

    #[test]
    fn applying_joins_the_path_and_lets_the_action_s_headers_win() {
        let mut shop = shop();
        normalize(&mut shop);
        shop.headers
            .insert("Accept".into(), "application/json".into());
        shop.headers.insert("X-Shop".into(), "1".into());
        let http = HttpSpec {
            method: "GET".into(),
            url: "/orders/{{ input.id }}".into(),
            headers: [("accept".to_owned(), "text/plain".to_owned())].into(),
            integration_id: "int_1".into(),
            ..Default::default()
        };
        let applied = apply(&http, &shop);
        assert_eq!(
            applied.url,
            "https://shop.example.com/api/orders/{{ input.id }}"
        );
        assert_eq!(applied.headers.len(), 2);
        assert_eq!(applied.headers["accept"], "text/plain");
        assert!(refusal(&shop, &http).is_none());
        shop.allowed_methods = vec!["GET".into()];
        let post = HttpSpec {
            method: "POST".into(),
            ..http
        };
        assert!(refusal(&shop, &post).unwrap().contains("allows only GET"));
    }
}
