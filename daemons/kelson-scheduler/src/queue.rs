//! The scheduling queue: active (a priority heap), back-off and unschedulable sets, as
//! upstream's PriorityQueue.
//!
//! - `active`: ordered by priority (high first), then by when the pod was queued (FIFO).
//! - `backoff`: pods that failed recently wait `initial * 2^(attempts-1)` capped at `max`
//!   (upstream 1 s .. 10 s) before becoming active again ([`SchedulingQueue::flush_backoff`]).
//! - `unschedulable`: pods no node fits; they wait for a cluster event that could help
//!   ([`SchedulingQueue::move_all_to_active_or_backoff`]) or for the 5-minute safety flush.
//!
//! A failure that races with such an event (the event arrived while the pod was being
//! scheduled) sends the pod to back-off instead, so the event is not lost (upstream's
//! `moveRequestCycle`). The queue is owned by one task; time is passed in, so it is testable
//! with a fake clock.
//!
//! The scheduling loop asks for the lengths and flushes back-off before every attempt, so
//! neither may scan all pods: with a backlog of 10 000 pending pods that scan cost more than
//! the attempt itself. The lengths are counted as pods change place, and the waiting pods
//! (back-off and unschedulable, usually few) are kept in a set of their own.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// How long a pod may sit in unschedulable before it is retried anyway.
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    priority: i32,
    seq: u64,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.seq == o.seq
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        self.priority
            .cmp(&o.priority)
            .then_with(|| o.seq.cmp(&self.seq))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    Active,
    Backoff,
    Unschedulable,
    /// Popped and being scheduled.
    InFlight,
}

#[derive(Debug)]
struct Info {
    priority: i32,
    attempts: u32,
    place: Where,
    since: Instant,
    /// Incremented on every update so stale heap entries are skipped.
    seq: u64,
    /// The move cycle when the pod was popped.
    popped_at_cycle: u64,
}

/// Queue lengths (active, backoff, unschedulable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lengths {
    pub active: usize,
    pub backoff: usize,
    pub unschedulable: usize,
}

#[derive(Debug)]
pub struct SchedulingQueue {
    heap: BinaryHeap<Entry>,
    pods: HashMap<String, Info>,
    /// Keys of the pods in back-off or unschedulable.
    waiting: HashSet<String>,
    /// Pods per place, kept as they move.
    lengths: Lengths,
    seq: u64,
    move_cycle: u64,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl SchedulingQueue {
    pub fn new(initial_backoff: Duration, max_backoff: Duration) -> Self {
        SchedulingQueue {
            heap: BinaryHeap::new(),
            pods: HashMap::new(),
            waiting: HashSet::new(),
            lengths: Lengths::default(),
            seq: 0,
            move_cycle: 0,
            initial_backoff,
            max_backoff,
        }
    }

    /// Moves `key`'s entry to `to`, keeping the lengths and the waiting set in step.
    fn set_place(&mut self, key: &str, to: Where) {
        let Some(info) = self.pods.get_mut(key) else {
            return;
        };
        let from = std::mem::replace(&mut info.place, to);
        self.count(from, -1);
        self.count(to, 1);
        let waits = |w: Where| matches!(w, Where::Backoff | Where::Unschedulable);
        if waits(to) && !waits(from) {
            self.waiting.insert(key.to_string());
        } else if waits(from) && !waits(to) {
            self.waiting.remove(key);
        }
    }

    fn count(&mut self, place: Where, delta: isize) {
        let n = match place {
            Where::Active => &mut self.lengths.active,
            Where::Backoff => &mut self.lengths.backoff,
            Where::Unschedulable => &mut self.lengths.unschedulable,
            Where::InFlight => return,
        };
        *n = n.saturating_add_signed(delta);
    }

    fn push_active(&mut self, key: &str, now: Instant) {
        self.seq += 1;
        let seq = self.seq;
        self.set_place(key, Where::Active);
        if let Some(info) = self.pods.get_mut(key) {
            info.seq = seq;
            info.since = now;
            self.heap.push(Entry {
                key: key.to_string(),
                priority: info.priority,
                seq,
            });
        }
    }

    /// Adds a new pending pod (or updates the priority of a known one; an update of an
    /// unschedulable pod makes it active again, as its spec may now fit).
    pub fn add(&mut self, key: &str, priority: i32, now: Instant) {
        match self.pods.get_mut(key) {
            None => {
                // Enters in flight (uncounted); push_active counts it as active.
                self.pods.insert(
                    key.to_string(),
                    Info {
                        priority,
                        attempts: 0,
                        place: Where::InFlight,
                        since: now,
                        seq: 0,
                        popped_at_cycle: 0,
                    },
                );
                self.push_active(key, now);
            }
            Some(info) => {
                let changed = info.priority != priority;
                info.priority = priority;
                match info.place {
                    Where::Unschedulable => self.push_active(key, now),
                    Where::Active if changed => self.push_active(key, now),
                    _ => {}
                }
            }
        }
    }

    /// Forgets a pod (deleted or bound).
    pub fn remove(&mut self, key: &str) {
        if let Some(info) = self.pods.remove(key) {
            self.count(info.place, -1);
            if matches!(info.place, Where::Backoff | Where::Unschedulable) {
                self.waiting.remove(key);
            }
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.pods.contains_key(key)
    }

    pub fn place(&self, key: &str) -> Option<Where> {
        self.pods.get(key).map(|i| i.place)
    }

    /// The highest-priority active pod, marked in flight.
    pub fn pop(&mut self) -> Option<String> {
        while let Some(e) = self.heap.pop() {
            let Some(info) = self.pods.get_mut(&e.key) else {
                continue;
            };
            if info.seq != e.seq || info.place != Where::Active {
                continue;
            }
            info.attempts += 1;
            info.popped_at_cycle = self.move_cycle;
            self.set_place(&e.key, Where::InFlight);
            return Some(e.key);
        }
        None
    }

    fn backoff_duration(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(20);
        self.initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff)
    }

    /// A popped pod failed: unschedulable unless a move event happened meanwhile (then
    /// back-off). `unschedulable == false` (an API error) always goes to back-off.
    pub fn requeue_failed(&mut self, key: &str, unschedulable: bool, now: Instant) {
        let cycle = self.move_cycle;
        let Some(info) = self.pods.get_mut(key) else {
            return;
        };
        info.since = now;
        let to = if unschedulable && info.popped_at_cycle >= cycle {
            Where::Unschedulable
        } else {
            Where::Backoff
        };
        self.set_place(key, to);
    }

    /// Moves back-off pods whose time is up to active; returns when the next one is due.
    pub fn flush_backoff(&mut self, now: Instant) -> Option<Instant> {
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for (k, i) in self
            .waiting
            .iter()
            .filter_map(|k| self.pods.get(k).map(|i| (k, i)))
        {
            match i.place {
                Where::Backoff => {
                    let at = i.since + self.backoff_duration(i.attempts);
                    if at <= now {
                        due.push(k.clone());
                    } else {
                        next = Some(next.map_or(at, |n| n.min(at)));
                    }
                }
                Where::Unschedulable if now.duration_since(i.since) >= MAX_UNSCHEDULABLE => {
                    due.push(k.clone());
                }
                _ => {}
            }
        }
        for k in due {
            self.push_active(&k, now);
        }
        next
    }

    /// A cluster event that may make unschedulable pods fit: those still backing off go to
    /// back-off, the others to active.
    pub fn move_all_to_active_or_backoff(&mut self, now: Instant) {
        self.move_cycle += 1;
        let keys: Vec<(String, bool)> = self
            .waiting
            .iter()
            .filter_map(|k| self.pods.get(k).map(|i| (k, i)))
            .filter(|(_, i)| i.place == Where::Unschedulable)
            .map(|(k, i)| (k.clone(), i.since + self.backoff_duration(i.attempts) > now))
            .collect();
        for (k, backing_off) in keys {
            if backing_off {
                self.set_place(&k, Where::Backoff);
            } else {
                self.push_active(&k, now);
            }
        }
    }

    pub fn lengths(&self) -> Lengths {
        self.lengths
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> SchedulingQueue {
        SchedulingQueue::new(Duration::from_secs(1), Duration::from_secs(10))
    }

    #[test]
    fn pops_by_priority_then_fifo() {
        let mut q = q();
        let t = Instant::now();
        q.add("a", 0, t);
        q.add("b", 10, t);
        q.add("c", 0, t);
        assert_eq!(q.pop().as_deref(), Some("b"));
        assert_eq!(q.pop().as_deref(), Some("a"));
        assert_eq!(q.pop().as_deref(), Some("c"));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn backoff_grows_exponentially_and_caps() {
        let mut q = q();
        let t0 = Instant::now();
        q.add("a", 0, t0);
        let mut t = t0;
        let mut waits = Vec::new();
        for _ in 0..6 {
            assert_eq!(q.pop().as_deref(), Some("a"));
            q.requeue_failed("a", false, t);
            assert_eq!(q.lengths().backoff, 1);
            let next = q.flush_backoff(t).unwrap();
            waits.push(next - t);
            t = next;
            q.flush_backoff(t);
            assert_eq!(q.lengths().active, 1);
        }
        let secs: Vec<u64> = waits.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn unschedulable_pods_wait_for_events() {
        let mut q = q();
        let t0 = Instant::now();
        q.add("a", 0, t0);
        q.pop();
        q.requeue_failed("a", true, t0);
        assert_eq!(q.lengths().unschedulable, 1);
        assert_eq!(q.flush_backoff(t0 + Duration::from_secs(60)), None);
        assert_eq!(q.lengths().unschedulable, 1);
        // An event after the back-off period: straight to active.
        q.move_all_to_active_or_backoff(t0 + Duration::from_secs(2));
        assert_eq!(q.pop().as_deref(), Some("a"));
        // An event during the attempt: the failure goes to back-off, not unschedulable.
        q.move_all_to_active_or_backoff(t0 + Duration::from_secs(3));
        q.requeue_failed("a", true, t0 + Duration::from_secs(3));
        assert_eq!(q.lengths().backoff, 1);
        // The 5-minute flush retries unschedulable pods even without events.
        q.flush_backoff(t0 + Duration::from_secs(100));
        q.pop();
        q.requeue_failed("a", true, t0 + Duration::from_secs(100));
        assert_eq!(q.lengths().unschedulable, 1);
        q.flush_backoff(t0 + Duration::from_secs(100) + MAX_UNSCHEDULABLE);
        assert_eq!(q.lengths().active, 1);
    }

    /// The counted lengths and the waiting set agree with a scan of every pod after any
    /// sequence of operations (random, seeded).
    #[test]
    fn counted_lengths_match_a_full_scan() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(7);
        let mut q = q();
        let t0 = Instant::now();
        let mut in_flight: Vec<String> = Vec::new();
        for step in 0..5000u64 {
            let now = t0 + Duration::from_millis(step * 7);
            let key = format!("p{}", rng.gen_range(0..40));
            match rng.gen_range(0..7) {
                0 | 1 => q.add(&key, rng.gen_range(0..3), now),
                2 => q.remove(&key),
                3 => in_flight.extend(q.pop()),
                4 => {
                    if !in_flight.is_empty() {
                        let k = in_flight.swap_remove(rng.gen_range(0..in_flight.len()));
                        if q.place(&k) == Some(Where::InFlight) {
                            q.requeue_failed(&k, rng.gen_bool(0.5), now);
                        }
                    }
                }
                5 => {
                    q.flush_backoff(now);
                }
                _ => q.move_all_to_active_or_backoff(now),
            }
            let mut scan = Lengths::default();
            let mut waiting = HashSet::new();
            for (k, i) in &q.pods {
                match i.place {
                    Where::Active => scan.active += 1,
                    Where::Backoff => scan.backoff += 1,
                    Where::Unschedulable => scan.unschedulable += 1,
                    Where::InFlight => {}
                }
                if matches!(i.place, Where::Backoff | Where::Unschedulable) {
                    waiting.insert(k.clone());
                }
            }
            assert_eq!(q.lengths(), scan, "step {step}");
            assert_eq!(q.waiting, waiting, "step {step}");
        }
    }

    #[test]
    fn removed_pods_are_not_popped() {
        let mut q = q();
        let t = Instant::now();
        q.add("a", 0, t);
        q.add("b", 0, t);
        q.remove("a");
        assert_eq!(q.pop().as_deref(), Some("b"));
        assert_eq!(q.pop(), None);
    }
}
