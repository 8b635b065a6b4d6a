//! kelson-kv
