//! The sequential specification: one register per key, initially absent.
//!
//! `step` answers "if this operation took effect now, in state `s`, could it have produced
//! the output the client saw, and what is the state afterwards?". Operations with an
//! unknown outcome are unconstrained: a put always writes, a compare-and-set writes exactly
//! when its comparison holds. (An unknown operation that never took effect needs no special
//! case: its response time is +infinity, so it can always be placed after everything else.)

use crate::history::{Input, Operation, Output, Value};

/// The state of one key's register: `None` while the key does not exist.
pub type State = Option<Value>;

/// The state after `op` if `op` is consistent with `state`, else `None`.
pub fn step(state: State, op: &Operation) -> Option<State> {
    match (op.input, op.output) {
        (Input::Put(v), Output::Put | Output::Unknown) => Some(Some(v)),
        (Input::Get, Output::Get(seen)) => (seen == state).then_some(state),
        // Unknown reads are dropped before the search; if one slips through it says nothing.
        (Input::Get, Output::Unknown) => Some(state),
        (Input::Cas { expected, new }, Output::Cas(true)) => {
            (state == expected).then_some(Some(new))
        }
        (Input::Cas { expected, .. }, Output::Cas(false)) => (state != expected).then_some(state),
        (Input::Cas { expected, new }, Output::Unknown) => {
            Some(if state == expected { Some(new) } else { state })
        }
        // Mismatched input/output pairs are rejected by the checker's validation.
        _ => None,
    }
}

/// Whether `output` is a possible kind of answer to `input`.
pub fn output_matches(input: Input, output: Output) -> bool {
    matches!(
        (input, output),
        (_, Output::Unknown)
            | (Input::Put(_), Output::Put)
            | (Input::Get, Output::Get(_))
            | (Input::Cas { .. }, Output::Cas(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(input: Input, output: Output) -> Operation {
        Operation {
            client: 0,
            key: "k".into(),
            input,
            output,
            invoke: 0,
            complete: 1,
        }
    }

    #[test]
    fn register_semantics() {
        assert_eq!(step(None, &op(Input::Put(1), Output::Put)), Some(Some(1)));
        assert_eq!(
            step(Some(1), &op(Input::Get, Output::Get(Some(1)))),
            Some(Some(1))
        );
        assert_eq!(step(Some(1), &op(Input::Get, Output::Get(None))), None);
        assert_eq!(step(None, &op(Input::Get, Output::Get(None))), Some(None));
        let cas = |out| {
            op(
                Input::Cas {
                    expected: Some(1),
                    new: 2,
                },
                out,
            )
        };
        assert_eq!(step(Some(1), &cas(Output::Cas(true))), Some(Some(2)));
        assert_eq!(step(Some(3), &cas(Output::Cas(true))), None);
        assert_eq!(step(Some(1), &cas(Output::Cas(false))), None);
        assert_eq!(step(Some(3), &cas(Output::Cas(false))), Some(Some(3)));
        assert_eq!(step(Some(1), &cas(Output::Unknown)), Some(Some(2)));
        assert_eq!(step(Some(3), &cas(Output::Unknown)), Some(Some(3)));
        let create = op(
            Input::Cas {
                expected: None,
                new: 7,
            },
            Output::Cas(true),
        );
        assert_eq!(step(None, &create), Some(Some(7)));
        assert_eq!(step(Some(7), &create), None);
        assert_eq!(step(None, &op(Input::Put(1), Output::Cas(true))), None);
        assert!(!output_matches(Input::Get, Output::Put));
        assert!(output_matches(Input::Get, Output::Unknown));
    }
}
