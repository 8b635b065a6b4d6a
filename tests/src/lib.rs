//! kelson-tests
