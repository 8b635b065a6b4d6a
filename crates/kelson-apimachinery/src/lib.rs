//! `kelson-apimachinery`: the pure, I/O-free library every Kelson API-server piece shares.
//!
//! It mirrors the parts of upstream's `k8s.io/apimachinery` (and a few of `apiserver`'s) whose
//! exact behaviour clients can observe, working over `serde_json::Value` so objects keep every
//! field they arrived with:
//!
//! - [`error`]: `ApiError` and its `metav1.Status` JSON, with upstream's message formats;
//! - [`field`]: field-level causes (`Required value`, `Invalid value: "x": ...`);
//! - [`selector`]: label and field selectors, and `metav1.LabelSelector`;
//! - [`validation`]: name, label and object-meta validation with upstream's messages;
//! - [`patch`]: JSON patch, JSON merge patch and strategic merge patch;
//! - [`meta`]: uids, generated names, timestamps and metadata accessors;
//! - [`table`]: `meta.k8s.io/v1` `Table` building and kubectl-style ages.

pub mod error;
pub mod field;
pub mod meta;
pub mod patch;
pub mod selector;
pub mod table;
pub mod validation;

pub use error::{ApiError, StatusCause, StatusDetails};
