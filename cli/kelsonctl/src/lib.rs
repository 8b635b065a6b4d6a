//! kelsonctl
