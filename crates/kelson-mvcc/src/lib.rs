//! kelson-mvcc
