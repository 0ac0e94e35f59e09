//! Fault injection: make matching requests fail with a given HTTP code before
//! they reach the store.

use std::sync::Arc;

use crate::log::RequestRecord;

/// A predicate over incoming requests.
pub type RequestPredicate = Arc<dyn Fn(&RequestRecord) -> bool + Send + Sync>;

/// One fault rule.
pub(crate) struct FaultRule {
    pub id: u64,
    pub code: u16,
    /// Remaining failures; `None` means forever (until cleared).
    pub remaining: Option<usize>,
    pub predicate: RequestPredicate,
}

/// Handle to a fault rule, for [`crate::FakeApiServer::clear_fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FaultId(pub(crate) u64);

#[derive(Default)]
pub(crate) struct Faults {
    rules: Vec<FaultRule>,
    next_id: u64,
}

impl Faults {
    pub fn add(
        &mut self,
        code: u16,
        remaining: Option<usize>,
        predicate: RequestPredicate,
    ) -> FaultId {
        self.next_id += 1;
        self.rules.push(FaultRule {
            id: self.next_id,
            code,
            remaining,
            predicate,
        });
        FaultId(self.next_id)
    }

    pub fn remove(&mut self, id: FaultId) {
        self.rules.retain(|r| r.id != id.0);
    }

    pub fn clear(&mut self) {
        self.rules.clear();
    }

    /// Returns the code to fail `req` with, consuming one use of the first
    /// matching rule.
    pub fn check(&mut self, req: &RequestRecord) -> Option<u16> {
        let idx = self.rules.iter().position(|r| (r.predicate)(req))?;
        let rule = &mut self.rules[idx];
        let code = rule.code;
        if let Some(n) = rule.remaining.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.rules.remove(idx);
            }
        }
        Some(code)
    }
}
