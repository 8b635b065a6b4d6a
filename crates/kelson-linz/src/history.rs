//! What a client observed: one [`Operation`] per call, with the times the client invoked it
//! and saw its response, on a monotonic clock shared by every client of one test.
//!
//! Values are `u64`s so that a test can make every written value unique (client id and a
//! sequence number packed together); uniqueness is what makes a read point at exactly one
//! write, which keeps the search small and the counterexamples readable.
//!
//! An operation whose outcome the client does not know (a timeout, an unavailable member, a
//! dropped connection) is recorded with [`Output::Unknown`]: the checker treats it as possibly
//! taking effect at any moment after its invocation (Porcupine's "info" operations).

use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

/// A register value. Tests keep them unique per write.
pub type Value = u64;

/// What a client asked for, on one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Input {
    /// Unconditionally write `value`.
    Put(Value),
    /// A linearizable read of the key.
    Get,
    /// Compare-and-set: if the key's value equals `expected` (`None`: the key does not
    /// exist), write `new`.
    Cas { expected: Option<Value>, new: Value },
}

/// What the client saw as the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Output {
    /// The put was acknowledged.
    Put,
    /// The read returned this value (`None`: the key did not exist).
    Get(Option<Value>),
    /// Whether the compare-and-set's comparison held (and so whether it wrote).
    Cas(bool),
    /// No answer (timeout, error): the operation may or may not have taken effect.
    Unknown,
}

/// One call as observed by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Which client issued it (only for reports: the checker does not need it).
    pub client: usize,
    pub key: String,
    pub input: Input,
    pub output: Output,
    /// When the call was issued, in nanoseconds since the history's origin.
    pub invoke: u64,
    /// When the response (or the error) arrived, in nanoseconds since the origin. Ignored
    /// for [`Output::Unknown`], whose response time is taken as +infinity.
    pub complete: u64,
}

impl Operation {
    /// Whether the outcome is unknown (Porcupine's "info" operation).
    pub fn is_unknown(&self) -> bool {
        self.output == Output::Unknown
    }
}

fn fmt_value(v: Option<Value>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "<absent>".to_string(),
    }
}

fn fmt_ms(ns: u64) -> String {
    format!("{:.3}ms", ns as f64 / 1e6)
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[client {}] ", self.client)?;
        match self.input {
            Input::Put(v) => write!(f, "put({:?}, {v})", self.key)?,
            Input::Get => write!(f, "get({:?})", self.key)?,
            Input::Cas { expected, new } => write!(
                f,
                "cas({:?}, expect {}, set {new})",
                self.key,
                fmt_value(expected)
            )?,
        }
        match self.output {
            Output::Put => write!(f, " -> ok")?,
            Output::Get(v) => write!(f, " -> {}", fmt_value(v))?,
            Output::Cas(ok) => write!(f, " -> {}", if ok { "succeeded" } else { "failed" })?,
            Output::Unknown => write!(f, " -> unknown")?,
        }
        if self.is_unknown() {
            write!(f, "  invoked {}, never answered", fmt_ms(self.invoke))
        } else {
            write!(
                f,
                "  invoked {}, answered {}",
                fmt_ms(self.invoke),
                fmt_ms(self.complete)
            )
        }
    }
}

/// A thread-safe history being recorded: one origin for every client's clock readings.
#[derive(Debug)]
pub struct Recorder {
    origin: Instant,
    ops: Mutex<Vec<Operation>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            origin: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the origin (monotonic).
    pub fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn record(&self, op: Operation) {
        // A panicking client thread must not make the rest of the history unreadable.
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(op);
    }

    pub fn len(&self) -> usize {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of everything recorded so far.
    pub fn operations(&self) -> Vec<Operation> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
