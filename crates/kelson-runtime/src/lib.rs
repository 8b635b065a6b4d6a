//! kelson-runtime
