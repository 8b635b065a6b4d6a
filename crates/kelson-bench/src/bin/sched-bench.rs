//! `sched-bench`: placeholder while the scheduler benchmark is being written.
fn main() {
    eprintln!("sched-bench: not written yet");
    std::process::exit(2);
}
