//! Compiles etcd's v3 API protos (copied unchanged from etcd, Apache-2.0, see proto/NOTICE) and
//! Kelson's internal messages into Rust with tonic-prost-build.
fn main() {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(
            &[
                "proto/etcd/api/authpb/auth.proto",
                "proto/etcd/api/etcdserverpb/rpc.proto",
                "proto/etcd/api/mvccpb/kv.proto",
                "proto/kelson/internal.proto",
            ],
            &["proto"],
        )
        .expect("compiling etcd protos");
}
