//! `kelsonctl lab`: a multi-machine Kelson cluster on one host, for integration tests and
//! fault drills.
//!
//! From a cluster description (see [`spec`]) the lab builds one machine per control-plane
//! entry as a systemd-nspawn container with systemd as PID 1 ([`machine`]), in its own network
//! namespace on its zone's bridge, with zones routed through a router namespace and the host
//! attached by one veth ([`net`]); then provisions them with the project's Ansible playbooks
//! over ssh, as an operator would ([`ansible`]: `site.yml` with an inventory generated from the
//! description), or, with `--provision copy`, copies the files rendered by `kelsonctl cluster
//! render` in and starts the control plane directly ([`provision`]). Both leave the same
//! machine behind. What it created is recorded in `DIR/state.json` before it is created
//! ([`state`]), so `lab down` removes everything even after a crash. `lab ansible PLAYBOOK`
//! runs any playbook against the lab (a second `site.yml`, `upgrade.yml`).
//!
//! Fault verbs act on that record: `kill` (SIGKILL to a machine's init: power loss),
//! `stop-zone` (every machine of a zone), `start` (boot a killed machine again, same disk),
//! `partition`/`heal` (nftables in the router namespace between one zone and the others),
//! `exec` (a command inside a machine, through `nsenter`).
//!
//! Workers are QEMU/TCG virtual machines ([`vm`]): containerd cannot create containers inside
//! nspawn on these hosts. Each boots a qcow2 overlay of the lab's worker image (the cached
//! `scripts/vm-image.sh` tree with Kelson installed), with a tap on its zone's bridge, and is
//! provisioned over ssh with the lab's key by `site.yml --limit workers` once the control plane
//! is up ([`ansible::site_workers`]: its rendered `etc/kelson`, containerd configured, the
//! preloaded test images imported, the node units and the speaker — on a second NIC on the
//! VIP's segment, for LoadBalancer addresses — enabled and started), or with `--provision
//! copy` by [`provision::workers`] (the same steps without Ansible). `up` boots at most
//! [`MAX_BOOTING`] VMs at once (each booting VM keeps a core busy).

pub mod ansible;
pub mod cmd;
pub mod machine;
pub mod net;
pub mod process;
pub mod provision;
pub mod spec;
pub mod state;
pub mod vm;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};

use spec::{LabSpec, Role};
use state::{LabState, MachineState, ZoneState};

/// `kelsonctl lab` flags.
#[derive(Debug, Args)]
pub struct LabArgs {
    /// The lab's state directory (machines' disks, state.json, admin.kubeconfig, pki/).
    #[arg(long, global = true, default_value = "/var/lib/kelson-lab")]
    pub lab_dir: PathBuf,
    /// The cluster description (needed by `up`).
    #[arg(long, global = true)]
    pub cluster: Option<PathBuf>,
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the network and machines, configure and start the control plane.
    Up(UpArgs),
    /// Remove every machine, mount, namespace, bridge and veth of the lab.
    Down,
    /// Machines, zones, addresses, whether they run, partitions.
    Status,
    /// Run a command inside a machine (its exit code is ours).
    Exec {
        machine: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Kill a machine at once (SIGKILL to its init: every process in it dies).
    Kill { machine: String },
    /// Boot a killed machine again (same disk) and start its control plane.
    Start { machine: String },
    /// Kill every machine of a zone.
    StopZone { zone: String },
    /// Cut a zone off from the other zones (the host still reaches it).
    Partition { zone: String },
    /// Remove the partition of a zone, or of every zone.
    Heal { zone: Option<String> },
    /// Run an Ansible playbook against the lab's machines with the inventory `up` generated
    /// (`DIR/inventory.yml`), e.g. `site.yml` again or `upgrade.yml -e kelson_bin_dir=DIR`.
    Ansible {
        /// Bound for the whole run, in seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        /// The playbook (relative to the lab's ansible/ directory).
        playbook: String,
        /// Passed on to ansible-playbook.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// How `lab up` configures the machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Provision {
    /// `ansible-playbook site.yml` over ssh with an inventory generated from the description
    /// (the rootfs needs python3 and sshd: ansible/tests/target-rootfs.sh builds one; the
    /// worker image of scripts/vm-image.sh has python3).
    Ansible,
    /// Copy render's files into the machines and start the units directly (no Ansible).
    Copy,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// A finished machine rootfs (scripts/nspawn-rootfs.sh DIR builds and caches one).
    #[arg(long, default_value = "/var/lib/kelson-lab-rootfs")]
    pub rootfs: PathBuf,
    /// Where the kelson-* binaries are (default: next to this kelsonctl).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The cached worker VM tree (scripts/vm-image.sh DIR builds it); needed when the
    /// description declares workers.
    #[arg(long, default_value = "/var/lib/kelson-lab-vm")]
    pub vm_image: PathBuf,
    /// The QEMU binary for workers (scripts/qemu-fetch.sh DIR prints a usable one).
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// How the machines (control plane and workers) are provisioned.
    #[arg(long, value_enum, default_value_t = Provision::Ansible)]
    pub provision: Provision,
    /// The playbooks: the repository's ansible/ directory.
    #[arg(long, default_value = "ansible")]
    pub ansible: PathBuf,
}

/// How many worker VMs boot at the same time (TCG: one busy core each while booting).
pub const MAX_BOOTING: usize = 2;

pub fn run(args: LabArgs) -> anyhow::Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        bail!("kelsonctl lab must run as root (namespaces, mounts, systemd-nspawn)");
    }
    let dir = &args.lab_dir;
    // One changing command at a time per lab (exec and status only read the state; a
    // playbook run changes the machines, not the lab, and may take long: exec and the fault
    // verbs stay usable meanwhile).
    let _lock = match args.command {
        LabCommand::Exec { .. } | LabCommand::Status | LabCommand::Ansible { .. } => None,
        _ => Some(lock(dir)?),
    };
    match args.command {
        LabCommand::Up(up_args) => {
            let cluster = args
                .cluster
                .context("lab up needs --cluster cluster.toml")?;
            up(dir, &cluster, &up_args).with_context(|| {
                format!(
                    "lab up failed; what was built is left for inspection, \
                     `kelsonctl lab down --lab-dir {}` removes it",
                    dir.display()
                )
            })?;
            Ok(0)
        }
        LabCommand::Down => {
            down(dir)?;
            Ok(0)
        }
        LabCommand::Status => status(dir),
        LabCommand::Exec { machine, command } => {
            let st = load(dir)?;
            let m = st.machine(&machine)?;
            if m.vm.is_some() {
                // A worker VM: over ssh, as an operator would.
                if !m.running() {
                    bail!("{machine} is not running");
                }
                let out = vm::ssh(
                    dir,
                    m,
                    &command.iter().map(String::as_str).collect::<Vec<_>>(),
                    Duration::from_secs(300),
                )?;
                use std::io::Write;
                std::io::stdout().write_all(&out.stdout)?;
                std::io::stderr().write_all(&out.stderr)?;
                return Ok(out.status.code().unwrap_or(1));
            }
            let init = m
                .init
                .filter(|p| p.alive())
                .with_context(|| format!("{machine} is not running"))?;
            let argv: Vec<&str> = command.iter().map(String::as_str).collect();
            let out = machine::exec(init, &argv, Duration::from_secs(300))?;
            use std::io::Write;
            std::io::stdout().write_all(&out.stdout)?;
            std::io::stderr().write_all(&out.stderr)?;
            Ok(out.status.code().unwrap_or(1))
        }
        LabCommand::Ansible {
            timeout,
            playbook,
            args,
        } => {
            let st = load(dir)?;
            let ansible_dir = st.ansible.clone().with_context(|| {
                format!(
                    "the lab in {} was provisioned without Ansible (--provision copy)",
                    dir.display()
                )
            })?;
            let status = ansible::playbook(
                dir,
                &ansible_dir,
                &playbook,
                &args,
                Duration::from_secs(timeout),
            )?
            .stdin(std::process::Stdio::null())
            .status()
            .context("running ansible-playbook (ansible-core)")?;
            Ok(status.code().unwrap_or(1))
        }
        LabCommand::Kill { machine } => {
            let st = load(dir)?;
            kill_machine(&st, &machine)?;
            println!("killed {machine}");
            Ok(0)
        }
        LabCommand::Start { machine } => {
            let mut st = load(dir)?;
            start_machine(dir, &mut st, &machine)?;
            println!("started {machine}");
            Ok(0)
        }
        LabCommand::StopZone { zone } => {
            let st = load(dir)?;
            st.zone(&zone)?;
            for m in st.machines.iter().filter(|m| m.zone == zone) {
                kill_machine(&st, &m.name)?;
                println!("killed {}", m.name);
            }
            Ok(0)
        }
        LabCommand::Partition { zone } => {
            let mut st = load(dir)?;
            st.zone(&zone)?;
            if !st.partitioned.contains(&zone) {
                st.partitioned.push(zone.clone());
            }
            net::apply_partitions(&st, dir)?;
            st.save(dir)?;
            println!("partitioned zone {zone}");
            Ok(0)
        }
        LabCommand::Heal { zone } => {
            let mut st = load(dir)?;
            match &zone {
                Some(z) => {
                    st.zone(z)?;
                    st.partitioned.retain(|p| p != z);
                }
                None => st.partitioned.clear(),
            }
            net::apply_partitions(&st, dir)?;
            st.save(dir)?;
            println!("healed {}", zone.as_deref().unwrap_or("every zone"));
            Ok(0)
        }
    }
}

/// Takes `DIR/.lock` (flock, released by the kernel when this process ends, even killed);
/// fails at once when another lab command holds it, rather than waiting unboundedly.
fn lock(dir: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "another `kelsonctl lab` command is working on {} ({e})",
            dir.display()
        )
    })
}

fn load(dir: &Path) -> anyhow::Result<LabState> {
    LabState::load(dir)?
        .with_context(|| format!("no lab in {} (run `kelsonctl lab up`)", dir.display()))
}

/// A short, stable id for a lab directory (FNV-1a of its canonical path; stable across builds,
/// unlike std's hasher), used to make global names (namespaces, the host veth) unique.
pub fn lab_id(dir: &Path) -> String {
    let mut h: u32 = 0x811c9dc5;
    for b in dir.as_os_str().as_encoded_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x01000193);
    }
    format!("{:06x}", h & 0xff_ffff)
}

/// The state a fresh lab for `spec` in `dir` will have (nothing created yet).
pub fn plan(dir: &Path, spec: &LabSpec) -> LabState {
    let id = lab_id(dir);
    let (host_addr, router_addr) = net::transit(&id);
    let zones: Vec<ZoneState> = spec
        .zones
        .iter()
        .enumerate()
        .map(|(i, (name, subnet))| ZoneState {
            name: name.clone(),
            subnet: *subnet,
            bridge: format!("br{i}"),
        })
        .collect();
    let mut workers = 0;
    let machines = spec
        .machines
        .iter()
        .map(|(m, role)| {
            let md = machine::machine_dir(dir, &m.name);
            let vm = (*role == Role::Worker).then(|| {
                workers += 1;
                vm::VmState {
                    tap: vm::tap_name(workers - 1),
                    mac: vm::mac(&id, workers - 1),
                    overlay: md.join("disk.qcow2"),
                    vip_tap: spec.vip.as_ref().map(|_| format!("u{}", workers - 1)),
                    vip_mac: spec
                        .vip
                        .as_ref()
                        .map(|_| vm::mac(&id, (workers - 1) | 0x80)),
                }
            });
            MachineState {
                vm,
                name: m.name.clone(),
                zone: m.zone.clone(),
                role: *role,
                address: m.address,
                netns: format!("kl{id}-{}", m.name),
                root: md.join("root"),
                upper: md.join("upper"),
                work: md.join("work"),
                mounted: false,
                nspawn: None,
                init: None,
            }
        })
        .collect();
    LabState {
        fabric_ns: format!("kl{id}-fab"),
        router_ns: format!("kl{id}-rtr"),
        host_veth: format!("kl{id}h"),
        host_addr,
        router_addr,
        host_routes: spec
            .zones
            .values()
            .copied()
            .chain(spec.vip.iter().map(|v| spec::subnet24(v.address)))
            .collect(),
        vip: spec
            .vip
            .as_ref()
            .map(|v| (spec::subnet24(v.address), v.interface.clone())),
        zones,
        machines,
        base: dir.join("base"),
        partitioned: vec![],
        name: spec.name.clone(),
        id,
        qemu: None,
        vm_image: None,
        ansible: None,
    }
}

/// `lab up`.
pub fn up(dir: &Path, cluster: &Path, args: &UpArgs) -> anyhow::Result<()> {
    let t = Instant::now();
    let spec = LabSpec::load(cluster)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = &dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    if let Some(old) = LabState::load(dir)? {
        if old.machines.iter().any(|m| m.running()) {
            bail!(
                "a lab is already up in {} (run `kelsonctl lab down` first)",
                dir.display()
            );
        }
        // Leftovers of a crashed run.
        teardown(dir, &old);
    }
    for tool in ["systemd-nspawn", "nsenter", "ip", "nft", "mount"] {
        if cmd::output("sh", &["-c", &format!("command -v {tool}")])
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            bail!("{tool} is missing (systemd-container, util-linux, iproute2, nftables)");
        }
    }
    let workers = spec
        .machines
        .iter()
        .filter(|(_, r)| *r == Role::Worker)
        .count();
    let cached = if workers > 0 {
        for tool in ["ssh", "ssh-keygen", "qemu-img", "mkfs.ext4"] {
            if cmd::output("sh", &["-c", &format!("command -v {tool}")])
                .map(|o| !o.status.success())
                .unwrap_or(true)
            {
                bail!("{tool} is missing (openssh-client, qemu-utils, e2fsprogs): workers are QEMU VMs");
            }
        }
        let v = cmd::output(&args.qemu.to_string_lossy(), &["--version"]);
        if !v.map(|o| o.status.success()).unwrap_or(false) {
            bail!(
                "{} does not run: workers are QEMU VMs (scripts/qemu-fetch.sh DIR fetches QEMU without installing it; pass --qemu)",
                args.qemu.display()
            );
        }
        let cached = vm::CachedImage::at(&args.vm_image)?;
        if args.provision == Provision::Ansible && !cached.rootfs.join("usr/bin/python3").exists() {
            bail!(
                "the worker image {} has no python3, which Ansible needs: rebuild it with \
                 scripts/vm-image.sh {} (python3 is in its package list), or pass --provision copy",
                args.vm_image.display(),
                args.vm_image.display()
            );
        }
        Some(cached)
    } else {
        None
    };
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("kelsonctl has no directory")?
            .to_path_buf(),
    };
    let mut st = plan(dir, &spec);
    let by_ansible = args.provision == Provision::Ansible;
    if by_ansible {
        let a = args.ansible.canonicalize().with_context(|| {
            format!("the playbooks: {} (pass --ansible)", args.ansible.display())
        })?;
        if !a.join("site.yml").is_file() {
            bail!(
                "{} has no site.yml (pass --ansible with the repository's ansible/ directory)",
                a.display()
            );
        }
        if cmd::output("sh", &["-c", "command -v ansible-playbook"])
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            bail!("ansible-playbook is missing (ansible-core), or pass --provision copy");
        }
        st.ansible = Some(a);
    }
    if cached.is_some() {
        st.qemu = Some(args.qemu.clone());
        st.vm_image = Some(args.vm_image.canonicalize()?);
    }
    net::check_host_free(st.host_addr, 30)?;
    for net in &st.host_routes {
        net::check_host_free(*net, 24)?;
    }
    st.save(dir)?;

    // Render first: a description that render refuses fails `up` before anything is built.
    let rendered = dir.join("render");
    provision::render(&std::env::current_exe()?, cluster, &rendered)?;
    let key = if by_ansible || cached.is_some() {
        Some(vm::ssh_key(dir)?)
    } else {
        None
    };
    let pubkey = key.as_ref().map(|k| k.with_extension("pub"));
    let seed = pubkey
        .as_deref()
        .filter(|_| by_ansible)
        .map(|pubkey| machine::AnsibleSeed {
            pubkey,
            binaries: ansible::BINARIES,
        });
    machine::prepare_base(&args.rootfs, &st.base, &bin_dir, seed.as_ref())?;
    eprintln!("lab: base layer ready after {:?}", t.elapsed());
    if let Some(cached) = &cached {
        let key = key.clone().context("no ssh key")?;
        vm::prepare_image(
            dir,
            cached,
            &bin_dir,
            &key.with_extension("pub"),
            st.vip.as_ref().map(|(_, i)| i.as_str()),
            if by_ansible {
                vm::ImageKind::Ansible
            } else {
                vm::ImageKind::Copy
            },
            st.router_addr,
        )?;
    }
    net::create_fabric(&st)?;
    let cps: Vec<usize> = (0..st.machines.len())
        .filter(|i| st.machines[*i].vm.is_none())
        .collect();
    let wks: Vec<usize> = (0..st.machines.len())
        .filter(|i| st.machines[*i].vm.is_some())
        .collect();
    for &i in &cps {
        let m = st.machines[i].clone();
        net::create_machine(&st, i, &m)?;
    }
    for &i in &wks {
        vm::create_tap(&st, &st.machines[i])?;
    }
    for &i in &cps {
        st.machines[i].mounted = true;
        st.save(dir)?;
        machine::mount_root(&st.base, &st.machines[i])?;
    }
    for &i in &cps {
        boot(dir, &mut st, i)?;
    }
    for &i in &cps {
        let m = &st.machines[i];
        let init = m.init.context("not booted")?;
        machine::wait_booted(init, machine::BOOT_TIMEOUT)
            .with_context(|| format!("machine {}", m.name))?;
    }
    eprintln!(
        "lab: {} control-plane machines booted after {:?}",
        cps.len(),
        t.elapsed()
    );
    match &st.ansible {
        Some(ansible_dir) => {
            let cluster = cluster
                .canonicalize()
                .with_context(|| format!("resolving {}", cluster.display()))?;
            let bin_dir = bin_dir
                .canonicalize()
                .with_context(|| format!("resolving {}", bin_dir.display()))?;
            let inputs = ansible::Inputs {
                cluster: &cluster,
                render: &rendered,
                bin_dir: &bin_dir,
                key: key.as_deref().context("no ssh key")?,
            };
            ansible::site(dir, &st, ansible_dir, &inputs)?;
            provision::control_plane_done(dir, &st, &rendered)?;
        }
        None => provision::control_plane(dir, &st, &rendered)?,
    }
    // Workers after the control plane: their kubelets register at once, and the VMs' boots
    // (CPU-bound under TCG) do not slow the store's first election.
    for chunk in wks.chunks(MAX_BOOTING) {
        for &i in chunk {
            boot(dir, &mut st, i)?;
        }
        for &i in chunk {
            wait_worker(dir, &st, i)?;
        }
    }
    if !wks.is_empty() {
        eprintln!("lab: {} workers booted after {:?}", wks.len(), t.elapsed());
        let workers: Vec<&MachineState> = wks.iter().map(|&i| &st.machines[i]).collect();
        match &st.ansible {
            Some(ansible_dir) => {
                ansible::site_workers(dir, ansible_dir)?;
                provision::workers_ready(dir, &st, &workers)?;
            }
            None => provision::workers(dir, &st, &workers, &rendered)?,
        }
    }
    eprintln!("lab: up after {:?}", t.elapsed());
    println!(
        "lab {} up: admin kubeconfig {}",
        st.name,
        dir.join("admin.kubeconfig").display()
    );
    for m in &st.machines {
        println!("  {} zone {} {}", m.name, m.zone, m.address);
    }
    Ok(())
}

/// Spawns machine `i` and records its processes.
fn boot(dir: &Path, st: &mut LabState, i: usize) -> anyhow::Result<()> {
    let md = machine::machine_dir(dir, &st.machines[i].name);
    let console = md.join("console.log");
    if st.machines[i].vm.is_some() {
        std::fs::create_dir_all(&md)?;
        let qemu = st.qemu.clone().context("no QEMU recorded for this lab")?;
        let cached = vm::CachedImage::at(st.vm_image.as_deref().context("no VM image recorded")?)?;
        let p = vm::spawn(st, &st.machines[i], &qemu, &cached, &console)?;
        st.machines[i].init = Some(p);
        return st.save(dir);
    }
    let (nspawn, init) = machine::spawn(&st.machines[i], &console)?;
    st.machines[i].nspawn = Some(nspawn);
    st.machines[i].init = Some(init);
    st.save(dir)
}

/// Waits (bounded) for worker `i` to boot (ssh answers, systemd done).
fn wait_worker(dir: &Path, st: &LabState, i: usize) -> anyhow::Result<()> {
    let m = &st.machines[i];
    let console = machine::machine_dir(dir, &m.name).join("console.log");
    vm::wait_booted(dir, m, m.init.context("not booted")?, &console)
        .with_context(|| format!("worker {}", m.name))
}

/// `lab kill`: the machine dies at once and its link goes down, so peers see what they would
/// see of a machine that lost power (no answer: timeouts), not refused connections from a
/// still-present address.
pub fn kill_machine(st: &LabState, name: &str) -> anyhow::Result<()> {
    let m = st.machine(name)?;
    if m.vm.is_some() {
        vm::kill(m)?;
        return vm::set_link(st, m, false);
    }
    machine::kill(m)?;
    net::set_link(st, m, false)
}

/// `lab start`: boots a stopped machine on its existing disk; a control-plane machine starts
/// its control plane again (the lab starts the target rather than enabling it, so a machine's
/// services come up only when the lab says so).
pub fn start_machine(dir: &Path, st: &mut LabState, name: &str) -> anyhow::Result<()> {
    let i = st
        .machines
        .iter()
        .position(|m| m.name == name)
        .with_context(|| format!("no machine {name:?} in this lab"))?;
    if st.machines[i].running() {
        bail!("{name} is running");
    }
    if st.machines[i].vm.is_some() {
        // The worker's units are enabled: booting its disk again brings the node back.
        let m = st.machines[i].clone();
        vm::set_link(st, &m, true)?;
        boot(dir, st, i)?;
        return wait_worker(dir, st, i);
    }
    if !net::netns_exists(&st.machines[i].netns) {
        bail!("{name}'s network namespace is gone; run `lab down` and `lab up`");
    }
    machine::mount_root(&st.base, &st.machines[i])?;
    let m = st.machines[i].clone();
    net::set_link(st, &m, true)?;
    boot(dir, st, i)?;
    let m = &st.machines[i];
    let init = m.init.context("not booted")?;
    machine::wait_booted(init, machine::BOOT_TIMEOUT)?;
    if m.role == Role::ControlPlane && m.root.join("etc/kelson/kv.toml").is_file() {
        machine::exec_ok(
            init,
            &[
                "systemctl",
                "start",
                "--no-block",
                "kelson-control-plane.target",
            ],
            Duration::from_secs(60),
        )?;
        if m.root.join(provision::CCM_CONFIG).is_file() {
            machine::exec_ok(
                init,
                &["systemctl", "start", "--no-block", provision::CCM_UNIT],
                Duration::from_secs(60),
            )?;
        }
        if m.root.join("etc/kelson/speaker.toml").is_file() {
            machine::exec_ok(
                init,
                &["systemctl", "start", "--no-block", "kelson-speaker.service"],
                Duration::from_secs(60),
            )?;
        }
    }
    Ok(())
}

/// `lab down`: removes everything recorded, then the machines' disks and the record.
pub fn down(dir: &Path) -> anyhow::Result<()> {
    let Some(st) = LabState::load(dir)? else {
        println!("no lab in {}", dir.display());
        return Ok(());
    };
    teardown(dir, &st);
    let leftovers: Vec<String> = st
        .machines
        .iter()
        .filter(|m| m.running() || machine::is_mounted(&m.root) || net::netns_exists(&m.netns))
        .map(|m| m.name.clone())
        .chain(
            [&st.fabric_ns, &st.router_ns]
                .into_iter()
                .filter(|ns| net::netns_exists(ns))
                .cloned(),
        )
        .collect();
    if !leftovers.is_empty() {
        bail!("lab down: still present: {}", leftovers.join(", "));
    }
    // The rendered secrets and the host's credentials are of no use without the cluster.
    let _ = std::fs::remove_dir_all(dir.join("render"));
    let _ = std::fs::remove_dir_all(dir.join("pki"));
    let _ = std::fs::remove_dir_all(dir.join("ssh"));
    for f in [
        "admin.kubeconfig",
        "partition.nft",
        "inventory.yml",
        ansible::SITE_LOG,
        ansible::WORKERS_LOG,
    ] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    std::fs::remove_file(state::path(dir))?;
    println!("lab {} down", st.name);
    Ok(())
}

/// Kills machines, unmounts, removes namespaces and disks; best effort, never fails.
fn teardown(dir: &Path, st: &LabState) {
    let t = Instant::now();
    for m in &st.machines {
        let killed = if m.vm.is_some() {
            vm::kill(m)
        } else {
            machine::kill(m)
        };
        if let Err(e) = killed {
            eprintln!("lab down: {e:#}");
        }
        machine::unmount_root(m);
    }
    ansible::end_ssh_masters(dir);
    tracing::info!(elapsed = ?t.elapsed(), "machines stopped and unmounted");
    net::destroy(st);
    tracing::info!(elapsed = ?t.elapsed(), "network removed");
    for m in &st.machines {
        if !machine::is_mounted(&m.root) {
            let _ = std::fs::remove_dir_all(machine::machine_dir(dir, &m.name));
        }
    }
    // The base layer is per lab (it holds this build's binaries): rebuilt by the next `up`.
    if st.machines.iter().all(|m| !machine::is_mounted(&m.root)) {
        let _ = std::fs::remove_dir_all(&st.base);
        let _ = std::fs::remove_dir_all(st.base.with_extension("tmp"));
    }
    let _ = std::fs::remove_dir(dir.join("machines"));
    // The worker image is per lab too (it holds this build's binaries and the lab's key).
    let _ = std::fs::remove_file(vm::lab_image(dir));
    let _ = std::fs::remove_dir_all(dir.join("worker-tree"));
    let _ = std::fs::remove_file(dir.join("worker.img.done"));
    tracing::info!(elapsed = ?t.elapsed(), "disks removed");
}

fn status(dir: &Path) -> anyhow::Result<i32> {
    let st = load(dir)?;
    println!("lab {} (id {}) in {}", st.name, st.id, dir.display());
    for z in &st.zones {
        let p = if st.partitioned.contains(&z.name) {
            "  PARTITIONED"
        } else {
            ""
        };
        println!("zone {} {}/24{p}", z.name, z.subnet);
    }
    let mut code = 0;
    for m in &st.machines {
        let run = if m.running() {
            format!("running (init pid {})", m.init.map(|p| p.pid).unwrap_or(0))
        } else {
            code = 1;
            "stopped".to_string()
        };
        println!("machine {} zone {} {} {run}", m.name, m.zone, m.address);
    }
    Ok(code)
}
