//! The kinds that run without I/O: calculations, validations and the checking of a form's
//! submission. Deterministic: the same variables give the same outputs, every time.

use serde_json::{Map, Value as Json, json};
use switchboard_proto::actions::v1::{CalculationSpec, FormField, FormSpec, ValidationSpec};
use switchboard_template::Renderer;

use super::kinds::compile_regex;

/// One value that did not pass: where, which rule, and what to tell the user.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Invalid {
    pub field: String,
    pub rule: String,
    pub message: String,
}

impl Invalid {
    fn new(field: &str, rule: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            rule: rule.to_owned(),
            message: message.into(),
        }
    }
}

/// Evaluates each calculation in order; later ones read earlier results as `outputs.<name>`.
pub fn calculate(
    renderer: &Renderer,
    spec: &CalculationSpec,
    variables: &Json,
) -> Result<Map<String, Json>, String> {
    let mut scope = variables.clone();
    let mut outputs = Map::new();
    for calculation in &spec.outputs {
        if let Some(object) = scope.as_object_mut() {
            object.insert("outputs".into(), Json::Object(outputs.clone()));
        }
        let value = renderer
            .evaluate_expression(&calculation.name, &calculation.expression, &scope)
            .map_err(|e| e.to_string())?;
        if let Json::Number(n) = &value
            && n.as_f64().is_some_and(|f| !f.is_finite())
        {
            return Err(format!(
                "{}: the result is not a finite number",
                calculation.name
            ));
        }
        outputs.insert(calculation.name.clone(), value);
    }
    Ok(outputs)
}

/// Every rule that does not hold. A missing or empty value fails only `required`; the other
/// rules check values that are present.
pub fn check_rules(spec: &ValidationSpec, variables: &Json) -> Vec<Invalid> {
    let mut failed = Vec::new();
    for rule in &spec.rules {
        let value = rule
            .field
            .split('.')
            .try_fold(variables, |value, key| value.get(key))
            .filter(|v| !v.is_null() && v.as_str() != Some(""));
        let text = value.map(|v| match v {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        });
        let message = |default: String| {
            if rule.message.is_empty() {
                default
            } else {
                rule.message.clone()
            }
        };
        let problem = match (rule.rule.as_str(), value, text.as_deref()) {
            ("required", None, _) => Some(message(format!("{} is required", rule.field))),
            (_, None, _) | (_, _, None) => None,
            ("email", _, Some(text)) => (!email_address::EmailAddress::is_valid(text))
                .then(|| message(format!("`{text}` is not an email address"))),
            ("phone_e164", _, Some(text)) => (!is_e164(text)).then(|| {
                message(format!(
                    "`{text}` is not a phone number in E.164 form (+14155550100)"
                ))
            }),
            ("regex", _, Some(text)) => match compile_regex(&rule.pattern) {
                Ok(re) if re.is_match(text) => None,
                Ok(_) => Some(message(format!("`{text}` does not have the expected form"))),
                Err(e) => Some(format!("the pattern is invalid: {e}")),
            },
            ("range", Some(value), Some(text)) => match number(value) {
                Some(n) => {
                    out_of(n, rule.min, rule.max).map(|bound| message(format!("{n} is {bound}")))
                }
                None => Some(message(format!("`{text}` is not a number"))),
            },
            ("length", _, Some(text)) => {
                let length = text.chars().count() as f64;
                out_of(length, rule.min, rule.max)
                    .map(|bound| message(format!("{length} characters is {bound}")))
            }
            ("one_of", _, Some(text)) => (!rule.options.iter().any(|o| o == text)).then(|| {
                message(format!(
                    "`{text}` is not one of {}",
                    rule.options.join(", ")
                ))
            }),
            _ => None,
        };
        if let Some(problem) = problem {
            failed.push(Invalid::new(&rule.field, &rule.rule, problem));
        }
    }
    failed
}

/// A form's submission checked field by field and converted to each field's type (answers
/// from a chat arrive as text): the values by field name, or every problem.
pub fn check_form(form: &FormSpec, input: &Json) -> Result<Map<String, Json>, Vec<Invalid>> {
    let mut values = Map::new();
    let mut failed = Vec::new();
    for field in &form.fields {
        let raw = input
            .get(&field.name)
            .filter(|v| !v.is_null() && v.as_str().is_none_or(|s| !s.trim().is_empty()));
        let Some(raw) = raw else {
            if field.required {
                failed.push(Invalid::new(
                    &field.name,
                    "required",
                    format!("{} is required", label(field)),
                ));
            }
            continue;
        };
        match convert_answer(field, raw) {
            Ok(value) => {
                values.insert(field.name.clone(), value);
            }
            Err(problem) => failed.push(problem),
        }
    }
    if let Some(extra) = input.as_object().and_then(|o| {
        o.keys()
            .find(|k| !form.fields.iter().any(|f| &f.name == *k))
    }) {
        failed.push(Invalid::new(extra, "unknown", "the form has no such field"));
    }
    if failed.is_empty() {
        Ok(values)
    } else {
        Err(failed)
    }
}

fn convert_answer(field: &FormField, raw: &Json) -> Result<Json, Invalid> {
    let text = match raw {
        Json::String(s) => s.trim().to_owned(),
        other => other.to_string(),
    };
    let bad = |rule: &str, message: String| Invalid::new(&field.name, rule, message);
    let value = match field.r#type.as_str() {
        "email" => {
            if !email_address::EmailAddress::is_valid(&text) {
                return Err(bad("email", format!("`{text}` is not an email address")));
            }
            json!(text)
        }
        "phone" => {
            let compact: String = text
                .chars()
                .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
                .collect();
            if !is_e164(&compact) {
                return Err(bad(
                    "phone",
                    format!("`{text}` is not a phone number with its country code (+14155550100)"),
                ));
            }
            json!(compact)
        }
        "number" | "integer" => {
            let n: f64 = text
                .parse()
                .ok()
                .filter(|n: &f64| n.is_finite())
                .ok_or_else(|| bad(&field.r#type, format!("`{text}` is not a number")))?;
            if field.r#type == "integer" && n.fract() != 0.0 {
                return Err(bad("integer", format!("`{text}` is not a whole number")));
            }
            if let Some(bound) = out_of(n, field.min, field.max) {
                return Err(bad("range", format!("{n} is {bound}")));
            }
            if field.r#type == "integer" {
                json!(n as i64)
            } else {
                json!(n)
            }
        }
        "boolean" => match text.to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "1" | "on" => json!(true),
            "false" | "no" | "n" | "0" | "off" => json!(false),
            _ => return Err(bad("boolean", format!("`{text}` is not yes or no"))),
        },
        "date" => {
            let format = time::macros::format_description!("[year]-[month]-[day]");
            if time::Date::parse(&text, format).is_err() {
                return Err(bad("date", format!("`{text}` is not a date (YYYY-MM-DD)")));
            }
            json!(text)
        }
        "select" => {
            if !field.options.contains(&text) {
                return Err(bad(
                    "select",
                    format!("`{text}` is not one of {}", field.options.join(", ")),
                ));
            }
            json!(text)
        }
        _ => {
            let length = text.chars().count() as f64;
            if let Some(bound) = out_of(length, field.min, field.max) {
                return Err(bad("length", format!("{length} characters is {bound}")));
            }
            json!(text)
        }
    };
    if !field.pattern.is_empty()
        && !matches!(field.r#type.as_str(), "number" | "integer" | "boolean")
    {
        let matches = compile_regex(&field.pattern).is_ok_and(|re| re.is_match(&text));
        if !matches {
            return Err(bad(
                "pattern",
                format!("`{text}` does not have the form {} expects", label(field)),
            ));
        }
    }
    Ok(value)
}

fn label(field: &FormField) -> &str {
    if field.label.is_empty() {
        &field.name
    } else {
        &field.label
    }
}

/// E.164: `+`, a country code that does not start with 0, at most 15 digits in all.
fn is_e164(text: &str) -> bool {
    let Some(digits) = text.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

fn number(value: &Json) -> Option<f64> {
    match value {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|n: &f64| n.is_finite())
}

/// `Some("below 3")` when `n` is outside the bounds.
fn out_of(n: f64, min: Option<f64>, max: Option<f64>) -> Option<String> {
    if let Some(min) = min.filter(|min| n < *min) {
        return Some(format!("below the minimum of {min}"));
    }
    if let Some(max) = max.filter(|max| n > *max) {
        return Some(format!("above the maximum of {max}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use switchboard_proto::actions::v1::{Calculation, ValidationRule};

    use super::*;

    #[test]
    fn calculations_chain_and_use_functions() {
        let spec = CalculationSpec {
            outputs: vec![
                Calculation {
                    name: "subtotal".into(),
                    expression: "input.price * input.quantity".into(),
                },
                Calculation {
                    name: "total".into(),
                    expression: "(outputs.subtotal * 1.2) | round(2)".into(),
                },
                Calculation {
                    name: "due".into(),
                    expression: "date_add(input.ordered, days=30)".into(),
                },
                Calculation {
                    name: "miles".into(),
                    expression: "convert(input.km, 'km', 'mi') | round(1)".into(),
                },
            ],
        };
        let vars =
            json!({"input": {"price": 9.99, "quantity": 3, "ordered": "2024-02-15", "km": 42.195}});
        let out = calculate(&Renderer::default(), &spec, &vars).unwrap();
        assert_eq!(out["subtotal"], json!(29.97));
        assert_eq!(out["total"], json!(35.96));
        assert_eq!(out["due"], json!("2024-03-16"));
        assert_eq!(out["miles"], json!(26.2));
        let missing = calculate(&Renderer::default(), &spec, &json!({"input": {}})).unwrap_err();
        assert!(missing.contains("input.price"), "{missing}");
    }

    #[test]
    fn rules_report_every_failure() {
        let rule = |field: &str, rule: &str| ValidationRule {
            field: field.into(),
            rule: rule.into(),
            ..Default::default()
        };
        let spec = ValidationSpec {
            rules: vec![
                rule("input.email", "email"),
                rule("input.phone", "phone_e164"),
                ValidationRule {
                    min: Some(1.0),
                    max: Some(10.0),
                    ..rule("input.quantity", "range")
                },
                rule("input.name", "required"),
                ValidationRule {
                    pattern: "[A-Z]{2}-[0-9]{4}".into(),
                    message: "Order numbers look like AB-1234".into(),
                    ..rule("input.order", "regex")
                },
            ],
        };
        let good = json!({"input": {"email": "a@b.example", "phone": "+442071838750", "quantity": "3", "name": "Ada", "order": "AB-1234"}});
        assert_eq!(check_rules(&spec, &good), vec![]);
        let bad = json!({"input": {"email": "a@", "phone": "0207 183", "quantity": 11, "order": "ab-1234x"}});
        let failed: Vec<(String, String)> = check_rules(&spec, &bad)
            .into_iter()
            .map(|f| (f.field, f.message))
            .collect();
        assert_eq!(failed.len(), 5, "{failed:?}");
        assert_eq!(failed[4].1, "Order numbers look like AB-1234");
    }

    #[test]
    fn forms_convert_answers_and_name_bad_fields() {
        let field = |name: &str, r#type: &str| FormField {
            name: name.into(),
            r#type: r#type.into(),
            required: true,
            ..Default::default()
        };
        let form = FormSpec {
            fields: vec![
                field("count", "integer"),
                field("agree", "boolean"),
                field("phone", "phone"),
                FormField {
                    options: vec!["S".into(), "M".into()],
                    ..field("size", "select")
                },
            ],
            ..Default::default()
        };
        let values = check_form(
            &form,
            &json!({"count": "3", "agree": "yes", "phone": "+1 (415) 555-0100", "size": "M"}),
        )
        .unwrap();
        assert_eq!(
            Json::Object(values),
            json!({"count": 3, "agree": true, "phone": "+14155550100", "size": "M"})
        );
        let failed =
            check_form(&form, &json!({"count": "3.5", "size": "XL", "extra": 1})).unwrap_err();
        let fields: Vec<&str> = failed.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["count", "agree", "phone", "size", "extra"]);
    }
}
