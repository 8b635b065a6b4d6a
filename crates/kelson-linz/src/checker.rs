//! The search: Wing & Gong's algorithm with Lowe's memoization, as in Porcupine.
//!
//! A history is linearizable if every operation can be given a point between its invocation
//! and its response such that, in the order of those points, each operation is a legal step
//! of the sequential register model. Registers on different keys are independent, so the
//! history is split per key and each part checked alone (P-compositionality): this keeps
//! the search small, and a violation names the key it happened on.
//!
//! Per key, calls and returns are put in one time-ordered doubly linked list. The search walks
//! it from the front: a call may be linearized now (if the model accepts it), which removes
//! the call and its return from the list and restarts from the front; reaching a return whose
//! operation is still in the list means that operation should have been linearized already,
//! so the last choice is undone (relinking in reverse order, like dancing links) and the next
//! candidate is tried. A `(set of linearized operations, state)` pair reached twice has the
//! same future, so the cache cuts it. Unknown-outcome operations have no return entry: they
//! never force a backtrack, and they are only taken when something later needs them.
//!
//! The search is exponential in the worst case, so it is bounded by a time budget, an operation
//! count and a cache size per key; a key that exceeds a bound is reported as `Unknown` instead
//! of hanging the test. On a violation the deepest point the search reached becomes the
//! counterexample: the longest linearizable prefix, its final state, the operation that could
//! not be placed, and the candidates that were concurrent with it.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use crate::history::{Input, Operation, Output, Value};
use crate::model::{self, State};

/// Bounds for the search.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Wall-clock budget for one key.
    pub time_budget_per_key: Duration,
    /// Keys with more operations than this are not searched (reported `Unknown`).
    pub max_ops_per_key: usize,
    /// Memoized states per key before giving up (bounds memory).
    pub max_cached_states: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            time_budget_per_key: Duration::from_secs(10),
            max_ops_per_key: 50_000,
            max_cached_states: 2_000_000,
        }
    }
}

/// A history that cannot be checked because it is malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HistoryError {
    #[error("operation {index} ({op}): the output does not answer the input")]
    OutputMismatch { index: usize, op: String },
    #[error(
        "operation {index} ({op}): answered at {complete} ns, before its invocation at {invoke} ns"
    )]
    AnsweredBeforeInvoked {
        index: usize,
        op: String,
        invoke: u64,
        complete: u64,
    },
}

/// Why the search stopped at the deepest point it reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counterexample {
    pub key: String,
    /// The longest sequence of operations found to be linearizable, in linearization order.
    pub prefix: Vec<Operation>,
    /// The register's state after `prefix`.
    pub state: State,
    /// An operation that had already returned but could not be placed after `prefix`.
    pub blocked: Operation,
    /// Operations that were invoked before `blocked` returned and were not in `prefix`: the
    /// ones the search could have placed next.
    pub candidates: Vec<Operation>,
}

impl fmt::Display for Counterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 8;
        let state = match self.state {
            Some(v) => v.to_string(),
            None => "<absent>".into(),
        };
        writeln!(
            f,
            "key {:?} is not linearizable: the longest linearizable prefix has {} operations and \
             leaves the value {state}",
            self.key,
            self.prefix.len()
        )?;
        let skip = self.prefix.len().saturating_sub(SHOWN);
        if skip > 0 {
            writeln!(f, "  ... {skip} earlier operations")?;
        }
        for op in &self.prefix[skip..] {
            writeln!(f, "  linearized: {op}")?;
        }
        writeln!(f, "  then this operation could not be linearized:")?;
        writeln!(f, "  BLOCKED:    {}", self.blocked)?;
        if self.candidates.is_empty() {
            writeln!(f, "  and no other operation was concurrent with it")?;
        } else {
            writeln!(f, "  concurrent candidates (none of them helps):")?;
            for op in self.candidates.iter().take(SHOWN) {
                writeln!(f, "  candidate:  {op}")?;
            }
            if self.candidates.len() > SHOWN {
                writeln!(f, "  ... {} more", self.candidates.len() - SHOWN)?;
            }
        }
        Ok(())
    }
}

/// The verdict for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Linearizable,
    Violation(Box<Counterexample>),
    /// The search hit a bound; the string says which.
    Unknown(String),
}

/// The result for one key.
#[derive(Debug, Clone)]
pub struct KeyReport {
    pub key: String,
    /// Operations searched (unknown reads excluded).
    pub operations: usize,
    pub outcome: Outcome,
    pub elapsed: Duration,
    /// Search steps taken (for tuning budgets).
    pub steps: u64,
}

/// The result for a whole history.
#[derive(Debug, Clone)]
pub struct Report {
    /// Operations checked over all keys (unknown reads excluded).
    pub operations: usize,
    /// Reads with an unknown outcome, dropped before the search (they constrain nothing).
    pub dropped_unknown_reads: usize,
    /// Writes with an unknown outcome that were checked as "may have happened".
    pub unknown_writes: usize,
    pub keys: Vec<KeyReport>,
}

impl Report {
    pub fn violations(&self) -> usize {
        self.keys
            .iter()
            .filter(|k| matches!(k.outcome, Outcome::Violation(_)))
            .count()
    }

    /// Keys whose search hit a bound.
    pub fn unknown(&self) -> usize {
        self.keys
            .iter()
            .filter(|k| matches!(k.outcome, Outcome::Unknown(_)))
            .count()
    }

    /// True when every key was fully checked and found linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.violations() == 0 && self.unknown() == 0
    }

    /// `checked N operations on K keys, V violations` (plus unknown keys, if any).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "checked {} operations on {} keys, {} violations",
            self.operations,
            self.keys.len(),
            self.violations()
        );
        if self.unknown() > 0 {
            s.push_str(&format!(
                ", {} keys not decided within the search bounds",
                self.unknown()
            ));
        }
        s
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ({} unknown-outcome writes included, {} unknown reads dropped)",
            self.summary(),
            self.unknown_writes,
            self.dropped_unknown_reads
        )?;
        for k in &self.keys {
            match &k.outcome {
                Outcome::Linearizable => writeln!(
                    f,
                    "  key {:?}: {} operations linearizable ({} steps, {:?})",
                    k.key, k.operations, k.steps, k.elapsed
                )?,
                Outcome::Unknown(why) => writeln!(
                    f,
                    "  key {:?}: {} operations UNDECIDED: {why}",
                    k.key, k.operations
                )?,
                Outcome::Violation(c) => {
                    writeln!(
                        f,
                        "  key {:?}: {} operations VIOLATION",
                        k.key, k.operations
                    )?;
                    write!(f, "{c}")?;
                }
            }
        }
        Ok(())
    }
}

/// Checks a multi-key history against the register model, key by key.
pub fn check(ops: &[Operation], opts: &CheckOptions) -> Result<Report, HistoryError> {
    let mut by_key: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    let mut dropped = 0;
    let mut unknown_writes = 0;
    for (index, op) in ops.iter().enumerate() {
        if !model::output_matches(op.input, op.output) {
            return Err(HistoryError::OutputMismatch {
                index,
                op: op.to_string(),
            });
        }
        if !op.is_unknown() && op.complete < op.invoke {
            return Err(HistoryError::AnsweredBeforeInvoked {
                index,
                op: op.to_string(),
                invoke: op.invoke,
                complete: op.complete,
            });
        }
        if op.is_unknown() {
            if op.input == Input::Get {
                dropped += 1;
                continue;
            }
            unknown_writes += 1;
        }
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    let keys: Vec<KeyReport> = by_key
        .into_iter()
        .map(|(key, ops)| check_key(key, ops, opts))
        .collect();
    Ok(Report {
        operations: keys.iter().map(|k| k.operations).sum(),
        dropped_unknown_reads: dropped,
        unknown_writes,
        keys,
    })
}

const NIL: usize = usize::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    // Calls sort before returns at equal times: touching operations count as concurrent,
    // which can only make the checker more lenient, never report a false violation.
    Call,
    Return,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    time: u64,
    kind: Kind,
    op: usize,
}

/// The time-ordered call/return list with O(1) unlink and relink.
struct Entries {
    entries: Vec<Entry>,
    prev: Vec<usize>,
    next: Vec<usize>,
    call_of: Vec<usize>,
    return_of: Vec<Option<usize>>,
    head: usize,
}

impl Entries {
    fn new(ops: &[Operation]) -> Entries {
        let mut entries = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            entries.push(Entry {
                time: op.invoke,
                kind: Kind::Call,
                op: i,
            });
            if !op.is_unknown() {
                entries.push(Entry {
                    time: op.complete,
                    kind: Kind::Return,
                    op: i,
                });
            }
        }
        entries.sort_by_key(|e| (e.time, e.kind, e.op));
        let m = entries.len();
        // Index m is the head sentinel.
        let mut prev = vec![NIL; m + 1];
        let mut next = vec![NIL; m + 1];
        let mut call_of = vec![NIL; ops.len()];
        let mut return_of = vec![None; ops.len()];
        let mut last = m;
        for (i, e) in entries.iter().enumerate() {
            next[last] = i;
            prev[i] = last;
            last = i;
            match e.kind {
                Kind::Call => call_of[e.op] = i,
                Kind::Return => return_of[e.op] = Some(i),
            }
        }
        Entries {
            entries,
            prev,
            next,
            call_of,
            return_of,
            head: m,
        }
    }

    fn unlink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = x;
        if n != NIL {
            self.prev[n] = x;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_of[op]);
        if let Some(r) = self.return_of[op] {
            self.unlink(r);
        }
    }

    fn unlift(&mut self, op: usize) {
        if let Some(r) = self.return_of[op] {
            self.relink(r);
        }
        self.relink(self.call_of[op]);
    }

    fn first(&self) -> usize {
        self.next[self.head]
    }
}

struct Bitset(Vec<u64>);

impl Bitset {
    fn new(n: usize) -> Bitset {
        Bitset(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

fn check_key(key: &str, ops: Vec<Operation>, opts: &CheckOptions) -> KeyReport {
    let started = Instant::now();
    let n = ops.len();
    let report = |outcome, steps| KeyReport {
        key: key.to_string(),
        operations: n,
        outcome,
        elapsed: started.elapsed(),
        steps,
    };
    if n > opts.max_ops_per_key {
        return report(
            Outcome::Unknown(format!(
                "{n} operations exceed the per-key limit of {}",
                opts.max_ops_per_key
            )),
            0,
        );
    }
    let mut list = Entries::new(&ops);
    let mut linearized = Bitset::new(n);
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    // Each linearized operation with the state before it, to undo.
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut best: Option<Counterexample> = None;
    let mut steps: u64 = 0;
    let mut cur = list.first();
    while cur != NIL {
        steps += 1;
        if steps & 1023 == 0 && started.elapsed() > opts.time_budget_per_key {
            return report(
                Outcome::Unknown(format!(
                    "time budget of {:?} exhausted after {steps} steps ({} states cached)",
                    opts.time_budget_per_key,
                    cache.len()
                )),
                steps,
            );
        }
        let entry = list.entries[cur];
        match entry.kind {
            Kind::Call => {
                let op = entry.op;
                if let Some(next_state) = model::step(state, &ops[op]) {
                    linearized.set(op);
                    if cache.insert((linearized.0.clone(), next_state)) {
                        if cache.len() > opts.max_cached_states {
                            return report(
                                Outcome::Unknown(format!(
                                    "more than {} search states",
                                    opts.max_cached_states
                                )),
                                steps,
                            );
                        }
                        stack.push((op, state));
                        state = next_state;
                        list.lift(op);
                        cur = list.first();
                        continue;
                    }
                    linearized.clear(op);
                }
                cur = list.next[cur];
            }
            Kind::Return => {
                if best.as_ref().is_none_or(|b| stack.len() > b.prefix.len()) {
                    best = Some(counterexample(key, &ops, &list, &stack, state, cur));
                }
                let Some((op, before)) = stack.pop() else {
                    let c = best
                        .unwrap_or_else(|| counterexample(key, &ops, &list, &stack, state, cur));
                    return report(Outcome::Violation(Box::new(c)), steps);
                };
                linearized.clear(op);
                state = before;
                list.unlift(op);
                cur = list.next[list.call_of[op]];
            }
        }
    }
    report(Outcome::Linearizable, steps)
}

fn counterexample(
    key: &str,
    ops: &[Operation],
    list: &Entries,
    stack: &[(usize, State)],
    state: State,
    blocked_entry: usize,
) -> Counterexample {
    let blocked = list.entries[blocked_entry].op;
    let mut candidates = Vec::new();
    let mut e = list.first();
    while e != NIL && e != blocked_entry {
        let entry = list.entries[e];
        if entry.kind == Kind::Call && entry.op != blocked {
            candidates.push(ops[entry.op].clone());
        }
        e = list.next[e];
    }
    Counterexample {
        key: key.to_string(),
        prefix: stack.iter().map(|&(op, _)| ops[op].clone()).collect(),
        state,
        blocked: ops[blocked].clone(),
        candidates,
    }
}

/// Convenience for building histories in tests: `(client, key, input, output, invoke, complete)`.
pub fn op(
    client: usize,
    key: &str,
    input: Input,
    output: Output,
    invoke: u64,
    complete: u64,
) -> Operation {
    Operation {
        client,
        key: key.to_string(),
        input,
        output,
        invoke,
        complete,
    }
}

/// A compare-and-set input, for brevity in tests.
pub fn cas(expected: Option<Value>, new: Value) -> Input {
    Input::Cas { expected, new }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Input::{Get, Put};

    fn run(ops: &[Operation]) -> Report {
        check(ops, &CheckOptions::default()).unwrap()
    }

    fn violation(r: &Report) -> &Counterexample {
        r.keys
            .iter()
            .find_map(|k| match &k.outcome {
                Outcome::Violation(c) => Some(&**c),
                _ => None,
            })
            .unwrap_or_else(|| panic!("expected a violation:\n{r}"))
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            op(0, "k", Get, Output::Get(None), 0, 10),
            op(0, "k", Put(1), Output::Put, 20, 30),
            op(1, "k", Get, Output::Get(Some(1)), 40, 50),
            op(1, "k", cas(Some(1), 2), Output::Cas(true), 60, 70),
            op(0, "k", cas(Some(1), 3), Output::Cas(false), 80, 90),
            op(0, "k", Get, Output::Get(Some(2)), 100, 110),
        ];
        let r = run(&h);
        assert!(r.is_linearizable(), "{r}");
        assert_eq!(r.operations, 6);
        assert_eq!(r.summary(), "checked 6 operations on 1 keys, 0 violations");
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_a_violation() {
        let h = [
            op(0, "k", Put(1), Output::Put, 0, 10),
            op(0, "k", Put(2), Output::Put, 20, 30),
            // Invoked after put(2) was acknowledged, yet sees the older value.
            op(1, "k", Get, Output::Get(Some(1)), 40, 50),
        ];
        let r = run(&h);
        assert_eq!(r.violations(), 1, "{r}");
        let c = violation(&r);
        assert_eq!(c.blocked, h[2]);
        assert_eq!(c.prefix, vec![h[0].clone(), h[1].clone()]);
        assert_eq!(c.state, Some(2));
        let text = c.to_string();
        assert!(
            text.contains("BLOCKED:    [client 1] get(\"k\") -> 1"),
            "{text}"
        );
        assert!(text.contains("leaves the value 2"), "{text}");
    }

    #[test]
    fn lost_cas_is_a_violation() {
        // Two CASes from the same expected value both claim success.
        let h = [
            op(0, "k", Put(1), Output::Put, 0, 10),
            op(1, "k", cas(Some(1), 2), Output::Cas(true), 20, 30),
            op(2, "k", cas(Some(1), 3), Output::Cas(true), 25, 35),
        ];
        assert_eq!(run(&h).violations(), 1);
        // A successful CAS whose write is then not visible.
        let h = [
            op(0, "k", Put(1), Output::Put, 0, 10),
            op(1, "k", cas(Some(1), 2), Output::Cas(true), 20, 30),
            op(2, "k", Get, Output::Get(Some(1)), 40, 50),
        ];
        let r = run(&h);
        assert_eq!(violation(&r).blocked, h[2]);
        // A CAS that reports failure although its comparison must have held.
        let h = [
            op(0, "k", Put(1), Output::Put, 0, 10),
            op(1, "k", cas(Some(1), 2), Output::Cas(false), 20, 30),
        ];
        assert_eq!(run(&h).violations(), 1);
    }

    #[test]
    fn concurrent_overlapping_operations_are_fine() {
        let h = [
            op(0, "k", Put(1), Output::Put, 0, 100),
            op(1, "k", Get, Output::Get(None), 5, 15),
            op(3, "k", Put(2), Output::Put, 12, 60),
            op(2, "k", Get, Output::Get(Some(2)), 14, 20),
            op(4, "k", cas(Some(2), 3), Output::Cas(true), 30, 40),
            op(1, "k", Get, Output::Get(Some(3)), 50, 55),
            // Overlaps put(1), which may take effect last.
            op(2, "k", Get, Output::Get(Some(1)), 70, 80),
        ];
        let r = run(&h);
        assert!(r.is_linearizable(), "{r}");
        // But once a newer value has been read, an older one cannot come back.
        let mut bad = h.to_vec();
        bad.push(op(3, "k", Get, Output::Get(Some(3)), 110, 120));
        assert_eq!(run(&bad).violations(), 1);
    }

    #[test]
    fn reads_cannot_go_back_in_time() {
        let h = [
            op(0, "k", Put(1), Output::Put, 0, 100),
            op(1, "k", Get, Output::Get(Some(1)), 10, 20),
            op(2, "k", Get, Output::Get(None), 30, 40),
        ];
        let r = run(&h);
        let c = violation(&r);
        assert_eq!(c.blocked, h[2]);
    }

    #[test]
    fn unknown_writes_may_take_effect_any_time_after_invocation() {
        // Never answered, but observed much later: fine.
        let h = [
            op(0, "k", Put(1), Output::Unknown, 0, 5),
            op(1, "k", Get, Output::Get(None), 50, 60),
            op(1, "k", Get, Output::Get(Some(1)), 100, 110),
        ];
        let r = run(&h);
        assert!(r.is_linearizable(), "{r}");
        assert_eq!(r.unknown_writes, 1);
        // Never observed at all: also fine (it may never have happened).
        let h = [
            op(0, "k", Put(1), Output::Unknown, 0, 5),
            op(1, "k", Put(2), Output::Put, 10, 20),
            op(1, "k", Get, Output::Get(Some(2)), 30, 40),
        ];
        assert!(run(&h).is_linearizable());
        // But it cannot take effect before it was invoked.
        let h = [
            op(1, "k", Get, Output::Get(Some(1)), 0, 10),
            op(0, "k", Put(1), Output::Unknown, 20, 25),
        ];
        assert_eq!(run(&h).violations(), 1);
        // And once seen it stays until overwritten.
        let h = [
            op(0, "k", Put(1), Output::Unknown, 0, 5),
            op(1, "k", Get, Output::Get(Some(1)), 100, 110),
            op(1, "k", Get, Output::Get(None), 120, 130),
        ];
        assert_eq!(run(&h).violations(), 1);
        // An unknown CAS writes only if its comparison held when it took effect.
        let h = [
            op(0, "k", Put(1), Output::Put, 0, 10),
            op(1, "k", cas(Some(1), 2), Output::Unknown, 20, 25),
            op(2, "k", Get, Output::Get(Some(2)), 100, 110),
        ];
        assert!(run(&h).is_linearizable());
        let h = [
            op(0, "k", Put(5), Output::Put, 0, 10),
            op(1, "k", cas(Some(1), 2), Output::Unknown, 20, 25),
            op(2, "k", Get, Output::Get(Some(2)), 100, 110),
        ];
        assert_eq!(run(&h).violations(), 1);
        // An unknown write can explain a CAS failure that is otherwise impossible.
        let h = [
            op(0, "k", Put(1), Output::Put, 0, 10),
            op(1, "k", Put(9), Output::Unknown, 15, 16),
            op(2, "k", cas(Some(1), 2), Output::Cas(false), 20, 30),
        ];
        assert!(run(&h).is_linearizable());
    }

    #[test]
    fn unknown_reads_are_dropped() {
        let h = [
            op(0, "k", Put(1), Output::Put, 0, 10),
            op(1, "k", Get, Output::Unknown, 20, 30),
        ];
        let r = run(&h);
        assert!(r.is_linearizable());
        assert_eq!(r.operations, 1);
        assert_eq!(r.dropped_unknown_reads, 1);
    }

    #[test]
    fn keys_are_checked_independently() {
        let h = [
            op(0, "a", Put(1), Output::Put, 0, 10),
            op(0, "b", Put(2), Output::Put, 0, 10),
            op(1, "a", Get, Output::Get(Some(1)), 20, 30),
            // Key b's read sees a value never written to b.
            op(1, "b", Get, Output::Get(Some(1)), 20, 30),
            op(2, "c", Get, Output::Get(None), 0, 1),
        ];
        let r = run(&h);
        assert_eq!(r.operations, 5);
        assert_eq!(r.keys.len(), 3);
        assert_eq!(r.violations(), 1);
        assert_eq!(violation(&r).key, "b");
        assert!(r
            .summary()
            .starts_with("checked 5 operations on 3 keys, 1 violations"));
        assert!(r.to_string().contains("key \"b\": 2 operations VIOLATION"));
    }

    #[test]
    fn malformed_histories_are_errors() {
        let h = [op(0, "k", Get, Output::Put, 0, 10)];
        assert!(matches!(
            check(&h, &CheckOptions::default()),
            Err(HistoryError::OutputMismatch { index: 0, .. })
        ));
        let h = [
            op(0, "k", Put(1), Output::Put, 0, 10),
            op(0, "k", Put(2), Output::Put, 30, 20),
        ];
        assert!(matches!(
            check(&h, &CheckOptions::default()),
            Err(HistoryError::AnsweredBeforeInvoked { index: 1, .. })
        ));
        // Unknown operations carry no meaningful answer time.
        let h = [op(0, "k", Put(1), Output::Unknown, 30, 0)];
        assert!(check(&h, &CheckOptions::default()).is_ok());
    }

    #[test]
    fn search_bounds_give_unknown_instead_of_hanging() {
        // 22 fully concurrent writes then a read of a value nobody wrote: proving the
        // violation needs every subset of the writes, far beyond a 50 ms budget.
        let mut h: Vec<Operation> = (0..22)
            .map(|i| op(i, "k", Put(i as u64), Output::Put, 0, 1000))
            .collect();
        h.push(op(99, "k", Get, Output::Get(Some(777)), 2000, 2010));
        let opts = CheckOptions {
            time_budget_per_key: Duration::from_millis(50),
            ..CheckOptions::default()
        };
        let started = Instant::now();
        let r = check(&h, &opts).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(r.unknown(), 1, "{r}");
        assert!(!r.is_linearizable());
        assert!(
            r.summary().contains("1 keys not decided"),
            "{}",
            r.summary()
        );

        let opts = CheckOptions {
            max_ops_per_key: 10,
            ..CheckOptions::default()
        };
        let r = check(&h, &opts).unwrap();
        assert!(
            matches!(&r.keys[0].outcome, Outcome::Unknown(w) if w.contains("per-key limit")),
            "{r}"
        );
    }

    #[test]
    fn long_concurrent_history_is_checked_quickly() {
        // 4 clients in lockstep rounds, overlapping within a round: 4000 operations.
        let mut h = Vec::new();
        let mut value = None;
        let mut next = 1u64;
        for round in 0..1000u64 {
            let t = round * 100;
            h.push(op(0, "k", Put(next), Output::Put, t, t + 50));
            h.push(op(1, "k", Get, Output::Get(value), t + 1, t + 10));
            h.push(op(2, "k", Get, Output::Get(Some(next)), t + 20, t + 60));
            h.push(op(
                3,
                "k",
                cas(Some(next), next + 1),
                Output::Cas(true),
                t + 61,
                t + 70,
            ));
            value = Some(next + 1);
            next += 2;
        }
        let started = Instant::now();
        let r = run(&h);
        assert!(r.is_linearizable(), "{r}");
        assert_eq!(r.operations, 4000);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}
