//! Replaying a draft against recorded conversations, before it is published.
//!
//! A recorded run holds everything that reached it from outside: its start, the customer's
//! messages in order, and the outcome of every effect it asked for. [`Recording::of`]
//! takes those back out of its events; [`simulate`] feeds them to a graph through the same
//! pure core the runtime uses ([`decide`]), answering each effect the graph asks for with
//! the outcome recorded for it, and firing every delay at once. [`compare`] does that for
//! the published version and for the draft and reports the first step where what the
//! outside world would see (messages, effects asked for, delays, the end) differs.
//!
//! Both sides go through the same simulation, so the published side is not the recording
//! replayed verbatim but its reproduction, which is what makes them comparable: a message
//! that arrived while an action was running is, in both, handled after the action.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value as Json;
use switchboard_proto::flows::v1::Graph;

use super::run::{Effect, Input, Render, Run, RunEvent, Status, decide};

/// Inputs one simulation may feed before it is stopped (a recording is bounded by the
/// runtime's own limits; this only guards against a draft that loops on timers).
const INPUT_LIMIT: usize = 10_000;

/// What reached a recorded run from outside.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Recording {
    pub run_id: String,
    pub context: Json,
    /// The customer's messages (text, sentiment), in the order they arrived.
    pub messages: Vec<(String, String)>,
    /// The outcome of every effect the run asked for, in order.
    pub outcomes: Vec<RecordedOutcome>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecordedOutcome {
    pub node: String,
    pub key: String,
    pub effect: Effect,
    pub success: bool,
    pub outputs: Json,
    pub error: String,
}

impl Recording {
    /// The inputs of a recorded run, or `None` when it never started.
    pub fn of(events: &[RunEvent]) -> Option<Self> {
        let mut recording = None::<Recording>;
        let mut run = Run::default();
        let mut requested: BTreeMap<String, Effect> = BTreeMap::new();
        // A message's sentiment is recorded just before it (only input sets it).
        let mut sentiment = String::new();
        for event in events {
            match event {
                RunEvent::Started { run_id, context } => {
                    recording = Some(Recording {
                        run_id: run_id.clone(),
                        context: context.clone(),
                        ..Default::default()
                    });
                }
                RunEvent::VariableSet { variable, value } if variable == "message.sentiment" => {
                    sentiment = value.as_str().unwrap_or_default().to_owned();
                }
                RunEvent::InputQueued { text } => {
                    if let Some(r) = recording.as_mut() {
                        r.messages
                            .push((text.clone(), std::mem::take(&mut sentiment)));
                    }
                }
                RunEvent::EffectRequested { key, effect, .. } => {
                    requested.insert(key.clone(), effect.clone());
                }
                // An outcome the run waited for came from outside; one recorded while
                // rendering the request (a missing variable) is the run's own decision.
                RunEvent::EffectCompleted {
                    node,
                    key,
                    success,
                    outputs,
                    error,
                } if matches!(&run.status, Status::WaitingEffect { key: waiting } if waiting == key) => {
                    if let (Some(r), Some(effect)) = (recording.as_mut(), requested.get(key)) {
                        r.outcomes.push(RecordedOutcome {
                            node: node.clone(),
                            key: key.clone(),
                            effect: effect.clone(),
                            success: *success,
                            outputs: outputs.clone(),
                            error: error.clone(),
                        });
                    }
                }
                _ => {}
            }
            run.apply(event);
        }
        recording
    }
}

/// What the outside world sees a run do.
#[derive(Debug, Clone, PartialEq)]
pub enum Behavior {
    /// A message to the customer (a re-ask included).
    Says {
        text: String,
        buttons: Vec<(String, String)>,
        /// The names of a form's fields.
        form: Vec<String>,
    },
    /// An effect asked for: its rendered inputs, and the names of its sealed ones.
    Asks {
        effect: Effect,
        inputs: BTreeMap<String, Json>,
        sealed: Vec<String>,
    },
    Waits {
        seconds: i64,
    },
    Ends {
        reason: String,
    },
}

impl fmt::Display for Behavior {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Behavior::Says {
                text,
                buttons,
                form,
            } => {
                write!(f, "says {text:?}")?;
                if !buttons.is_empty() {
                    let labels: Vec<&str> =
                        buttons.iter().map(|(label, _)| label.as_str()).collect();
                    write!(f, " with buttons {labels:?}")?;
                }
                if !form.is_empty() {
                    write!(f, " with a form of {form:?}")?;
                }
                Ok(())
            }
            Behavior::Asks {
                effect,
                inputs,
                sealed,
            } => {
                match effect {
                    Effect::Action { action_id } => write!(f, "runs action `{action_id}`")?,
                    Effect::UpdateConversation => write!(f, "updates the conversation")?,
                    Effect::Connexease { operation } => write!(f, "runs Connexease `{operation}`")?,
                    Effect::Model => write!(f, "asks the model")?,
                    Effect::Workflow { workflow_id } => write!(f, "runs workflow `{workflow_id}`")?,
                }
                let shown: serde_json::Map<String, Json> = inputs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .chain(sealed.iter().map(|k| (k.clone(), Json::from("(sealed)"))))
                    .collect();
                if !shown.is_empty() {
                    write!(f, " with {}", Json::Object(shown))?;
                }
                Ok(())
            }
            Behavior::Waits { seconds } => write!(f, "waits {seconds} s"),
            Behavior::Ends { reason } => write!(f, "ends ({reason})"),
        }
    }
}

/// Where a simulation stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    Ended {
        reason: String,
    },
    /// The recorded messages ran out with the run waiting for the customer.
    WaitingForCustomer {
        node: String,
    },
    /// The graph asked for an effect the recorded run never had an outcome for.
    UnknownOutcome {
        node: String,
    },
    /// The input limit: the graph keeps arming timers.
    InputLimit,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Ended { reason } => write!(f, "ended ({reason})"),
            Stop::WaitingForCustomer { node } => {
                write!(f, "waits for the customer at `{node}`")
            }
            Stop::UnknownOutcome { node } => write!(
                f,
                "stopped at `{node}`: the recorded conversation has no outcome for its effect"
            ),
            Stop::InputLimit => write!(f, "stopped after {INPUT_LIMIT} inputs"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Simulation {
    pub behaviors: Vec<Behavior>,
    pub stop: Stop,
}

/// Runs `graph` on what reached a recorded run.
pub fn simulate(graph: &Graph, recording: &Recording, render: &dyn Render) -> Simulation {
    let mut run = Run::default();
    let mut now = 0i64;
    let mut behaviors = Vec::new();
    let mut messages = recording.messages.iter();
    let mut used = vec![false; recording.outcomes.len()];
    let mut requested = None::<Effect>;
    let mut input = Input::Start {
        run_id: recording.run_id.clone(),
        context: recording.context.clone(),
    };
    for _ in 0..INPUT_LIMIT {
        for event in decide(graph, &run, &input, now, render) {
            if let Some(behavior) = behavior(&event, now) {
                behaviors.push(behavior);
            }
            if let RunEvent::EffectRequested { effect, .. } = &event {
                requested = Some(effect.clone());
            }
            run.apply(&event);
        }
        input = match &run.status {
            Status::Ended { reason } => {
                let stop = Stop::Ended {
                    reason: reason.clone(),
                };
                return Simulation { behaviors, stop };
            }
            Status::WaitingEffect { key } => {
                let Some(outcome) =
                    outcome_for(recording, &mut used, &run, key, requested.as_ref())
                else {
                    let stop = Stop::UnknownOutcome {
                        node: run.at.clone(),
                    };
                    return Simulation { behaviors, stop };
                };
                Input::EffectDone {
                    key: key.clone(),
                    success: outcome.success,
                    outputs: outcome.outputs.clone(),
                    error: outcome.error.clone(),
                    needs_confirmation: false,
                }
            }
            Status::WaitingTimer { due_at } => {
                now = *due_at;
                Input::TimerDue {
                    node: run.at.clone(),
                }
            }
            Status::NotStarted | Status::Running | Status::WaitingInput => {
                let Some((text, sentiment)) = messages.next() else {
                    let stop = Stop::WaitingForCustomer {
                        node: run.at.clone(),
                    };
                    return Simulation { behaviors, stop };
                };
                Input::Message {
                    text: text.clone(),
                    sentiment: sentiment.clone(),
                    message_id: "replayed".into(),
                    clicked: false,
                    sent_at: 0,
                }
            }
        };
    }
    Simulation {
        behaviors,
        stop: Stop::InputLimit,
    }
}

/// The recorded outcome that answers the effect `run` waits for: the one recorded under
/// the same key (same node, same attempt), else the next unused one of the same node,
/// else the next unused one of the same effect (a node renamed in the draft).
fn outcome_for<'r>(
    recording: &'r Recording,
    used: &mut [bool],
    run: &Run,
    key: &str,
    effect: Option<&Effect>,
) -> Option<&'r RecordedOutcome> {
    let unused = |i: &usize| !used[*i];
    let candidates = 0..recording.outcomes.len();
    let found = candidates
        .clone()
        .filter(unused)
        .find(|i| recording.outcomes[*i].key == key)
        .or_else(|| {
            candidates
                .clone()
                .filter(unused)
                .find(|i| recording.outcomes[*i].node == run.at)
        })
        .or_else(|| {
            candidates
                .clone()
                .filter(unused)
                .find(|i| Some(&recording.outcomes[*i].effect) == effect)
        })?;
    used[found] = true;
    Some(&recording.outcomes[found])
}

fn behavior(event: &RunEvent, now: i64) -> Option<Behavior> {
    match event {
        RunEvent::MessageSent {
            text,
            buttons,
            form,
            ..
        } => Some(Behavior::Says {
            text: text.clone(),
            buttons: buttons
                .iter()
                .map(|b| (b.label.clone(), b.value.clone()))
                .collect(),
            form: form.iter().map(|f| f.name.clone()).collect(),
        }),
        RunEvent::Reasked { text, .. } => Some(Behavior::Says {
            text: text.clone(),
            buttons: Vec::new(),
            form: Vec::new(),
        }),
        RunEvent::EffectRequested {
            effect,
            inputs,
            sealed_inputs,
            ..
        } => Some(Behavior::Asks {
            effect: effect.clone(),
            inputs: inputs.clone(),
            sealed: sealed_inputs.keys().cloned().collect(),
        }),
        RunEvent::TimerArmed { due_at, .. } => Some(Behavior::Waits {
            seconds: (due_at - now) / 1_000_000,
        }),
        RunEvent::Ended { reason } => Some(Behavior::Ends {
            reason: reason.clone(),
        }),
        _ => None,
    }
}

/// How a draft behaves on one recorded conversation, against the published version.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub published: Simulation,
    pub draft: Simulation,
    /// The first step where they differ; `None` when the draft behaves the same.
    pub difference: Option<Difference>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// The index of the first differing behavior (0 is the first thing the run does).
    pub step: usize,
    /// What the published version does there, in words.
    pub published: String,
    /// What the draft does there instead.
    pub draft: String,
}

/// Simulates `published` and `draft` on `recording` and finds where they part.
pub fn compare(
    published: &Graph,
    draft: &Graph,
    recording: &Recording,
    render: &dyn Render,
) -> Comparison {
    let published = simulate(published, recording, render);
    let draft = simulate(draft, recording, render);
    let difference = first_difference(&published, &draft);
    Comparison {
        published,
        draft,
        difference,
    }
}

fn first_difference(published: &Simulation, draft: &Simulation) -> Option<Difference> {
    let steps = published.behaviors.len().max(draft.behaviors.len());
    let describe = |s: &Simulation, step: usize| {
        s.behaviors
            .get(step)
            .map(ToString::to_string)
            .unwrap_or_else(|| s.stop.to_string())
    };
    let step = (0..steps)
        .find(|i| published.behaviors.get(*i) != draft.behaviors.get(*i))
        .or_else(|| (!same_stop(&published.stop, &draft.stop)).then_some(steps))?;
    Some(Difference {
        step,
        published: describe(published, step),
        draft: describe(draft, step),
    })
}

/// Stops compare by what the outside sees: where a run waits for the customer is a node
/// id, which a draft may rename without changing anything.
fn same_stop(a: &Stop, b: &Stop) -> bool {
    match (a, b) {
        (Stop::WaitingForCustomer { .. }, Stop::WaitingForCustomer { .. }) => true,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use switchboard_proto::flows::v1::*;

    use super::*;
    use crate::domain::tests::{edge, look_up_and_act, node};

    fn renderer() -> switchboard_template::Renderer {
        switchboard_template::Renderer::new(Default::default())
    }

    /// Records a run of `graph` the way the runtime does: every decision folded.
    fn record(graph: &Graph, inputs: &[Input]) -> Vec<RunEvent> {
        let r = renderer();
        let mut run = Run::default();
        let mut all = Vec::new();
        for input in inputs {
            for event in decide(graph, &run, input, 1_000_000, &r) {
                run.apply(&event);
                all.push(event);
            }
        }
        all
    }

    fn conversation(lookup_succeeds: bool) -> Vec<Input> {
        vec![
            Input::Start {
                run_id: "run_1".into(),
                context: json!({"conversation": {"id": "conv_1"}}),
            },
            Input::Message {
                text: "no idea".into(),
                sentiment: "negative".into(),
                message_id: String::new(),
                clicked: false,
                sent_at: 0,
            },
            Input::Message {
                text: "12345".into(),
                sentiment: String::new(),
                message_id: String::new(),
                clicked: false,
                sent_at: 0,
            },
            Input::EffectDone {
                key: "run_1/lookup/1".into(),
                success: lookup_succeeds,
                outputs: json!({"status": "shipped"}),
                error: if lookup_succeeds { "" } else { "HTTP 503" }.into(),
                needs_confirmation: false,
            },
            Input::EffectDone {
                key: if lookup_succeeds {
                    "run_1/resolve/1"
                } else {
                    "run_1/handover/1"
                }
                .into(),
                success: true,
                outputs: json!({}),
                error: String::new(),
                needs_confirmation: false,
            },
        ]
    }

    fn set_text(graph: &mut Graph, id: &str, text: &str) {
        for n in &mut graph.nodes {
            if n.id == id
                && let Some(node::Kind::SendMessage(m)) = n.kind.as_mut()
            {
                m.text = text.into();
            }
        }
    }

    #[test]
    fn a_recording_holds_what_came_from_outside() {
        let events = record(&look_up_and_act(), &conversation(true));
        let recording = Recording::of(&events).unwrap();
        assert_eq!(recording.run_id, "run_1");
        assert_eq!(
            recording.messages,
            [
                ("no idea".to_owned(), "negative".to_owned()),
                ("12345".to_owned(), String::new())
            ]
        );
        let keys: Vec<&str> = recording.outcomes.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["run_1/lookup/1", "run_1/resolve/1"]);
        assert_eq!(
            recording.outcomes[0].effect,
            Effect::Action {
                action_id: "act_lookup".into()
            }
        );
        assert_eq!(Recording::of(&[]), None);
    }

    #[test]
    fn the_published_version_reproduces_its_recording() {
        let graph = look_up_and_act();
        for succeeds in [true, false] {
            let events = record(&graph, &conversation(succeeds));
            let recording = Recording::of(&events).unwrap();
            let simulated = simulate(&graph, &recording, &renderer());
            let recorded: Vec<Behavior> = events
                .iter()
                .filter_map(|e| behavior(e, 0))
                .filter(|b| !matches!(b, Behavior::Waits { .. }))
                .collect();
            assert_eq!(simulated.behaviors, recorded);
            assert_eq!(
                simulated.stop,
                Stop::Ended {
                    reason: "completed".into()
                }
            );
        }
    }

    #[test]
    fn an_unchanged_draft_behaves_the_same() {
        let graph = look_up_and_act();
        let recording = Recording::of(&record(&graph, &conversation(false))).unwrap();
        let comparison = compare(&graph, &graph.clone(), &recording, &renderer());
        assert_eq!(comparison.difference, None);
    }

    #[test]
    fn a_changed_message_is_reported_at_its_step() {
        let published = look_up_and_act();
        let mut draft = published.clone();
        set_text(
            &mut draft,
            "sorry",
            "Our order system is down; a teammate will help.",
        );
        let recording = Recording::of(&record(&published, &conversation(false))).unwrap();

        let comparison = compare(&published, &draft, &recording, &renderer());
        let difference = comparison.difference.unwrap();
        // Asks, re-asks, runs the lookup, then apologises differently.
        assert_eq!(difference.step, 3);
        assert_eq!(
            difference.published,
            "says \"I'm having trouble reaching that right now, let me get a teammate\""
        );
        assert_eq!(
            difference.draft,
            "says \"Our order system is down; a teammate will help.\""
        );
        // The same conversation on the success branch never reaches that message.
        let happy = Recording::of(&record(&published, &conversation(true))).unwrap();
        assert_eq!(
            compare(&published, &draft, &happy, &renderer()).difference,
            None
        );
    }

    #[test]
    fn a_draft_that_acts_differently_is_fed_recorded_outcomes_until_it_needs_a_new_one() {
        let published = look_up_and_act();
        let recording = Recording::of(&record(&published, &conversation(true))).unwrap();

        // The draft renames the lookup node: it still gets the lookup's recorded outcome.
        let mut renamed = published.clone();
        for n in &mut renamed.nodes {
            if n.id == "lookup" {
                n.id = "find_order".into();
            }
        }
        for e in &mut renamed.edges {
            for end in [&mut e.from, &mut e.to] {
                if end == "lookup" {
                    *end = "find_order".into();
                }
            }
        }
        set_text(
            &mut renamed,
            "status",
            "Your order is {{ nodes.find_order.status }}.",
        );
        let comparison = compare(&published, &renamed, &recording, &renderer());
        assert_eq!(comparison.difference, None, "{comparison:#?}");

        // The draft hands over to a teammate after the lookup instead of resolving: the
        // Connexease operation never ran in the recording, so the replay stops there.
        let mut hands_over = published.clone();
        hands_over.edges.retain(|e| e.from != "status");
        hands_over.edges.push(edge("status", "handover", "next"));
        let comparison = compare(&published, &hands_over, &recording, &renderer());
        let difference = comparison.difference.unwrap();
        assert_eq!(difference.step, 4);
        assert_eq!(
            difference.published,
            "updates the conversation with {\"status\":\"resolved\"}"
        );
        assert_eq!(
            difference.draft,
            "runs Connexease `assign_group` with {\"group\":\"support\"}"
        );
        assert_eq!(
            comparison.draft.stop,
            Stop::UnknownOutcome {
                node: "handover".into()
            }
        );
    }

    #[test]
    fn delays_fire_at_once_and_are_compared_by_length() {
        let graph = |seconds| Graph {
            nodes: vec![
                node("start", node::Kind::Start(Start {})),
                node("wait", node::Kind::Delay(Delay { seconds })),
                node(
                    "follow_up",
                    node::Kind::SendMessage(SendMessage {
                        text: "Still there?".into(),
                        ..Default::default()
                    }),
                ),
                node("end", node::Kind::End(End::default())),
            ],
            edges: vec![
                edge("start", "wait", ""),
                edge("wait", "follow_up", ""),
                edge("follow_up", "end", ""),
            ],
            ..Default::default()
        };
        let day = graph(86_400);
        let recording = Recording::of(&record(
            &day,
            &[Input::Start {
                run_id: "run_2".into(),
                context: json!({}),
            }],
        ))
        .unwrap();
        // The recording is still waiting out its day; the replay does not wait.
        let simulated = simulate(&day, &recording, &renderer());
        assert_eq!(
            simulated.behaviors,
            [
                Behavior::Waits { seconds: 86_400 },
                Behavior::Says {
                    text: "Still there?".into(),
                    buttons: vec![],
                    form: vec![],
                },
                Behavior::Ends {
                    reason: "completed".into()
                }
            ]
        );
        let difference = compare(&day, &graph(3_600), &recording, &renderer())
            .difference
            .unwrap();
        assert_eq!(
            (
                difference.step,
                difference.published.as_str(),
                difference.draft.as_str()
            ),
            (0, "waits 86400 s", "waits 3600 s")
        );
    }
}
