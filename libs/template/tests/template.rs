//! Rendering and mapping as a caller sees them.

use proptest::prelude::*;
use serde_json::{Value, json};
use switchboard_template::{
    Kind, Limits, Mapping, MappingError, Renderer, TemplateError, map_response,
};

fn vars() -> Value {
    json!({
        "conversation": {"id": "conv_1", "channel": "widget"},
        "lead": {"email": "ada@example.com", "name": "Ada \"the\" Lovelace"},
        "order": {"number": "A/42?x=1&y=2#frag", "total": 12.5, "items": 3, "paid": true,
                  "tags": ["a", "b"], "customer": {"vip": false}},
        "nothing": null,
    })
}

#[test]
fn url_values_are_encoded_for_their_place() {
    let r = Renderer::default();
    let url = r
        .render_url("https://api.example.com/orders/{{ order.number }}?q={{ order.number }}&c={{ conversation.id }}", &vars())
        .unwrap();
    assert_eq!(
        url.as_str(),
        "https://api.example.com/orders/A%2F42%3Fx%3D1%26y%3D2%23frag?q=A%2F42%3Fx%3D1%26y%3D2%23frag&c=conv_1"
    );
    assert_eq!(
        url.path_segments().unwrap().count(),
        2,
        "a value adds no path segment"
    );
    assert_eq!(url.query_pairs().count(), 2, "nor a query parameter");
    assert!(url.fragment().is_none());
    // `safe` opts a value out of encoding, for a base URL kept in a variable.
    let base = json!({"base": "https://api.example.com/v2"});
    assert_eq!(
        r.render_url("{{ base | safe }}/x", &base).unwrap().as_str(),
        "https://api.example.com/v2/x"
    );
}

#[test]
fn values_cannot_climb_out_of_the_path() {
    let r = Renderer::default();
    for value in ["..", ".", "%2e%2e", ".%2E"] {
        let err = r
            .render_url(
                "https://api.test/orders/{{ v | safe }}/items",
                &json!({"v": value}),
            )
            .unwrap_err();
        assert!(
            matches!(err, TemplateError::Invalid { .. }),
            "{value}: {err:?}"
        );
    }
    let err = r
        .render_url("https://api.test/orders/{{ v }}/items", &json!({"v": ".."}))
        .unwrap_err();
    assert!(err.to_string().contains("`..`"), "{err}");
    // Dots inside a value are fine.
    assert!(
        r.render_url("https://api.test/files/{{ v }}", &json!({"v": "a..b.txt"}))
            .is_ok()
    );
}

#[test]
fn urls_must_be_http() {
    let r = Renderer::default();
    for bad in ["ftp://example.com/", "not a url", "file:///etc/passwd"] {
        assert!(
            matches!(
                r.render_url(bad, &vars()),
                Err(TemplateError::Invalid { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn missing_variables_are_named_unless_defaulted() {
    let r = Renderer::default();
    let err = r
        .render_url("https://x.test/{{ order.missing }}", &vars())
        .unwrap_err();
    assert_eq!(
        err,
        TemplateError::MissingVariable {
            place: "url".into(),
            name: "order.missing".into()
        }
    );
    assert!(err.to_string().contains("`order.missing`"));
    let err = r
        .render_json(&json!({"a": {"b": "{{ agent.id }}"}}), &vars())
        .unwrap_err();
    assert_eq!(
        err,
        TemplateError::MissingVariable {
            place: "body.a.b".into(),
            name: "agent.id".into()
        }
    );
    let err = r
        .render_json(&json!({"t": "hello {{ agent.id }}"}), &vars())
        .unwrap_err();
    assert!(
        matches!(err, TemplateError::MissingVariable { ref name, .. } if name == "agent.id"),
        "{err:?}"
    );
    assert_eq!(
        r.render_text("{{ order.missing | default('none yet') }}", &vars())
            .unwrap(),
        "none yet"
    );
    assert_eq!(
        r.render_json(&json!("{{ order.missing | default(7) }}"), &vars())
            .unwrap(),
        json!(7)
    );
}

#[test]
fn whole_expressions_keep_their_json_type() {
    let r = Renderer::default();
    let body = json!({
        "total": "{{ order.total }}",
        "items": "{{ order.items }}",
        "paid": "{{order.paid}}",
        "tags": "{{ order.tags }}",
        "customer": "{{ order.customer }}",
        "nothing": "{{ nothing }}",
        "sum": "{{ order.items * 2 }}",
        "text": "Order {{ order.number }} for {{ lead.name }}",
        "nested": [{"email": "{{ lead.email }}"}, 1, true, null],
    });
    let out = r.render_json(&body, &vars()).unwrap();
    assert_eq!(
        out,
        json!({
            "total": 12.5,
            "items": 3,
            "paid": true,
            "tags": ["a", "b"],
            "customer": {"vip": false},
            "nothing": null,
            "sum": 6,
            "text": "Order A/42?x=1&y=2#frag for Ada \"the\" Lovelace",
            "nested": [{"email": "ada@example.com"}, 1, true, null],
        })
    );
    // Quotes inside strings stay inside the string: the body is still one valid object.
    let serialized = serde_json::to_string(&out).unwrap();
    assert!(serialized.contains(r#"for Ada \"the\" Lovelace""#));
}

#[test]
fn filters() {
    let r = Renderer::default();
    assert_eq!(
        r.render_text("{{ order.tags | json }}", &vars()).unwrap(),
        r#"["a","b"]"#
    );
    assert_eq!(
        r.render_text("{{ lead.name | urlencode }}", &vars())
            .unwrap(),
        "Ada%20%22the%22%20Lovelace"
    );
    assert_eq!(
        r.render_text("{{ conversation.channel | upper }}", &vars())
            .unwrap(),
        "WIDGET"
    );
}

#[test]
fn headers_cannot_gain_lines() {
    let r = Renderer::default();
    let evil = json!({"v": "x\r\nX-Admin: yes"});
    let err = r.render_header("X-Trace", "{{ v }}", &evil).unwrap_err();
    assert!(matches!(err, TemplateError::Invalid { ref place, .. } if place == "headers.X-Trace"));
    assert_eq!(
        r.render_header("Authorization", "Bearer {{ conversation.id }}", &vars())
            .unwrap(),
        "Bearer conv_1"
    );
}

#[test]
fn work_size_and_depth_are_bounded() {
    let r = Renderer::new(Limits {
        template_bytes: 1024,
        output_bytes: 4096,
        depth: 4,
        fuel: 5_000,
    });
    assert!(matches!(
        r.render_text("{% for i in range(100000) %}x{% endfor %}", &vars()),
        Err(TemplateError::TooExpensive { .. })
    ));
    assert!(matches!(
        r.render_text(&"x".repeat(1025), &vars()),
        Err(TemplateError::TooLarge { .. })
    ));
    assert!(matches!(
        r.render_text(
            "{% for i in range(1000) %}{{ lead.email }}{% endfor %}",
            &vars()
        ),
        Err(TemplateError::TooLarge { .. }) | Err(TemplateError::TooExpensive { .. })
    ));
    let deep = json!({"a": {"b": {"c": {"d": {"e": {"f": "{{ conversation.id }}"}}}}}});
    assert!(matches!(
        r.render_json(&deep, &vars()),
        Err(TemplateError::TooDeep { .. })
    ));
    assert!(matches!(
        r.render_text("{{ unclosed", &vars()),
        Err(TemplateError::Syntax { .. })
    ));
}

#[test]
fn referenced_variables_are_found_before_running() {
    let r = Renderer::default();
    let found = r
        .json_variables(
            &json!({"a": "{{ conversation.id }}", "b": ["x {{ lead.email | default('') }}"]}),
        )
        .unwrap();
    assert!(found.contains("conversation.id"), "{found:?}");
    assert!(found.contains("lead.email"), "{found:?}");
}

fn mapping(name: &str, path: &str, kind: Kind) -> Mapping {
    Mapping {
        name: name.into(),
        path: path.into(),
        kind,
        required: true,
        default: None,
    }
}

#[test]
fn response_mapping_extracts_typed_values() {
    let body = json!({
        "data": {
            "status": "shipped",
            "items": [{"sku": "A", "qty": "2"}, {"sku": "B", "qty": 5}],
            "total": "19.90",
            "express": "true",
        }
    });
    let out = map_response(
        &body,
        &[
            mapping("status", "data.status", Kind::String),
            mapping("first_sku", "$.data.items[0].sku", Kind::String),
            mapping("first_qty", "data.items[0].qty", Kind::Integer),
            mapping("skus", "$.data.items[*].sku", Kind::Array),
            mapping("total", "data.total", Kind::Number),
            mapping("express", "data.express", Kind::Boolean),
            mapping("items", "data.items", Kind::Array),
        ],
    )
    .unwrap();
    assert_eq!(out["status"], json!("shipped"));
    assert_eq!(out["first_sku"], json!("A"));
    assert_eq!(out["first_qty"], json!(2));
    assert_eq!(out["skus"], json!(["A", "B"]));
    assert_eq!(out["total"], json!(19.9));
    assert_eq!(out["express"], json!(true));
    assert_eq!(out["items"].as_array().unwrap().len(), 2);
}

#[test]
fn response_mapping_errors_say_what_and_where() {
    let body = json!({"data": {"status": "shipped", "n": "many"}});
    assert_eq!(
        map_response(&body, &[mapping("eta", "data.eta", Kind::String)]).unwrap_err(),
        MappingError::Missing {
            name: "eta".into(),
            path: "data.eta".into()
        }
    );
    let err = map_response(&body, &[mapping("n", "data.n", Kind::Integer)]).unwrap_err();
    assert!(
        matches!(
            err,
            MappingError::WrongType {
                expected: "an integer",
                ..
            }
        ),
        "{err:?}"
    );
    let optional = Mapping {
        required: false,
        default: Some(json!("unknown")),
        ..mapping("eta", "data.eta", Kind::String)
    };
    assert_eq!(
        map_response(&body, &[optional]).unwrap()["eta"],
        json!("unknown")
    );
    let skipped = Mapping {
        required: false,
        ..mapping("eta", "data.eta", Kind::String)
    };
    assert!(map_response(&body, &[skipped]).unwrap().is_empty());
    assert!(matches!(
        mapping("x", "$..[", Kind::Any).validate(),
        Err(MappingError::InvalidPath { .. })
    ));
    assert!(matches!(
        mapping("Bad Name", "a", Kind::Any).validate(),
        Err(MappingError::InvalidName { .. })
    ));
}

proptest! {
    /// Whatever a value holds, in a URL it stays one path segment and one query value and
    /// decodes back to itself.
    #[test]
    fn any_value_stays_in_its_url_component(value in "\\PC{0,40}") {
        let r = Renderer::default();
        let rendered = r.render_url("https://h.test/a/{{ v }}/b?q={{ v }}", &json!({"v": value}));
        if value == "." || value == ".." {
            prop_assert!(matches!(rendered, Err(TemplateError::Invalid { .. })), "{rendered:?}");
            return Ok(());
        }
        let url = rendered.unwrap();
        let segments: Vec<_> = url.path_segments().unwrap().collect();
        prop_assert_eq!(segments.len(), 3);
        let decoded = percent_encoding::percent_decode_str(segments[1]).decode_utf8().unwrap();
        prop_assert_eq!(decoded.as_ref(), value.as_str());
        let pairs: Vec<_> = url.query_pairs().collect();
        prop_assert_eq!(pairs.len(), 1);
        prop_assert_eq!(pairs[0].1.as_ref(), value.as_str());
    }

    /// A whole-expression string gives back exactly the JSON it refers to.
    #[test]
    fn whole_expressions_round_trip(value in json_value()) {
        let r = Renderer::default();
        prop_assert_eq!(r.render_json(&json!("{{ v }}"), &json!({"v": value.clone()})).unwrap(), value);
    }

    /// Text around a value never breaks the JSON around it.
    #[test]
    fn embedded_values_stay_strings(text in "\\PC{0,40}") {
        let r = Renderer::default();
        let out = r.render_json(&json!({"t": "<{{ v }}>"}), &json!({"v": text.clone()})).unwrap();
        prop_assert_eq!(out, json!({"t": format!("<{text}>")}));
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
