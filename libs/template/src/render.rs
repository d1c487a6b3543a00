//! `{{variable}}` rendering for the three places an outgoing request has templates: the URL
//! (each value percent-encoded for where it lands), headers (no line breaks may be
//! injected), and JSON bodies (a string that is one whole `{{ expression }}` keeps the
//! JSON type of its value; inside longer strings values are text, escaped by JSON itself).
//!
//! The engine is minijinja with strict undefined values and a fuel limit: a missing
//! variable is an error that names it (unless the template gives a `default`), and no
//! template can loop forever.

use std::collections::BTreeSet;

use minijinja::value::{Serde, Value};
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value as Json;

use crate::TemplateError;

/// Everything but RFC 3986's unreserved characters is encoded, so a value can never add a
/// path segment, a query parameter or a fragment.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Bounds on every template and on what it may produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one template string.
    pub template_bytes: usize,
    /// Bytes of one rendered output (a URL, a header, a whole JSON body).
    pub output_bytes: usize,
    /// Nesting depth of a JSON body template.
    pub depth: usize,
    /// Instructions one render may execute.
    pub fuel: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            template_bytes: 64 * 1024,
            output_bytes: 1024 * 1024,
            depth: 32,
            fuel: 50_000,
        }
    }
}

/// Renders templates against a JSON object of variables (`{"conversation": {...}, ...}`).
pub struct Renderer {
    /// Values written as they are: headers and strings inside JSON bodies.
    text: Environment<'static>,
    /// Values percent-encoded: URLs.
    url: Environment<'static>,
    limits: Limits,
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl Renderer {
    pub fn new(limits: Limits) -> Self {
        let text = environment(limits, |out, value| out.write_str(&value.to_string()));
        let url = environment(limits, |out, value| {
            if value.is_safe() {
                out.write_str(&value.to_string())
            } else {
                write!(
                    out,
                    "{}",
                    utf8_percent_encode(&value.to_string(), COMPONENT)
                )
            }
        });
        Self { text, url, limits }
    }

    /// Renders a URL template. Every substituted value is percent-encoded as a path segment
    /// or query component (use `| safe` to insert a value as it is); the result must be an
    /// absolute `http` or `https` URL.
    pub fn render_url(&self, template: &str, vars: &Json) -> Result<url::Url, TemplateError> {
        let rendered = self.render_with(&self.url, "url", template, vars)?;
        // URL parsing resolves `.` and `..` segments (also written `%2e`), so a value like
        // `..` would climb out of the path the template chose: refuse them.
        if has_dot_segment(&rendered) {
            return Err(TemplateError::Invalid {
                place: "url".into(),
                reason:
                    "the URL path has a `.` or `..` segment; a value cannot change the path's level"
                        .into(),
            });
        }
        let url = url::Url::parse(&rendered).map_err(|e| TemplateError::Invalid {
            place: "url".into(),
            reason: format!("`{}` is not a URL: {e}", shorten(&rendered)),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(TemplateError::Invalid {
                place: "url".into(),
                reason: format!("scheme `{}` is not http or https", url.scheme()),
            });
        }
        Ok(url)
    }

    /// Renders a header value; a value that would add a line break is refused.
    pub fn render_header(
        &self,
        name: &str,
        template: &str,
        vars: &Json,
    ) -> Result<String, TemplateError> {
        let place = format!("headers.{name}");
        let rendered = self.render_with(&self.text, &place, template, vars)?;
        if rendered.contains(['\r', '\n']) {
            return Err(TemplateError::Invalid {
                place,
                reason: "a header value cannot contain a line break".into(),
            });
        }
        Ok(rendered)
    }

    /// Renders plain text (a message, say).
    pub fn render_text(&self, template: &str, vars: &Json) -> Result<String, TemplateError> {
        self.render_with(&self.text, "text", template, vars)
    }

    /// Renders a JSON body template: every string in it is a template; a string that is one
    /// whole `{{ expression }}` becomes the expression's value with its JSON type.
    pub fn render_json(&self, template: &Json, vars: &Json) -> Result<Json, TemplateError> {
        let rendered = self.render_json_at(template, vars, "body", 0)?;
        let size = serde_json::to_vec(&rendered)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > self.limits.output_bytes {
            return Err(TemplateError::TooLarge {
                place: "body".into(),
                limit: self.limits.output_bytes,
            });
        }
        Ok(rendered)
    }

    /// The variables a template refers to, as dotted paths (`conversation.id`), found by
    /// static analysis; for checking definitions before anything runs.
    pub fn variables(&self, template: &str) -> Result<BTreeSet<String>, TemplateError> {
        self.check_size("template", template)?;
        let compiled = self
            .text
            .template_from_str(template)
            .map_err(|e| syntax("template", &e))?;
        Ok(self.without_globals(compiled.undeclared_variables(true)))
    }

    /// Drops names that are the environment's own functions (`date_add`, `range`, ...).
    fn without_globals(&self, names: impl IntoIterator<Item = String>) -> BTreeSet<String> {
        let globals: BTreeSet<&str> = self.text.globals().map(|(name, _)| name).collect();
        names
            .into_iter()
            .filter(|name| !globals.contains(name.split('.').next().unwrap_or_default()))
            .collect()
    }

    /// The variables of every string in a JSON body template.
    pub fn json_variables(&self, template: &Json) -> Result<BTreeSet<String>, TemplateError> {
        let mut out = BTreeSet::new();
        match template {
            Json::String(s) => out.extend(self.variables(s)?),
            Json::Array(items) => {
                for item in items {
                    out.extend(self.json_variables(item)?);
                }
            }
            Json::Object(map) => {
                for value in map.values() {
                    out.extend(self.json_variables(value)?);
                }
            }
            _ => {}
        }
        Ok(out)
    }

    fn render_json_at(
        &self,
        template: &Json,
        vars: &Json,
        place: &str,
        depth: usize,
    ) -> Result<Json, TemplateError> {
        if depth > self.limits.depth {
            return Err(TemplateError::TooDeep {
                place: place.into(),
                limit: self.limits.depth,
            });
        }
        Ok(match template {
            Json::String(s) => match whole_expression(s) {
                Some(expression) => self.evaluate(place, expression, vars)?,
                None => Json::String(self.render_with(&self.text, place, s, vars)?),
            },
            Json::Array(items) => Json::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        self.render_json_at(item, vars, &format!("{place}[{i}]"), depth + 1)
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Json::Object(map) => Json::Object(
                map.iter()
                    .map(|(key, value)| {
                        self.render_json_at(value, vars, &format!("{place}.{key}"), depth + 1)
                            .map(|v| (key.clone(), v))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            other => other.clone(),
        })
    }

    /// Evaluates one expression (`input.price * 1.2 | round(2)`, `days_between(a, b)`) to
    /// a JSON value, with the same strictness, functions and limits as templates.
    pub fn evaluate_expression(
        &self,
        place: &str,
        expression: &str,
        vars: &Json,
    ) -> Result<Json, TemplateError> {
        self.evaluate(place, expression, vars)
    }

    /// The variables an expression refers to, as dotted paths.
    pub fn expression_variables(
        &self,
        expression: &str,
    ) -> Result<BTreeSet<String>, TemplateError> {
        self.check_size("expression", expression)?;
        let compiled = self
            .text
            .compile_expression(expression)
            .map_err(|e| syntax("expression", &e))?;
        Ok(self.without_globals(compiled.undeclared_variables(true)))
    }

    fn evaluate(&self, place: &str, expression: &str, vars: &Json) -> Result<Json, TemplateError> {
        self.check_size(place, expression)?;
        let compiled = self
            .text
            .compile_expression(expression)
            .map_err(|e| syntax(place, &e))?;
        let value = compiled.eval(context(vars)).map_err(|e| {
            // An operation on a missing value fails as an invalid operation, not as an
            // undefined one: name the missing variable either way.
            let mut used: Vec<String> = self
                .without_globals(compiled.undeclared_variables(true))
                .into_iter()
                .collect();
            used.sort();
            match used.into_iter().find(|name| lookup(vars, name).is_none()) {
                Some(name) => TemplateError::MissingVariable {
                    place: place.into(),
                    name,
                },
                None => self.render_error(place, expression, &e, vars),
            }
        })?;
        if value.is_undefined() {
            return Err(TemplateError::MissingVariable {
                place: place.into(),
                name: expression.trim().to_owned(),
            });
        }
        serde_json::to_value(&value).map_err(|e| TemplateError::Invalid {
            place: place.into(),
            reason: format!("`{expression}` has no JSON form: {e}"),
        })
    }

    fn render_with(
        &self,
        env: &Environment<'static>,
        place: &str,
        template: &str,
        vars: &Json,
    ) -> Result<String, TemplateError> {
        self.check_size(place, template)?;
        let rendered = env
            .render_str(template, context(vars))
            .map_err(|e| self.render_error(place, template, &e, vars))?;
        if rendered.len() > self.limits.output_bytes {
            return Err(TemplateError::TooLarge {
                place: place.into(),
                limit: self.limits.output_bytes,
            });
        }
        Ok(rendered)
    }

    fn check_size(&self, place: &str, template: &str) -> Result<(), TemplateError> {
        if template.len() > self.limits.template_bytes {
            return Err(TemplateError::TooLarge {
                place: place.into(),
                limit: self.limits.template_bytes,
            });
        }
        Ok(())
    }

    /// Turns an engine error into ours, naming the missing variable when that is what
    /// went wrong.
    fn render_error(
        &self,
        place: &str,
        template: &str,
        error: &Error,
        vars: &Json,
    ) -> TemplateError {
        match error.kind() {
            ErrorKind::UndefinedError => {
                let missing = self
                    .text
                    .template_from_str(template)
                    .ok()
                    .and_then(|t| {
                        let mut names: Vec<String> =
                            t.undeclared_variables(true).into_iter().collect();
                        names.sort();
                        names.into_iter().find(|name| lookup(vars, name).is_none())
                    })
                    .or_else(|| {
                        // An expression, not a template: its own text names what is missing.
                        Some(template.trim().to_owned()).filter(|t| !t.contains("{{"))
                    });
                TemplateError::MissingVariable {
                    place: place.into(),
                    name: missing.unwrap_or_else(|| "a variable".into()),
                }
            }
            ErrorKind::OutOfFuel => TemplateError::TooExpensive {
                place: place.into(),
            },
            ErrorKind::SyntaxError => syntax(place, error),
            _ => TemplateError::Invalid {
                place: place.into(),
                reason: error
                    .detail()
                    .unwrap_or(&error.kind().to_string())
                    .to_owned(),
            },
        }
    }
}

fn environment(
    limits: Limits,
    write: fn(&mut minijinja::Output, &Value) -> std::fmt::Result,
) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(limits.fuel));
    env.set_recursion_limit(limits.depth.max(1));
    env.set_formatter(move |out, _state, value| {
        if value.is_undefined() {
            return Err(Error::from(ErrorKind::UndefinedError));
        }
        if value.is_none() {
            return Ok(());
        }
        write(out, value).map_err(Error::from)
    });
    crate::functions::register(&mut env);
    env.add_filter("json", |value: Value| -> Result<Value, Error> {
        serde_json::to_string(&value)
            .map(Value::from)
            .map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))
    });
    env
}

fn context(vars: &Json) -> Value {
    Value::from(Serde(vars))
}

fn syntax(place: &str, error: &Error) -> TemplateError {
    TemplateError::Syntax {
        place: place.into(),
        reason: error
            .detail()
            .map(str::to_owned)
            .unwrap_or_else(|| error.kind().to_string()),
    }
}

/// Whether the path of a rendered URL has a dot segment, in any spelling.
fn has_dot_segment(url: &str) -> bool {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let Some(path_start) = after_scheme.find('/') else {
        return false;
    };
    let path = &after_scheme[path_start..];
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

/// `Some(expression)` when `s` is exactly one `{{ expression }}`.
fn whole_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}") && !inner.trim().is_empty()).then_some(inner)
}

/// The value at a dotted path in the variables, if any.
pub(crate) fn lookup<'a>(vars: &'a Json, path: &str) -> Option<&'a Json> {
    path.split('.').try_fold(vars, |value, key| value.get(key))
}

fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}
