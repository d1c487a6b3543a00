//! A workspace's saved segments, one stream per workspace: create and delete, with every
//! field checked (the conditions as any filter's, the window fixed or moving, never both).

use std::collections::BTreeMap;

use switchboard_proto::insights::v1 as pb;

use super::dimensions::{self, Condition, DAY_MS, limits};
use super::facts::millis;
use super::{DomainError, Event, FieldViolation, finish};

/// Segments a workspace can keep.
pub const MAX_SEGMENTS: usize = 200;
pub const NAME_CHARS: usize = 100;
pub const DESCRIPTION_BYTES: usize = 1000;

/// The live segments of a workspace, by id.
#[derive(Debug, Clone, Default)]
pub struct Segments {
    pub live: BTreeMap<String, pb::Segment>,
}

pub fn apply(state: &mut Segments, event: &Event) {
    match event {
        Event::SegmentCreated(created) => {
            if let Some(segment) = &created.segment {
                state.live.insert(segment.id.clone(), segment.clone());
            }
        }
        Event::SegmentDeleted(deleted) => {
            state.live.remove(&deleted.segment_id);
        }
        Event::FindingRaised(_) | Event::FindingDismissed(_) => {}
    }
}

pub fn conditions_of(conditions: &[pb::Condition]) -> Vec<Condition> {
    conditions
        .iter()
        .map(|c| Condition {
            dimension: c.dimension.clone(),
            values: c.values.clone(),
        })
        .collect()
}

/// Checks a new segment (its id, times and author already set by the caller).
pub fn validate(segment: &pb::Segment) -> Result<(), DomainError> {
    let mut v = Vec::new();
    check(segment, &mut v);
    finish(v)
}

/// Checks a segment's fields, none of which needs the workspace's other segments, pushing
/// every violation into `v` so a request's other mistakes are named beside them.
pub fn check(segment: &pb::Segment, v: &mut Vec<FieldViolation>) {
    let name = segment.name.trim();
    if name.is_empty() {
        v.push(FieldViolation::new("name", "a segment has a name"));
    } else if name.chars().count() > NAME_CHARS {
        v.push(FieldViolation::new(
            "name",
            format!("at most {NAME_CHARS} characters"),
        ));
    }
    if segment.description.len() > DESCRIPTION_BYTES {
        v.push(FieldViolation::new(
            "description",
            format!("at most {DESCRIPTION_BYTES} bytes"),
        ));
    }
    if segment.conditions.len() > limits::CONDITIONS {
        v.push(FieldViolation::new(
            "conditions",
            format!("at most {} conditions", limits::CONDITIONS),
        ));
    }
    dimensions::clauses("conditions", &conditions_of(&segment.conditions), v);
    let fixed = segment.from.is_some() || segment.to.is_some();
    if fixed && segment.last_days > 0 {
        v.push(FieldViolation::new(
            "last_days",
            "a segment's window is fixed (`from`, `to`) or moving (`last_days`), not both",
        ));
    }
    if segment.last_days > limits::WINDOW_DAYS as u32 {
        v.push(FieldViolation::new(
            "last_days",
            format!("at most {}", limits::WINDOW_DAYS),
        ));
    }
    if let (Some(from), Some(to)) = (&segment.from, &segment.to) {
        let (from, to) = (millis(Some(from)), millis(Some(to)));
        if to <= from {
            v.push(FieldViolation::new("to", "must be after `from`"));
        } else if to - from > limits::WINDOW_DAYS * DAY_MS {
            v.push(FieldViolation::new(
                "to",
                format!("a window spans at most {} days", limits::WINDOW_DAYS),
            ));
        }
    }
}

/// Creating `segment`.
pub fn create(state: &Segments, segment: pb::Segment) -> Result<Vec<Event>, DomainError> {
    validate(&segment)?;
    if state.live.len() >= MAX_SEGMENTS {
        return Err(DomainError::Quota(format!(
            "a workspace keeps at most {MAX_SEGMENTS} segments; delete one first"
        )));
    }
    Ok(vec![Event::SegmentCreated(pb::SegmentCreated {
        segment: Some(segment),
    })])
}

/// Deleting segment `id`.
pub fn delete(state: &Segments, id: &str) -> Result<Vec<Event>, DomainError> {
    if !state.live.contains_key(id) {
        return Err(DomainError::NotFound("segment"));
    }
    Ok(vec![Event::SegmentDeleted(pb::SegmentDeleted {
        segment_id: id.to_owned(),
    })])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::timestamp;

    fn segment(id: &str) -> pb::Segment {
        pb::Segment {
            id: id.into(),
            name: "Angry billing".into(),
            conditions: vec![pb::Condition {
                dimension: "sentiment".into(),
                values: vec!["negative".into()],
            }],
            last_days: 7,
            ..Default::default()
        }
    }

    #[test]
    fn segments_are_created_checked_and_deleted() {
        let mut state = Segments::default();
        for event in create(&state, segment("seg_1")).unwrap() {
            apply(&mut state, &event);
        }
        assert!(state.live.contains_key("seg_1"));
        let mut bad = segment("seg_2");
        bad.name = " ".into();
        bad.from = Some(timestamp(10));
        bad.to = Some(timestamp(5));
        bad.conditions[0].dimension = "mood".into();
        let Err(DomainError::Invalid(v)) = create(&state, bad) else {
            panic!("a bad segment was accepted");
        };
        let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["name", "conditions[0].dimension", "last_days", "to"]
        );
        for event in delete(&state, "seg_1").unwrap() {
            apply(&mut state, &event);
        }
        assert_eq!(
            delete(&state, "seg_1"),
            Err(DomainError::NotFound("segment"))
        );
    }
}
