//! Reading `ansible-playbook` output: the PLAY RECAP per host and the tasks that changed.
//! Used by tests/tests/ansible.rs and tests/tests/lab.rs.

use std::collections::BTreeMap;

/// `host : ok=N changed=N unreachable=N failed=N ...` from the last PLAY RECAP.
pub fn recap(out: &str, host: &str) -> BTreeMap<String, u32> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.split_whitespace().next() == Some(host) && l.contains("ok="))
        .unwrap_or_else(|| panic!("no PLAY RECAP line for {host}:\n{out}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(u32::MAX)))
        .collect()
}

/// The tasks a run reported as changed, each with its host line (for failure messages).
pub fn changed_tasks(out: &str) -> Vec<String> {
    let mut task = "";
    let mut v = Vec::new();
    for l in out.lines() {
        if l.starts_with("TASK [") || l.starts_with("RUNNING HANDLER [") {
            task = l;
        } else if l.starts_with("changed:") {
            v.push(format!("{task} {l}"));
        }
    }
    v
}

/// The hosts reported `changed` by each run of the task or handler whose header contains
/// `name`, in order (one entry per time the task ran).
pub fn changed_hosts_per_run(out: &str, name: &str) -> Vec<Vec<String>> {
    let mut runs: Vec<Vec<String>> = Vec::new();
    let mut inside = false;
    for l in out.lines() {
        if l.starts_with("TASK [") || l.starts_with("RUNNING HANDLER [") || l.starts_with("PLAY") {
            inside = l.contains(name);
            if inside {
                runs.push(Vec::new());
            }
        } else if inside && l.starts_with("changed: [") {
            let host = l["changed: [".len()..]
                .split(']')
                .next()
                .unwrap_or_default()
                .split(" -> ")
                .next()
                .unwrap_or_default()
                .to_string();
            runs.last_mut().unwrap().push(host);
        }
    }
    runs
}
