//! kelson-raft
