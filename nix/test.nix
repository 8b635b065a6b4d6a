# NixOS VM test: three control-plane machines in zones a, b, c and two workers, installed by
# the module exactly as an operator would (same `cluster` on every machine, its own `machine`),
# with the secrets rendered by `kelsonctl cluster render` and delivered to /run/keys/kelson.
#
#   nix build ./nix#checks.x86_64-linux.three-zones        (needs KVM; TCG is very slow)
#
# Test keys only: the rendered secrets of this throwaway cluster live in the store here, which
# the module forbids for secretsDir itself — the script copies them out at run time.
{ pkgs, kelson, module }:

let
  # One VLAN for all zones (the test driver's VLANs are flat L2); zones are labels here.
  cluster = {
    name = "vmtest";
    region = "vm";
    zones = [ { name = "a"; } { name = "b"; } { name = "c"; } ];
    vip = { address = "192.168.1.100"; interface = "eth1"; };
    control_plane = [
      { name = "cpa"; zone = "a"; address = "192.168.1.11"; }
      { name = "cpb"; zone = "b"; address = "192.168.1.12"; }
      { name = "cpc"; zone = "c"; address = "192.168.1.13"; }
    ];
    workers = [
      { name = "workera"; zone = "a"; address = "192.168.1.21"; }
      { name = "workerb"; zone = "b"; address = "192.168.1.22"; }
    ];
    lb_pools = [ { name = "vm"; cidr = "192.168.1.240/28"; } ];
  };
  clusterToml = (pkgs.formats.toml { }).generate "cluster.toml" cluster;

  secrets = pkgs.runCommand "kelson-vmtest-secrets" { nativeBuildInputs = [ kelson ]; } ''
    kelsonctl cluster check ${clusterToml}
    kelsonctl cluster render ${clusterToml} --out $out
  '';

  klib = import ./lib.nix;
  all = klib.machines (klib.withDefaults cluster);

  node = m: { lib, ... }: {
    imports = [ module ];
    networking.hostName = m.name;
    virtualisation.vlans = [ 1 ];
    virtualisation.memorySize = 1536;
    networking.interfaces.eth1.ipv4.addresses = lib.mkForce [ { address = m.address; prefixLength = 24; } ];
    services.kelson = {
      enable = true;
      package = kelson;
      inherit cluster;
      machine = m.name;
    };
    environment.systemPackages = [ pkgs.kubectl ];
  };
in
pkgs.testers.runNixOSTest {
  name = "kelson-three-zones";
  nodes = builtins.listToAttrs (map (m: { name = m.name; value = node m; }) all);

  testScript = ''
    cps = [cpa, cpb, cpc]
    workers = [workera, workerb]
    start_all()
    for m in cps + workers:
        m.wait_for_unit("multi-user.target")
        # Without secrets nothing starts, and says why.
        m.fail("systemctl is-active kelson-secrets.service")
        m.succeed("mkdir -p /run/keys && cp -r ${secrets}/" + m.name + "/etc/kelson /run/keys/kelson")
        m.succeed("chmod -R u+w /run/keys/kelson")
        m.succeed("systemctl restart kelson-secrets.service")
    for m in cps:
        m.succeed("systemctl start kelson-control-plane.target kelson-node.target")
    for m in workers:
        m.succeed("systemctl start kelson-node.target")
    for m in cps:
        m.wait_for_unit("kelson-kv.service")
        m.wait_for_unit("kelson-apiserver.service")

    kc = "--kubeconfig ${secrets}/admin.kubeconfig"
    # Through the VIP: every node Ready, with its zone.
    cpa.wait_until_succeeds(f"kubectl {kc} wait --for=condition=Ready node --all --timeout=10s", timeout=300)
    out = cpa.succeed(f"kubectl {kc} get nodes -L topology.kubernetes.io/zone --no-headers")
    assert len(out.strip().splitlines()) == 5, out
    for name, zone in [("cpa", "a"), ("cpb", "b"), ("cpc", "c"), ("workera", "a"), ("workerb", "b")]:
        assert any(l.split()[0] == name and l.split()[-1] == zone for l in out.splitlines()), (name, out)

    # The config on disk is the module's, the secrets are symlinks out of the store.
    cpb.succeed("grep -q 'initial-cluster = \"${klib.initialCluster (klib.withDefaults cluster)}\"' /etc/kelson/kv.toml")
    cpb.succeed("readlink -f /etc/kelson/pki | grep -q '^/run/keys/kelson/pki$'")
    cpb.succeed("stat -c %G /run/keys/kelson/pki/kv-server.key | grep -qx kelson")

    # Losing the machine that holds the VIP: the API answers through the VIP again within
    # seconds, from another zone.
    holder = next(m for m in cps if m.execute("ip -4 addr show eth1 | grep -q 192.168.1.100")[0] == 0)
    holder.crash()
    survivor = next(m for m in cps if m is not holder)
    survivor.wait_until_succeeds(f"kubectl {kc} create configmap after-failover", timeout=60)
    workera.wait_until_succeeds(f"kubectl {kc} get configmap after-failover", timeout=60)
  '';
}
