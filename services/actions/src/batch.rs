//! Gathering calls of a batched action (see `BatchSpec`) into one request: the first call
//! of a group leads it, waits for the window (or until the group is full), sends for
//! everyone and hands each follower the outcome for its key. A follower whose leader went
//! away (its request was cancelled) runs alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value as Json};
use switchboard_proto::actions::v1::{FailureReason, RenderedRequest};
use tokio::sync::{Notify, oneshot};

/// What one key of a batch came to.
#[derive(Debug, Clone)]
pub struct KeyOutcome {
    pub outputs: Result<Map<String, Json>, (FailureReason, String)>,
    pub status_code: u32,
    pub response_body: String,
    pub response_truncated: bool,
    pub attempts: u32,
    pub request: Option<RenderedRequest>,
    pub batch_size: u32,
}

/// Every key's outcome of one sent batch.
pub type Delivered = Arc<HashMap<String, KeyOutcome>>;

struct Group {
    id: u64,
    /// Distinct keys in order of arrival; the leader's first.
    keys: Vec<String>,
    waiters: Vec<oneshot::Sender<Delivered>>,
    full: Arc<Notify>,
}

/// The open groups of this process, by what makes calls batchable together.
#[derive(Default)]
pub struct Batches {
    open: Mutex<HashMap<String, Group>>,
    /// Groups that filled up before their leader took them, by id.
    ready: Mutex<HashMap<u64, Group>>,
    next_id: AtomicU64,
}

/// A call's part in its group.
pub enum Role {
    /// Sends the batch once `full` fires or the window passes.
    Leader(Leader),
    /// Waits for the leader's outcome.
    Follower(oneshot::Receiver<Delivered>),
}

/// The leader's hold on its group: if dropped before taking it (its request cancelled),
/// the group is dropped too, so its followers stop waiting and run alone.
pub struct Leader {
    batches: Arc<Batches>,
    group_key: String,
    id: u64,
    pub full: Arc<Notify>,
    taken: bool,
}

/// What a leader sends for: the distinct keys and whom to tell.
pub struct Taken {
    pub keys: Vec<String>,
    waiters: Vec<oneshot::Sender<Delivered>>,
}

impl Taken {
    /// Hands every follower the outcomes.
    pub fn deliver(self, delivered: &Delivered) {
        for waiter in self.waiters {
            let _ = waiter.send(delivered.clone());
        }
    }
}

impl Batches {
    /// Joins the open group `group_key` with `key`, or opens one and leads it.
    pub fn join(self: &Arc<Self>, group_key: &str, key: &str, max_size: usize) -> Role {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(group) = open.get_mut(group_key) {
            let (sender, receiver) = oneshot::channel();
            if !group.keys.iter().any(|k| k == key) {
                group.keys.push(key.to_owned());
            }
            group.waiters.push(sender);
            if group.keys.len() >= max_size
                && let Some(full) = open.remove(group_key)
            {
                full.full.notify_one();
                let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
                ready.insert(full.id, full);
            }
            return Role::Follower(receiver);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let full = Arc::new(Notify::new());
        open.insert(
            group_key.to_owned(),
            Group {
                id,
                keys: vec![key.to_owned()],
                waiters: Vec::new(),
                full: full.clone(),
            },
        );
        Role::Leader(Leader {
            batches: self.clone(),
            group_key: group_key.to_owned(),
            id,
            full,
            taken: false,
        })
    }

    fn remove(&self, group_key: &str, id: u64) -> Option<Group> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.get(group_key).is_some_and(|g| g.id == id) {
            return open.remove(group_key);
        }
        drop(open);
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
    }
}

impl Leader {
    /// Closes the group: later calls open a new one.
    pub fn take(mut self) -> Taken {
        self.taken = true;
        match self.batches.remove(&self.group_key, self.id) {
            Some(group) => Taken {
                keys: group.keys,
                waiters: group.waiters,
            },
            None => Taken {
                keys: Vec::new(),
                waiters: Vec::new(),
            },
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.taken {
            self.batches.remove(&self.group_key, self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_call_leads_and_a_full_group_closes() {
        let batches = Arc::new(Batches::default());
        let Role::Leader(leader) = batches.join("g", "a", 3) else {
            panic!("the first call leads");
        };
        let Role::Follower(_b) = batches.join("g", "b", 3) else {
            panic!("the second follows");
        };
        let Role::Follower(_again) = batches.join("g", "a", 3) else {
            panic!("a repeated key follows");
        };
        let Role::Follower(_c) = batches.join("g", "c", 3) else {
            panic!("the third follows");
        };
        // Full: the next call opens a new group.
        assert!(matches!(batches.join("g", "d", 3), Role::Leader(_)));
        let taken = leader.take();
        assert_eq!(taken.keys, ["a", "b", "c"]);
        assert_eq!(taken.waiters.len(), 3);
    }

    #[tokio::test]
    async fn followers_of_a_dropped_leader_stop_waiting() {
        let batches = Arc::new(Batches::default());
        let leader = batches.join("g", "a", 10);
        let Role::Follower(waiting) = batches.join("g", "b", 10) else {
            panic!("the second follows");
        };
        drop(leader);
        assert!(waiting.await.is_err());
        assert!(matches!(batches.join("g", "c", 10), Role::Leader(_)));
    }
}
