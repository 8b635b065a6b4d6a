//! The eviction manager's memory between passes: which thresholds are met, since when, and
//! which node conditions they hold up. A pure state machine over observations and a clock, so
//! every rule is unit-tested without a machine under pressure.
//!
//! Rules, as upstream's `synchronize`:
//! - a threshold is met when the signal's available amount is below it (percentages are of the
//!   signal's capacity);
//! - a threshold that was acted on stays met until the signal is back above threshold plus
//!   its minimum reclaim (so the node does not flap at the edge);
//! - node conditions follow every met threshold at once (soft ones too, before their grace
//!   period), and stay until `eviction-pressure-transition-period` has passed since a threshold
//!   of theirs was last seen met;
//! - a soft threshold acts only once it has been met continuously for its grace period;
//! - what acts is ordered memory first, then disk, then PIDs (upstream reclaims memory first).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::signals::{Observation, Observations};
use super::thresholds::{PressureKind, Signal, Threshold};

/// Node conditions derived from the signals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

impl Pressure {
    pub fn get(&self, k: PressureKind) -> bool {
        match k {
            PressureKind::Memory => self.memory,
            PressureKind::Disk => self.disk,
            PressureKind::Pid => self.pid,
        }
    }

    fn set(&mut self, k: PressureKind) {
        match k {
            PressureKind::Memory => self.memory = true,
            PressureKind::Disk => self.disk = true,
            PressureKind::Pid => self.pid = true,
        }
    }

    /// Upstream's condition names of what is under pressure (`[MemoryPressure]`).
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.memory {
            v.push("MemoryPressure");
        }
        if self.disk {
            v.push("DiskPressure");
        }
        if self.pid {
            v.push("PIDPressure");
        }
        v
    }
}

/// What one pass decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub pressure: Pressure,
    /// Thresholds to act on now, most urgent first, with what was observed.
    pub act: Vec<(Threshold, Observation)>,
}

type Key = (Signal, bool);

fn key(t: &Threshold) -> Key {
    (t.signal, t.hard)
}

/// Whether `t` is met by `obs`; with `reclaim`, the minimum reclaim is added to the bar.
pub fn is_met(t: &Threshold, obs: &Observations, reclaim: bool) -> Option<Observation> {
    let o = *obs.get(&t.signal)?;
    let mut bar = t.value.resolve(o.capacity);
    if reclaim {
        bar += t.min_reclaim.map_or(0, |r| r.resolve(o.capacity));
    }
    (o.available < bar).then_some(o)
}

#[derive(Debug, Default)]
pub struct State {
    first_observed: HashMap<Key, Instant>,
    /// Thresholds acted on in the last pass (they need the minimum reclaim to clear).
    acting: Vec<Threshold>,
    last_observed: HashMap<&'static str, Instant>,
}

fn kind_key(k: PressureKind) -> &'static str {
    match k {
        PressureKind::Memory => "memory",
        PressureKind::Disk => "disk",
        PressureKind::Pid => "pid",
    }
}

impl State {
    pub fn update(
        &mut self,
        thresholds: &[Threshold],
        transition: Duration,
        obs: &Observations,
        now: Instant,
    ) -> Decision {
        let mut met: Vec<(Threshold, Observation)> = thresholds
            .iter()
            .filter_map(|t| is_met(t, obs, false).map(|o| (t.clone(), o)))
            .collect();
        for t in &self.acting {
            // Only thresholds still configured (a reload may have lifted one).
            if !thresholds.contains(t) || met.iter().any(|(m, _)| key(m) == key(t)) {
                continue;
            }
            if let Some(o) = is_met(t, obs, true) {
                met.push((t.clone(), o));
            }
        }
        self.first_observed
            .retain(|k, _| met.iter().any(|(t, _)| key(t) == *k));
        for (t, _) in &met {
            self.first_observed.entry(key(t)).or_insert(now);
            self.last_observed
                .insert(kind_key(t.signal.pressure()), now);
        }
        let mut pressure = Pressure::default();
        for k in [PressureKind::Memory, PressureKind::Disk, PressureKind::Pid] {
            if let Some(at) = self.last_observed.get(kind_key(k)) {
                if *at == now || now.duration_since(*at) < transition {
                    pressure.set(k);
                }
            }
        }
        let mut act: Vec<(Threshold, Observation)> = met
            .into_iter()
            .filter(|(t, _)| {
                self.first_observed
                    .get(&key(t))
                    .is_some_and(|at| now.duration_since(*at) >= t.grace)
            })
            .collect();
        // Memory first (enum order), hard before soft.
        act.sort_by_key(|(t, _)| (t.signal, !t.hard));
        self.acting = act.iter().map(|(t, _)| t.clone()).collect();
        Decision { pressure, act }
    }
}

#[cfg(test)]
mod tests {
    use super::super::thresholds::{parse_thresholds, Amount};
    use super::*;

    fn obs(sig: Signal, available: i128, capacity: i128) -> Observations {
        Observations::from([(
            sig,
            Observation {
                available,
                capacity,
            },
        )])
    }

    #[test]
    fn hard_threshold_acts_at_once_and_condition_lingers_for_the_transition_period() {
        let t = parse_thresholds(Some("memory.available<100"), None, None, None).unwrap();
        let mut s = State::default();
        let t0 = Instant::now();
        let tr = Duration::from_secs(30);
        let d = s.update(&t, tr, &obs(Signal::MemoryAvailable, 50, 1000), t0);
        assert!(d.pressure.memory && !d.pressure.disk);
        assert_eq!(d.act.len(), 1);
        assert_eq!(d.act[0].1.available, 50);
        // Relieved: no action, but the condition holds until the transition period passed.
        let d = s.update(
            &t,
            tr,
            &obs(Signal::MemoryAvailable, 500, 1000),
            t0 + tr / 2,
        );
        assert!(d.act.is_empty());
        assert!(d.pressure.memory);
        let d = s.update(&t, tr, &obs(Signal::MemoryAvailable, 500, 1000), t0 + tr);
        assert!(!d.pressure.memory);
        // No observation of a signal: nothing is met.
        let d = s.update(&t, tr, &Observations::new(), t0 + tr * 2);
        assert_eq!(
            d,
            Decision {
                pressure: Pressure::default(),
                act: vec![]
            }
        );
    }

    #[test]
    fn soft_thresholds_wait_for_their_grace_period_and_percentages_use_capacity() {
        let t = parse_thresholds(
            Some(""),
            Some("nodefs.available<20%"),
            Some("nodefs.available=10s"),
            None,
        )
        .unwrap();
        let mut s = State::default();
        let t0 = Instant::now();
        let low = obs(Signal::NodeFsAvailable, 100, 1000);
        let d = s.update(&t, Duration::ZERO, &low, t0);
        assert!(
            d.pressure.disk,
            "the condition does not wait for the grace period"
        );
        assert!(d.act.is_empty());
        let d = s.update(&t, Duration::ZERO, &low, t0 + Duration::from_secs(10));
        assert_eq!(d.act.len(), 1);
        // 200 of 1000 is not below 20%.
        let d = s.update(
            &t,
            Duration::ZERO,
            &obs(Signal::NodeFsAvailable, 200, 1000),
            t0,
        );
        assert!(d.act.is_empty() && !d.pressure.disk);
    }

    #[test]
    fn minimum_reclaim_keeps_an_acted_threshold_met() {
        let mut t = parse_thresholds(Some("memory.available<100"), None, None, None).unwrap();
        t[0].min_reclaim = Some(Amount::Quantity(50));
        let mut s = State::default();
        let t0 = Instant::now();
        assert_eq!(
            s.update(
                &t,
                Duration::ZERO,
                &obs(Signal::MemoryAvailable, 90, 1000),
                t0
            )
            .act
            .len(),
            1
        );
        // 120 is above the threshold but not above threshold + reclaim.
        let d = s.update(
            &t,
            Duration::ZERO,
            &obs(Signal::MemoryAvailable, 120, 1000),
            t0,
        );
        assert_eq!(d.act.len(), 1);
        let d = s.update(
            &t,
            Duration::ZERO,
            &obs(Signal::MemoryAvailable, 151, 1000),
            t0,
        );
        assert!(d.act.is_empty());
        // Lifting the threshold (reload) clears it at once.
        s.update(
            &t,
            Duration::ZERO,
            &obs(Signal::MemoryAvailable, 90, 1000),
            t0,
        );
        let d = s.update(
            &[],
            Duration::ZERO,
            &obs(Signal::MemoryAvailable, 90, 1000),
            t0,
        );
        assert!(d.act.is_empty());
    }

    #[test]
    fn memory_is_reclaimed_before_disk_and_pids() {
        let t = parse_thresholds(
            Some("pid.available<10,nodefs.available<10,memory.available<10"),
            None,
            None,
            None,
        )
        .unwrap();
        let mut o = obs(Signal::MemoryAvailable, 1, 100);
        o.extend(obs(Signal::NodeFsAvailable, 1, 100));
        o.extend(obs(Signal::PidAvailable, 1, 100));
        let d = State::default().update(&t, Duration::ZERO, &o, Instant::now());
        let order: Vec<Signal> = d.act.iter().map(|(t, _)| t.signal).collect();
        assert_eq!(
            order,
            vec![
                Signal::MemoryAvailable,
                Signal::NodeFsAvailable,
                Signal::PidAvailable
            ]
        );
        assert_eq!(
            d.pressure.names(),
            vec!["MemoryPressure", "DiskPressure", "PIDPressure"]
        );
    }
}
