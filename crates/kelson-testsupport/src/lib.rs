//! kelson-testsupport
