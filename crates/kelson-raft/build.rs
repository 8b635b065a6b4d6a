//! Compiles the peer transport protocol (proto/kelson/raftpeer.proto) with tonic-prost-build.
fn main() {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/kelson/raftpeer.proto"], &["proto"])
        .expect("compiling raftpeer.proto");
}
