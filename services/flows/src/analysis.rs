//! The built-in analyser: what an ended conversation was about and how it went, read from
//! its transcript by rules, with no model, so analysis, insights and post-conversation
//! workflows work out of the box. It fills the analysis schema: a summary; topics (several,
//! by keyword); sentiment (a lexicon over what the customer wrote); request type
//! (question, request, problem, feedback); urgency, customer effort and churn risk (low,
//! medium, high); resolution (from the status and who answered); knowledge gap (the
//! agent said it could not answer). Pure: no I/O, the same transcript gives the same
//! analysis.

use std::collections::BTreeMap;

use serde_json::Value as Json;
use switchboard_proto::flows::v1::AnalysisSchema;

use crate::model::{ChatMessage, ChatRequest, Role};

/// One line of a transcript: who wrote it (`customer`, `agent`, `human`, `system`) and
/// what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub author: String,
    pub text: String,
}

/// How the conversation stood when it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Its status was resolved.
    pub resolved: bool,
    /// A human agent took part (an assignment, or a human's message).
    pub human: bool,
}

/// The analysis schema, filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub summary: String,
    /// Most mentioned first; the first is the main topic.
    pub topics: Vec<String>,
    /// `positive`, `neutral`, `negative` or `mixed` (as much of either).
    pub sentiment: &'static str,
    /// `question`, `request`, `problem` or `feedback`.
    pub request_type: &'static str,
    /// `low`, `medium` or `high`, each.
    pub urgency: &'static str,
    pub customer_effort: &'static str,
    pub churn_risk: &'static str,
    /// `resolved_by_agent`, `resolved_by_human`, `handed_over` or `unresolved`.
    pub resolution: &'static str,
    /// What the customer asked that the agent could not answer; empty for none.
    pub knowledge_gap: String,
    /// `built-in` or `model`.
    pub analysed_by: &'static str,
    /// The assistant's custom fields, by name.
    pub fields: BTreeMap<String, String>,
}

impl Analysis {
    /// The custom analysis keys the conversations service records and insights reads.
    pub fn custom(&self) -> BTreeMap<String, String> {
        let mut custom = BTreeMap::from([
            ("summary".to_owned(), self.summary.clone()),
            ("request_type".to_owned(), self.request_type.to_owned()),
            ("urgency".to_owned(), self.urgency.to_owned()),
            (
                "customer_effort".to_owned(),
                self.customer_effort.to_owned(),
            ),
            ("churn_risk".to_owned(), self.churn_risk.to_owned()),
            ("resolution".to_owned(), self.resolution.to_owned()),
            ("analysed_by".to_owned(), self.analysed_by.to_owned()),
        ]);
        if !self.knowledge_gap.is_empty() {
            custom.insert("knowledge_gap".into(), self.knowledge_gap.clone());
        }
        for (name, value) in &self.fields {
            custom.entry(name.clone()).or_insert_with(|| value.clone());
        }
        custom
    }
}

/// Topics and the words that signal them.
const TOPICS: &[(&str, &[&str])] = &[
    ("refund", &["refund", "money back", "reimburse"]),
    (
        "order status",
        &[
            "order", "shipping", "shipped", "delivery", "deliver", "track", "package", "parcel",
        ],
    ),
    ("returns", &["return", "exchange", "send back"]),
    ("cancellation", &["cancel", "unsubscribe", "terminate"]),
    (
        "billing",
        &["invoice", "bill", "charge", "charged", "payment", "pay"],
    ),
    (
        "pricing",
        &["price", "cost", "discount", "coupon", "expensive", "cheap"],
    ),
    (
        "account",
        &[
            "account",
            "login",
            "log in",
            "password",
            "sign in",
            "email address",
        ],
    ),
    (
        "technical issue",
        &[
            "error",
            "broken",
            "bug",
            "crash",
            "not working",
            "doesn't work",
            "does not work",
        ],
    ),
    (
        "product",
        &["product", "size", "color", "colour", "stock", "available"],
    ),
];

const POSITIVE: &[&str] = &[
    "thanks",
    "thank you",
    "great",
    "perfect",
    "awesome",
    "excellent",
    "love",
    "happy",
    "helpful",
    "good",
    "nice",
    "appreciate",
    "wonderful",
];
const NEGATIVE: &[&str] = &[
    "bad",
    "terrible",
    "awful",
    "angry",
    "upset",
    "disappointed",
    "annoyed",
    "frustrated",
    "worst",
    "hate",
    "useless",
    "ridiculous",
    "unacceptable",
    "horrible",
    "not happy",
];
const PROBLEM: &[&str] = &[
    "problem",
    "issue",
    "broken",
    "error",
    "wrong",
    "damaged",
    "missing",
    "not working",
    "doesn't work",
    "never arrived",
    "late",
    "failed",
];
const REQUEST: &[&str] = &[
    "please",
    "can you",
    "could you",
    "i want",
    "i would like",
    "i'd like",
    "i need",
    "change",
    "cancel",
    "update",
];
const FEEDBACK: &[&str] = &[
    "feedback",
    "suggest",
    "suggestion",
    "review",
    "would be nice",
];
const URGENT: &[&str] = &[
    "urgent",
    "asap",
    "immediately",
    "right now",
    "today",
    "emergency",
    "as soon as possible",
];
const CHURN: &[&str] = &[
    "cancel my",
    "close my account",
    "switch to",
    "competitor",
    "never again",
    "leave",
    "unsubscribe",
    "terminate",
];
const DONT_KNOW: &[&str] = &[
    "i don't know",
    "i do not know",
    "not sure",
    "i can't help",
    "i cannot help",
    "i'm unable",
    "i am unable",
    "no information",
    "can't find that",
];

/// Whether `text` (lowercase) holds `word` as a word or phrase, not inside another word.
fn mentions(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

fn count(text: &str, words: &[&str]) -> usize {
    words.iter().filter(|w| mentions(text, w)).count()
}

/// Whether `text` holds `word` other than negated (`not good`, `isn't helpful`, `never
/// happy`).
fn affirms(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        let whole =
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric);
        let negated = ["not ", "n't ", "never ", "no "]
            .iter()
            .any(|n| text[..at].ends_with(n));
        whole && !negated
    })
}

fn affirmed(text: &str, words: &[&str]) -> usize {
    words.iter().filter(|w| affirms(text, w)).count()
}

/// The first `max` characters of `text`, on a word boundary, with `…` when cut.
fn shortened(text: &str, max: usize) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() <= max {
        return text;
    }
    let cut: String = text.chars().take(max).collect();
    let cut = cut.rsplit_once(' ').map_or(cut.as_str(), |(head, _)| head);
    format!("{cut}…")
}

/// Analyses a transcript (oldest first) and how the conversation ended.
pub fn analyse(transcript: &[Line], outcome: Outcome) -> Analysis {
    let customer: Vec<String> = transcript
        .iter()
        .filter(|l| l.author == "customer")
        .map(|l| l.text.to_lowercase())
        .collect();
    let said = customer.join("\n");
    let mut scored: Vec<(usize, usize, &str)> = TOPICS
        .iter()
        .enumerate()
        .map(|(i, (topic, words))| (count(&said, words), i, *topic))
        .filter(|(hits, _, _)| *hits > 0)
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let topics: Vec<String> = scored.iter().map(|(_, _, t)| (*t).to_owned()).collect();

    // A negated positive word is a negative one ("not happy", "isn't helpful").
    let negated = count(&said, POSITIVE) - affirmed(&said, POSITIVE).min(count(&said, POSITIVE));
    let positive = affirmed(&said, POSITIVE);
    let negative = count(&said, NEGATIVE) + negated;
    let sentiment = match positive.cmp(&negative) {
        std::cmp::Ordering::Greater => "positive",
        std::cmp::Ordering::Less => "negative",
        std::cmp::Ordering::Equal if positive > 0 => "mixed",
        std::cmp::Ordering::Equal => "neutral",
    };
    let problem = count(&said, PROBLEM) > 0;
    let request_type = if problem {
        "problem"
    } else if count(&said, REQUEST) > 0 {
        "request"
    } else if count(&said, FEEDBACK) > 0 {
        "feedback"
    } else if said.contains('?') || customer.is_empty() {
        "question"
    } else {
        "request"
    };
    let urgency = if count(&said, URGENT) > 0 {
        "high"
    } else if problem || sentiment == "negative" {
        "medium"
    } else {
        "low"
    };
    let customer_effort = match customer.len() {
        0..=3 => "low",
        4..=8 => "medium",
        _ => "high",
    };
    let churn_risk = if count(&said, CHURN) > 0 {
        "high"
    } else if sentiment == "negative" {
        "medium"
    } else {
        "low"
    };
    let resolution = match (outcome.resolved, outcome.human) {
        (true, false) => "resolved_by_agent",
        (true, true) => "resolved_by_human",
        (false, true) => "handed_over",
        (false, false) => "unresolved",
    };
    // The customer's message the agent answered with not knowing.
    let mut knowledge_gap = String::new();
    let mut last_customer = "";
    for line in transcript {
        match line.author.as_str() {
            "customer" => last_customer = &line.text,
            "agent" if count(&line.text.to_lowercase(), DONT_KNOW) > 0 => {
                knowledge_gap = shortened(last_customer, 200);
            }
            _ => {}
        }
    }
    let first = transcript
        .iter()
        .find(|l| l.author == "customer")
        .map_or("", |l| l.text.as_str());
    let summary = if customer.is_empty() {
        "The customer wrote nothing.".to_owned()
    } else {
        format!(
            "{} about {}: \"{}\" ({} customer message{}; {}).",
            match request_type {
                "problem" => "A problem",
                "request" => "A request",
                "feedback" => "Feedback",
                _ => "A question",
            },
            topics.first().map_or("no known topic", String::as_str),
            shortened(first, 160),
            customer.len(),
            if customer.len() == 1 { "" } else { "s" },
            resolution.replace('_', " "),
        )
    };
    Analysis {
        summary,
        topics,
        sentiment,
        request_type,
        urgency,
        customer_effort,
        churn_risk,
        resolution,
        knowledge_gap,
        analysed_by: "built-in",
        fields: BTreeMap::new(),
    }
}

/// The values each standard field may take.
const SENTIMENTS: &[&str] = &["positive", "neutral", "negative", "mixed"];
const REQUEST_TYPES: &[&str] = &["question", "request", "problem", "feedback"];
const LEVELS: &[&str] = &["low", "medium", "high"];
const RESOLUTIONS: &[&str] = &[
    "resolved_by_agent",
    "resolved_by_human",
    "handed_over",
    "unresolved",
];

/// The standard fields, which a custom field may not be named.
const STANDARD: &[&str] = &[
    "summary",
    "topic",
    "topics",
    "sentiment",
    "request_type",
    "urgency",
    "customer_effort",
    "churn_risk",
    "resolution",
    "knowledge_gap",
    "analysed_by",
];

/// Topics a model's analysis keeps at most.
const MODEL_TOPICS: usize = 5;

/// What is wrong with an assistant's analysis schema: `(field, description)`, every one.
pub fn schema_violations(schema: &AnalysisSchema) -> Vec<(String, String)> {
    let mut v = Vec::new();
    let bounded = |text: &str| (1..=100).contains(&text.trim().len());
    if schema.topics.len() > 50 {
        v.push(("topics".into(), "at most 50".into()));
    }
    for (i, topic) in schema.topics.iter().enumerate() {
        if !bounded(topic) {
            v.push((format!("topics[{i}]"), "1 to 100 bytes".into()));
        }
    }
    if schema.fields.len() > 20 {
        v.push(("fields".into(), "at most 20".into()));
    }
    for (i, field) in schema.fields.iter().enumerate() {
        let name_ok = (1..=64).contains(&field.name.len())
            && field
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            v.push((
                format!("fields[{i}].name"),
                "1 to 64 lowercase letters, digits or `_`".into(),
            ));
        } else if STANDARD.contains(&field.name.as_str()) {
            v.push((
                format!("fields[{i}].name"),
                format!("`{}` is a standard field", field.name),
            ));
        } else if schema.fields[..i].iter().any(|f| f.name == field.name) {
            v.push((format!("fields[{i}].name"), "named twice".into()));
        }
        if field.description.len() > 500 {
            v.push((
                format!("fields[{i}].description"),
                "at most 500 bytes".into(),
            ));
        }
        if field.options.len() > 20 {
            v.push((format!("fields[{i}].options"), "at most 20".into()));
        }
        for (j, option) in field.options.iter().enumerate() {
            if !bounded(option) {
                v.push((format!("fields[{i}].options[{j}]"), "1 to 100 bytes".into()));
            }
        }
    }
    v
}

/// [`analyse`] within an assistant's schema: with a list of topics, only those (the ones
/// the built-in topics name, then the ones the customer wrote).
pub fn analyse_with(transcript: &[Line], outcome: Outcome, schema: &AnalysisSchema) -> Analysis {
    let mut analysis = analyse(transcript, outcome);
    if !schema.topics.is_empty() {
        let said: String = transcript
            .iter()
            .filter(|l| l.author == "customer")
            .map(|l| l.text.to_lowercase())
            .collect::<Vec<_>>()
            .join("\n");
        let mut topics: Vec<String> = analysis
            .topics
            .iter()
            .filter_map(|t| schema.topics.iter().find(|s| s.eq_ignore_ascii_case(t)))
            .cloned()
            .collect();
        for topic in &schema.topics {
            if !topics.contains(topic) && said.contains(&topic.to_lowercase()) {
                topics.push(topic.clone());
            }
        }
        analysis.topics = topics;
    }
    analysis
}

/// What a model is asked to extract an ended conversation's analysis with.
pub fn model_request(transcript: &[Line], schema: &AnalysisSchema) -> ChatRequest {
    let topics = if schema.topics.is_empty() {
        "topics (an array of one to five short topics, the main one first)".to_owned()
    } else {
        format!(
            "topics (an array of the ones that apply, the main one first, only from: {})",
            serde_json::to_string(&schema.topics).unwrap_or_default()
        )
    };
    let mut keys = vec![
        "summary (one or two sentences)".to_owned(),
        topics,
        format!(
            "sentiment (the customer's: one of {})",
            SENTIMENTS.join(", ")
        ),
        format!("request_type (one of {})", REQUEST_TYPES.join(", ")),
        format!(
            "urgency, customer_effort and churn_risk (each one of {})",
            LEVELS.join(", ")
        ),
        format!("resolution (one of {})", RESOLUTIONS.join(", ")),
        "knowledge_gap (what the customer asked that was not answered, or an empty string)"
            .to_owned(),
    ];
    for field in &schema.fields {
        let mut key = format!("{} ({}", field.name, field.description.trim());
        if !field.options.is_empty() {
            key.push_str(&format!(
                "; one of {}",
                serde_json::to_string(&field.options).unwrap_or_default()
            ));
        }
        key.push(')');
        keys.push(key);
    }
    let system = format!(
        "You analyse a finished customer service conversation. Answer with one JSON object \
         and nothing else, with these keys:\n- {}",
        keys.join("\n- ")
    );
    let conversation: Vec<String> = transcript
        .iter()
        .filter(|l| l.author != "system")
        .map(|l| format!("{}: {}", l.author, l.text))
        .collect();
    ChatRequest {
        messages: vec![
            ChatMessage::new(Role::System, system),
            ChatMessage::new(Role::User, conversation.join("\n")),
        ],
        tools: Vec::new(),
        max_tokens: 1000,
    }
}

/// The analysis a model answered, field by field: a value outside its field's choices is
/// replaced by the built-in analyser's. `Err` when the answer holds no JSON object.
pub fn from_model(
    answer: &str,
    built: &Analysis,
    schema: &AnalysisSchema,
) -> Result<Analysis, String> {
    let object = answer
        .find('{')
        .zip(answer.rfind('}'))
        .filter(|(start, end)| start < end)
        .and_then(|(start, end)| serde_json::from_str::<Json>(&answer[start..=end]).ok())
        .filter(Json::is_object)
        .ok_or_else(|| "the model's answer is not a JSON object".to_owned())?;
    let choice = |key: &str, choices: &'static [&'static str], fallback: &'static str| {
        object[key]
            .as_str()
            .map(|s| s.trim().to_lowercase())
            .and_then(|s| choices.iter().find(|c| **c == s).copied())
            .unwrap_or(fallback)
    };
    let text = |key: &str, max: usize| {
        object[key]
            .as_str()
            .map(|s| shortened(s.trim(), max))
            .unwrap_or_default()
    };
    let mut topics: Vec<String> = object["topics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Json::as_str)
        .map(str::trim)
        .filter(|t| (1..=100).contains(&t.len()))
        .filter_map(|t| {
            if schema.topics.is_empty() {
                Some(t.to_lowercase())
            } else {
                schema
                    .topics
                    .iter()
                    .find(|s| s.eq_ignore_ascii_case(t))
                    .cloned()
            }
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    topics.retain(|t| seen.insert(t.clone()));
    topics.truncate(MODEL_TOPICS);
    if topics.is_empty() {
        topics = built.topics.clone();
    }
    let summary = match text("summary", 1000) {
        s if s.is_empty() => built.summary.clone(),
        s => s,
    };
    let mut fields = BTreeMap::new();
    for field in &schema.fields {
        let value = match &object[&field.name] {
            Json::String(s) => s.trim().to_owned(),
            Json::Null => continue,
            other => other.to_string(),
        };
        let value = if field.options.is_empty() {
            shortened(&value, 500)
        } else {
            match field
                .options
                .iter()
                .find(|o| o.eq_ignore_ascii_case(&value))
            {
                Some(option) => option.clone(),
                None => continue,
            }
        };
        fields.insert(field.name.clone(), value);
    }
    Ok(Analysis {
        summary,
        topics,
        sentiment: choice("sentiment", SENTIMENTS, built.sentiment),
        request_type: choice("request_type", REQUEST_TYPES, built.request_type),
        urgency: choice("urgency", LEVELS, built.urgency),
        customer_effort: choice("customer_effort", LEVELS, built.customer_effort),
        churn_risk: choice("churn_risk", LEVELS, built.churn_risk),
        resolution: choice("resolution", RESOLUTIONS, built.resolution),
        knowledge_gap: text("knowledge_gap", 500),
        analysed_by: "model",
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(author: &str, text: &str) -> Line {
        Line {
            author: author.into(),
            text: text.into(),
        }
    }

    #[test]
    fn a_late_order_is_a_problem_about_its_order_with_a_negative_customer() {
        let transcript = [
            line("agent", "Hi! How can I help?"),
            line(
                "customer",
                "My order A-17 never arrived and I'm really frustrated. This is unacceptable.",
            ),
            line("agent", "Sorry to hear that. Let me check the delivery."),
            line(
                "customer",
                "Please fix it ASAP or I'll switch to a competitor.",
            ),
        ];
        let a = analyse(
            &transcript,
            Outcome {
                resolved: true,
                human: false,
            },
        );
        assert_eq!(a.topics.first().map(String::as_str), Some("order status"));
        assert_eq!(a.sentiment, "negative");
        assert_eq!(a.request_type, "problem");
        assert_eq!(a.urgency, "high");
        assert_eq!(a.churn_risk, "high");
        assert_eq!(a.customer_effort, "low");
        assert_eq!(a.resolution, "resolved_by_agent");
        assert!(
            a.summary
                .starts_with("A problem about order status: \"My order A-17"),
            "{}",
            a.summary
        );
        assert!(a.knowledge_gap.is_empty());
    }

    #[test]
    fn a_thankful_question_the_agent_could_not_answer_is_a_knowledge_gap() {
        let transcript = [
            line("customer", "Do you ship to Iceland?"),
            line("agent", "I'm not sure, I don't know our shipping zones."),
            line("customer", "Ok, thanks anyway, great chat!"),
        ];
        let a = analyse(
            &transcript,
            Outcome {
                resolved: false,
                human: true,
            },
        );
        assert_eq!(a.request_type, "question");
        assert_eq!(a.sentiment, "positive");
        assert_eq!(a.urgency, "low");
        assert_eq!(a.resolution, "handed_over");
        assert_eq!(a.knowledge_gap, "Do you ship to Iceland?");
        assert_eq!(a.custom()["knowledge_gap"], "Do you ship to Iceland?");
        assert_eq!(a.custom()["analysed_by"], "built-in");
    }

    #[test]
    fn a_negated_kind_word_is_unkind_and_even_feelings_are_mixed() {
        let sentiment = |text: &str| {
            analyse(
                &[line("customer", text)],
                Outcome {
                    resolved: false,
                    human: false,
                },
            )
            .sentiment
        };
        assert_eq!(sentiment("I'm not happy with this"), "negative");
        assert_eq!(sentiment("That was not helpful at all"), "negative");
        assert_eq!(sentiment("Great service but the app is terrible"), "mixed");
        assert_eq!(sentiment("Happy now, thanks"), "positive");
    }

    #[test]
    fn words_count_only_whole_and_the_same_transcript_gives_the_same_analysis() {
        // "orderly" is not "order", "payday" not "pay".
        let transcript = [line("customer", "An orderly payday, nothing more")];
        let a = analyse(
            &transcript,
            Outcome {
                resolved: false,
                human: false,
            },
        );
        assert!(a.topics.is_empty(), "{:?}", a.topics);
        assert_eq!(a.sentiment, "neutral");
        assert_eq!(
            a,
            analyse(
                &transcript,
                Outcome {
                    resolved: false,
                    human: false
                }
            )
        );
        let empty = analyse(
            &[],
            Outcome {
                resolved: false,
                human: false,
            },
        );
        assert_eq!(empty.summary, "The customer wrote nothing.");
    }

    fn schema() -> AnalysisSchema {
        use switchboard_proto::flows::v1::AnalysisField;
        AnalysisSchema {
            topics: vec!["Delivery".into(), "Refund".into()],
            fields: vec![
                AnalysisField {
                    name: "product".into(),
                    description: "The product it was about".into(),
                    options: vec![],
                },
                AnalysisField {
                    name: "plan".into(),
                    description: "The customer's plan".into(),
                    options: vec!["free".into(), "pro".into()],
                },
            ],
        }
    }

    fn late_order() -> Vec<Line> {
        vec![
            line("customer", "My delivery is late and I'm annoyed."),
            line("agent", "Sorry, let me check."),
        ]
    }

    #[test]
    fn a_models_answer_is_taken_field_by_field_within_the_schema() {
        let built = analyse_with(
            &late_order(),
            Outcome {
                resolved: false,
                human: false,
            },
            &schema(),
        );
        assert_eq!(
            built.topics,
            ["Delivery"],
            "the built-in keeps to the listed topics"
        );
        let answer = r#"Sure! {"summary": "Late parcel.", "topics": ["delivery", "weather"],
            "sentiment": "NEGATIVE", "request_type": "complaint", "urgency": "high",
            "customer_effort": "low", "churn_risk": "medium", "resolution": "unresolved",
            "knowledge_gap": "", "product": "Kettle", "plan": "Pro"}"#;
        let a = from_model(answer, &built, &schema()).unwrap();
        assert_eq!(a.analysed_by, "model");
        assert_eq!(a.summary, "Late parcel.");
        assert_eq!(a.topics, ["Delivery"], "only listed topics, as listed");
        assert_eq!(a.sentiment, "negative");
        assert_eq!(
            a.request_type, built.request_type,
            "not a request type: the built-in's"
        );
        assert_eq!(a.urgency, "high");
        assert_eq!(a.fields["product"], "Kettle");
        assert_eq!(a.fields["plan"], "pro");
        assert_eq!(a.custom()["analysed_by"], "model");
        assert_eq!(a.custom()["plan"], "pro");
        assert!(from_model("I cannot do that.", &built, &schema()).is_err());
    }

    #[test]
    fn the_model_is_asked_for_every_field_and_the_conversation() {
        let request = model_request(&late_order(), &schema());
        let system = &request.messages[0].content;
        for key in [
            "summary",
            "request_type",
            "churn_risk",
            "knowledge_gap",
            "product",
            "plan",
            r#"["free","pro"]"#,
            r#"["Delivery","Refund"]"#,
        ] {
            assert!(system.contains(key), "{key} in {system}");
        }
        assert!(
            request.messages[1]
                .content
                .contains("customer: My delivery is late")
        );
    }

    #[test]
    fn a_schema_names_every_mistake() {
        use switchboard_proto::flows::v1::AnalysisField;
        let bad = AnalysisSchema {
            topics: vec![String::new()],
            fields: vec![
                AnalysisField {
                    name: "summary".into(),
                    ..Default::default()
                },
                AnalysisField {
                    name: "Bad Name".into(),
                    ..Default::default()
                },
                AnalysisField {
                    name: "x".into(),
                    options: vec![String::new()],
                    ..Default::default()
                },
                AnalysisField {
                    name: "x".into(),
                    ..Default::default()
                },
            ],
        };
        let fields: Vec<String> = schema_violations(&bad)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            fields,
            [
                "topics[0]",
                "fields[0].name",
                "fields[1].name",
                "fields[2].options[0]",
                "fields[3].name"
            ]
        );
        assert!(schema_violations(&schema()).is_empty());
    }
}
