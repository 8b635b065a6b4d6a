//! Compiles gnostic's `OpenAPIv2.proto` (copied unchanged from google/gnostic-models,
//! Apache-2.0, see proto/NOTICE) into prost messages: the protobuf form of `/openapi/v2` that
//! kubectl asks for. Messages only (no services); `google.protobuf.Any` maps to `prost_types`.
fn main() {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .compile_protos(&["proto/gnostic/openapiv2/OpenAPIv2.proto"], &["proto"])
        .expect("compiling gnostic's OpenAPIv2.proto");
}
