//! Helpers shared by several test binaries of this crate (each binary compiles this module on
//! its own and uses a part of it, hence `dead_code` is allowed here).
#![allow(dead_code)]

pub mod ansible;
pub mod lab;
