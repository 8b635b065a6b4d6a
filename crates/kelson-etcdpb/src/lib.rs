//! etcd v3 API types and gRPC stubs, generated from etcd's own `.proto` files.
//!
//! We generate from the protos rather than use `etcd-client`'s `build-server` re-exports because
//! those re-export only part of the message set (no `WatchCreateRequest`, no nested enums such as
//! `compare::CompareResult`), and a server must name all of them. The generated code is the same
//! wire contract the stock client uses, so a `kelson-kv` server and `etcd-client` interoperate.

#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
pub mod authpb {
    tonic::include_proto!("authpb");
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
/// Kelson-internal messages (package `kelson.kv.v1`), nested as prost's paths expect.
pub mod kelson {
    pub mod kv {
        pub mod v1 {
            tonic::include_proto!("kelson.kv.v1");
        }
    }
}
/// Kelson-internal messages: the request replicated through Raft and its response.
pub use kelson::kv::v1 as internal;

pub use etcdserverpb::*;
pub use mvccpb::{event::EventType, Event, KeyValue};
