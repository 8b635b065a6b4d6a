//! kelson-pki
