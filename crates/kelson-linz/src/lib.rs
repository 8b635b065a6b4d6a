//! A linearizability checker for key-value histories, in the style of Porcupine (Athalye) and
//! Knossos: record what concurrent clients saw ([`Recorder`], [`Operation`]), then ask whether
//! some total order of the operations, consistent with real time, explains every answer
//! ([`check`]).
//!
//! - `history`: operations (put, get, compare-and-set), their outputs and timestamps.
//! - `model`: the sequential specification, one register per key.
//! - `checker`: the Wing–Gong/Lowe search, split per key, bounded, with counterexamples.
//!
//! Used by the chaos tests in `tests/tests/linearizability.rs`, which run the same workload
//! against kelson-kv and the real etcd.

mod checker;
mod history;
mod model;

pub use checker::{
    cas, check, op, CheckOptions, Counterexample, HistoryError, KeyReport, Outcome, Report,
};
pub use history::{Input, Operation, Output, Recorder, Value};
pub use model::{step, State};
