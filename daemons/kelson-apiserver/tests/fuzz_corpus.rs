//! The fuzz corpus as a stable regression test: every file under `fuzz/corpus/<target>/` runs
//! through the same entry point its cargo-fuzz target uses (`fuzz/harness/*.rs`, included here
//! by path), so CI replays the seeds and every crash input ever added to the corpus without
//! nightly or cargo-fuzz. A panic names the file that caused it.

#[path = "../../../fuzz/harness/server.rs"]
mod server;

#[path = "../../../fuzz/harness/selectors.rs"]
mod selectors;

use std::path::PathBuf;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Runs `entry` over every file of the target's corpus; fails listing each panicking input.
fn replay(target: &str, entry: fn(&[u8])) {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading the fuzz corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "the {target} corpus at {} has only {} files",
        dir.display(),
        files.len()
    );
    let mut panicked = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("reading {}: {e}", f.display()));
        if std::panic::catch_unwind(|| entry(&data)).is_err() {
            panicked.push(f.display().to_string());
        }
    }
    assert!(
        panicked.is_empty(),
        "{} of {} {target} corpus inputs panicked: {panicked:?}",
        panicked.len(),
        files.len()
    );
}

#[test]
fn decode_corpus_never_panics() {
    replay("decode", server::decode);
}

#[test]
fn patch_corpus_never_panics() {
    replay("patch", server::patch);
}

#[test]
fn selectors_corpus_never_panics() {
    replay("selectors", selectors::selectors);
}
