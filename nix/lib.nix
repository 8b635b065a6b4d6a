# Pure functions over a Kelson cluster description: the same attribute set as cluster.toml
# (`builtins.fromTOML (builtins.readFile ./cluster.toml)` gives exactly that), to per-machine
# roles and daemon configurations.
#
# This is the Nix twin of cli/kelsonctl/src/cluster/configs.rs: same defaults, same roles, same
# keys and values. tests/tests/nix_eval.rs evaluates `render` for examples/cluster/three-zones.toml
# and compares it, machine by machine and daemon by daemon, with what `kelsonctl cluster render`
# wrote — so the two paths cannot drift. Only builtins are used (no nixpkgs `lib`), so it
# evaluates with a bare `nix-instantiate` and no channel.
#
# Key material is not here: certificates and kubeconfigs come from `kelsonctl cluster render`
# (DIR/<machine>/etc/kelson/{pki/,*.kubeconfig}), delivered to the machine as secrets.
let
  inherit (builtins) concatStringsSep filter map match listToAttrs attrNames head length elem;

  defaults = {
    domain = "cluster.local";
    region = null;
    workers = [ ];
    pod_cidr = "10.244.0.0/16";
    service_cidr = "10.96.0.0/12";
    node_cidr_mask = 24;
    lb_pools = [ ];
    kv_client_port = 2379;
    kv_peer_port = 2380;
    apiserver_port = 6443;
  };
  machineDefaults = { labels = { }; taints = [ ]; interface = null; };
  poolDefaults = { zone = null; cidr = null; ranges = [ ]; };

  configDir = "/etc/kelson";
  pkiDir = "/etc/kelson/pki";
  dataDir = "/var/lib/kelson";
  pki = f: "${pkiDir}/${f}";
  cfgFile = f: "${configDir}/${f}";
  optionalAttrs = cond: attrs: if cond then attrs else { };
  isIPv6 = a: match ".*:.*" a != null;
  hostPort = addr: port: if isIPv6 addr then "[${addr}]:${toString port}" else "${addr}:${toString port}";
in
rec {
  # The description with every default filled in (as serde's defaults do in spec.rs).
  withDefaults = c:
    let c' = defaults // c; in
    c' // {
      region = if c'.region == null then c'.name else c'.region;
      zones = map (z: { subnet = null; } // z) c'.zones;
      control_plane = map (m: machineDefaults // m) c'.control_plane;
      workers = map (m: machineDefaults // m) c'.workers;
      lb_pools = map (p: poolDefaults // p) c'.lb_pools;
    };

  # Control-plane machines first (file order), then workers; each with `controlPlane`.
  machines = c:
    map (m: m // { controlPlane = true; }) c.control_plane
    ++ map (m: m // { controlPlane = false; }) c.workers;

  machine = c: name:
    let found = filter (m: m.name == name) (machines c); in
    if length found == 1 then head found
    else throw "kelson: machine ${builtins.toJSON name} is not in the cluster description (${toString (length found)} matches)";

  machineNames = c: map (m: m.name) (machines c);

  # Roles of a machine: kv, control-plane, node — every machine is a node.
  rolesOf = m: if m.controlPlane then [ "kv" "control-plane" "node" ] else [ "node" ];
  roles = c: name: rolesOf (machine c name);

  roleConfigs = {
    kv = [ "kv" ];
    control-plane = [ "apiserver" "scheduler" "controller-manager" "cloud-controller-manager" ];
    node = [ "kubelet" "proxy" "dns" "speaker" ];
  };

  url = addr: port: "https://${hostPort addr port}";

  # name=https://addr:peer,... over all control-plane machines in file order.
  initialCluster = c:
    concatStringsSep "," (map (m: "${m.name}=${url m.address c.kv_peer_port}") c.control_plane);

  etcdServers = c: concatStringsSep "," (map (m: url m.address c.kv_client_port) c.control_plane);

  # The daemon configuration attribute sets of one machine (keys are the daemons' flags).
  daemonConfigs = c: m:
    let
      interface = if m.interface == null then c.vip.interface else m.interface;
      client = url m.address c.kv_client_port;
      peer = url m.address c.kv_peer_port;
      all = {
        kv = {
          name = m.name;
          data-dir = "${dataDir}/kv";
          listen-client-urls = "${client},${url "127.0.0.1" c.kv_client_port}";
          advertise-client-urls = client;
          listen-peer-urls = peer;
          initial-advertise-peer-urls = peer;
          initial-cluster = initialCluster c;
          initial-cluster-state = "new";
          initial-cluster-token = c.name;
          cert-file = pki "kv-server.crt";
          key-file = pki "kv-server.key";
          trusted-ca-file = pki "store-ca.crt";
          client-cert-auth = true;
          peer-cert-file = pki "kv-peer.crt";
          peer-key-file = pki "kv-peer.key";
          peer-trusted-ca-file = pki "store-ca.crt";
          peer-client-cert-auth = true;
        };
        apiserver = {
          secure-port = c.apiserver_port;
          bind-address = "0.0.0.0";
          etcd-servers = etcdServers c;
          etcd-cafile = pki "store-ca.crt";
          etcd-certfile = pki "apiserver-etcd-client.crt";
          etcd-keyfile = pki "apiserver-etcd-client.key";
          tls-cert-file = pki "apiserver.crt";
          tls-private-key-file = pki "apiserver.key";
          client-ca-file = pki "ca.crt";
          service-cluster-ip-range = c.service_cidr;
          authorization-mode = "Node,RBAC";
          anonymous-auth = false;
          service-account-signing-key-file = pki "sa.key";
          service-account-key-file = [ (pki "sa.key") ];
          service-account-issuer = "https://kubernetes.default.svc.${c.domain}";
          enable-bootstrap-token-auth = true;
          audit-log-path = "/var/log/kelson/audit.log";
          audit-log-maxage = 30;
          audit-log-maxsize = 100;
          audit-log-maxbackup = 10;
          audit-policy-file = pki "audit-policy.yaml";
          encryption-provider-config = pki "encryption-config.yaml";
          kubelet-client-certificate = pki "apiserver-kubelet-client.crt";
          kubelet-client-key = pki "apiserver-kubelet-client.key";
          kubelet-certificate-authority = pki "ca.crt";
        };
        scheduler = {
          kubeconfig = cfgFile "scheduler.kubeconfig";
          leader-elect = true;
        };
        controller-manager = {
          kubeconfig = cfgFile "controller-manager.kubeconfig";
          leader-elect = true;
          root-ca-file = pki "ca.crt";
          allocate-node-cidrs = true;
          cluster-cidr = c.pod_cidr;
          node-cidr-mask-size = c.node_cidr_mask;
        };
        cloud-controller-manager = {
          mode = "controller";
          kubeconfig = cfgFile "cloud-controller-manager.kubeconfig";
          leader-elect = true;
          nodes = map
            (n: {
              name = n.name;
              zone = n.zone;
              region = c.region;
              addresses = [{ type = "InternalIP"; address = n.address; }];
            })
            (machines c);
          pools = map
            (p: { name = p.name; ranges = p.ranges; }
              // optionalAttrs (p.cidr != null) { cidr = p.cidr; }
              // optionalAttrs (p.zone != null) { zone = p.zone; })
            c.lb_pools;
        };
        kubelet = {
          kubeconfig = cfgFile "kubelet.kubeconfig";
          hostname-override = m.name;
          root-dir = "${dataDir}/kubelet";
          client-ca-file = pki "ca.crt";
          tls-cert-file = pki "kubelet-serving.crt";
          tls-private-key-file = pki "kubelet-serving.key";
          node-ip = m.address;
          zone = m.zone;
          region = c.region;
          # attrNames is sorted, as the BTreeMap on the Rust side.
          node-labels = map (k: "${k}=${m.labels.${k}}") (attrNames m.labels);
          register-with-taints = m.taints;
          cluster-dns = [ m.address ];
          cluster-domain = c.domain;
        };
        proxy = {
          kubeconfig = cfgFile "proxy.kubeconfig";
          hostname-override = m.name;
          cluster-cidr = [ c.pod_cidr ];
        };
        dns = {
          kubeconfig = cfgFile "dns.kubeconfig";
          cluster-domain = c.domain;
          listen = [ (hostPort m.address 53) ];
        };
        speaker = {
          mode = "speaker";
          kubeconfig = cfgFile "speaker.kubeconfig";
          node-name = m.name;
          interface = interface;
        } // optionalAttrs m.controlPlane {
          vip = {
            address = c.vip.address;
            interface = interface;
            lease-name = "kelson-control-plane-vip";
          };
        };
      };
      wanted = builtins.concatLists (map (r: roleConfigs.${r}) (rolesOf m));
    in
    listToAttrs (map (d: { name = d; value = all.${d}; }) wanted);

  # Which binary reads a configuration (the speaker is the ccm in speaker mode).
  daemonBinary = d: if d == "speaker" then "kelson-cloud-controller-manager" else "kelson-${d}";

  # The systemd units a machine runs.
  units = c: name: map (d: "kelson-${d}.service") (attrNames (daemonConfigs c (machine c name)));

  # Kubeconfigs a machine has (from the rendered secrets).
  kubeconfigs = c: name:
    let m = machine c name; in
    (if m.controlPlane then [ "scheduler" "controller-manager" "cloud-controller-manager" ] else [ ])
    ++ [ "kubelet" "proxy" "dns" "speaker" ];

  # TCP ports a machine serves to other machines, by role (the firewall).
  ports = c: name:
    let r = roles c name; in
    (if elem "kv" r then [ c.kv_client_port c.kv_peer_port ] else [ ])
    ++ (if elem "control-plane" r then [ c.apiserver_port ] else [ ])
    ++ (if elem "node" r then [ 10250 53 ] else [ ]);

  # Everything, per machine: { <machine> = { roles = [...]; configs = { <daemon> = {...}; }; }; }
  render = raw:
    let c = withDefaults raw; in
    listToAttrs (map
      (m: {
        name = m.name;
        value = { roles = rolesOf m; configs = daemonConfigs c m; };
      })
      (machines c));
}
