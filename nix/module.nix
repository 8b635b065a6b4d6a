# NixOS module: services.kelson.
#
# Every machine of a cluster imports this module with the *same* `services.kelson.cluster` (the
# whole topology, the attribute set of cluster.toml — e.g. `builtins.fromTOML (builtins.readFile
# ./cluster.toml)`) and its own `services.kelson.machine`. From those the module derives the
# machine's roles (nix/lib.nix: kv member, control plane, node), writes the daemons' TOML
# (identical to `kelsonctl cluster render`, checked by tests/tests/nix_eval.rs), enables the
# shipped systemd units for those roles, installs the D-Bus policy, creates the service user,
# and opens the firewall for the roles' ports.
#
# Secrets never enter the Nix store. The machine's certificates, keys and kubeconfigs are the
# `etc/kelson/{pki/,*.kubeconfig}` that `kelsonctl cluster render` wrote for it; deliver that
# directory to `services.kelson.secretsDir` with agenix, sops-nix, or scp (modes as rendered:
# 0640 for what a `kelson` daemon reads, 0600 for the rest). /etc/kelson/pki and the
# kubeconfigs are symlinks into it, and `kelson-secrets.service` checks it and gives the
# group-readable files to the `kelson` group before any daemon starts.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.kelson;
  klib = import ./lib.nix;
  c = klib.withDefaults cfg.cluster;
  me = klib.machine c cfg.machine;
  roles = klib.rolesOf me;
  hasRole = r: builtins.elem r roles;
  configs = klib.daemonConfigs c me;
  kubeconfigs = klib.kubeconfigs c cfg.machine;
  toml = pkgs.formats.toml { };
  configFile = d: toml.generate "kelson-${d}.toml" configs.${d};
  controlPlaneDaemons = [ "kv" "apiserver" "scheduler" "controller-manager" "cloud-controller-manager" ];
  # Files every daemon of this machine needs from the secrets directory.
  neededSecrets = map (k: "${k}.kubeconfig") kubeconfigs ++ [ "pki/ca.crt" ]
    ++ lib.optionals (hasRole "kv") [ "pki/store-ca.crt" "pki/kv-server.key" "pki/kv-peer.key" ]
    ++ lib.optionals (hasRole "control-plane") [ "pki/apiserver.key" "pki/sa.key" "pki/encryption-config.yaml" ];
in
{
  options.services.kelson = {
    enable = lib.mkEnableOption "Kelson, a Kubernetes-compatible cluster (this machine's share of it)";

    package = lib.mkOption {
      type = lib.types.package;
      description = "The Kelson package (daemons, kelsonctl, units). The flake's module sets it to its own build.";
    };

    cluster = lib.mkOption {
      type = lib.types.attrsOf lib.types.anything;
      example = lib.literalExpression "builtins.fromTOML (builtins.readFile ./cluster.toml)";
      description = ''
        The whole cluster: the attribute set of cluster.toml (name, domain, zones,
        control_plane, workers, pod_cidr, service_cidr, node_cidr_mask, lb_pools, vip, ports).
        Identical on every machine. Validate it with `kelsonctl cluster check`.
      '';
    };

    machine = lib.mkOption {
      type = lib.types.str;
      default = config.networking.hostName;
      defaultText = lib.literalExpression "config.networking.hostName";
      description = "This machine's name in the cluster description.";
    };

    secretsDir = lib.mkOption {
      type = lib.types.str;
      default = "/run/keys/kelson";
      example = "/run/agenix/kelson";
      description = ''
        Directory holding this machine's rendered `etc/kelson` secrets (`pki/`, `*.kubeconfig`)
        from `kelsonctl cluster render`. A path outside the Nix store, delivered by a secrets
        tool; it is never copied into the store.
      '';
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Open the ports of this machine's roles (kv 2379/2380, API 6443, kubelet 10250, DNS 53, NodePorts).";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = builtins.elem cfg.machine (klib.machineNames c);
        message = "services.kelson.machine = \"${cfg.machine}\" is not in services.kelson.cluster (machines: ${toString (klib.machineNames c)})";
      }
      {
        assertion = !(lib.hasPrefix builtins.storeDir cfg.secretsDir);
        message = "services.kelson.secretsDir must not be in the Nix store (it holds private keys)";
      }
    ];

    environment.systemPackages = [ cfg.package ];

    # Daemon configs from Nix; key material as symlinks into the secrets directory.
    environment.etc =
      lib.mapAttrs' (d: _: lib.nameValuePair "kelson/${d}.toml" { source = configFile d; }) configs
      // { "kelson/pki".source = "${cfg.secretsDir}/pki"; }
      // lib.listToAttrs (map
        (k: lib.nameValuePair "kelson/${k}.kubeconfig" { source = "${cfg.secretsDir}/${k}.kubeconfig"; })
        kubeconfigs);

    # The units ship in the package ([Install] sections are not read on NixOS: wire them here).
    systemd.packages = [ cfg.package ];
    systemd.targets.kelson-control-plane = lib.mkIf (hasRole "control-plane") { wantedBy = [ "multi-user.target" ]; };
    systemd.targets.kelson-node = lib.mkIf (hasRole "node") { wantedBy = [ "multi-user.target" ]; };
    systemd.services = lib.mapAttrs'
      (d: _: lib.nameValuePair "kelson-${d}" {
        wantedBy = [ (if builtins.elem d controlPlaneDaemons then "kelson-control-plane.target" else "kelson-node.target") ];
        requires = [ "kelson-secrets.service" ];
        after = [ "kelson-secrets.service" ] ++ lib.optional (hasRole "node") "containerd.service";
        restartTriggers = [ (configFile d) ];
      })
      configs
    // {
      kelson-secrets = {
        description = "Check Kelson's secrets and give the group-readable ones to the kelson group";
        wantedBy = [ "multi-user.target" ];
        serviceConfig = { Type = "oneshot"; RemainAfterExit = true; };
        path = [ pkgs.coreutils pkgs.findutils ];
        script = ''
          dir=${lib.escapeShellArg cfg.secretsDir}
          for f in ${lib.escapeShellArgs neededSecrets}; do
            if [ ! -s "$dir/$f" ]; then
              echo "kelson: $dir/$f is missing: deliver this machine's etc/kelson from 'kelsonctl cluster render'" >&2
              exit 1
            fi
          done
          chown root:kelson "$dir/pki"
          chmod 0750 "$dir/pki"
          # Rendered modes: 0640 = read by a daemon running as kelson; everything else root's.
          find "$dir" -type f -perm 0640 -exec chown root:kelson {} +
          find "$dir" -type f ! -perm 0640 -exec chown root:root {} +
        '';
      };
    };

    services.dbus.packages = [ cfg.package ];

    # systemd/sysusers.d/kelson.conf, the NixOS way.
    users.users.kelson = {
      isSystemUser = true;
      group = "kelson";
      home = "/var/lib/kelson";
      description = "Kelson cluster daemons";
    };
    users.groups.kelson = { };
    users.groups.kelson-admin = { };

    # systemd/tmpfiles.d/kelson.conf without /etc/kelson (environment.etc owns that here).
    systemd.tmpfiles.rules = [
      "d /var/lib/kelson 0755 root root -"
      "d /run/kelson 0755 root root -"
      "d /var/log/kelson 0750 kelson kelson -"
    ];

    networking.firewall = lib.mkIf cfg.openFirewall {
      allowedTCPPorts = klib.ports c cfg.machine;
      allowedUDPPorts = lib.optional (hasRole "node") 53;
      allowedTCPPortRanges = lib.optional (hasRole "node") { from = 30000; to = 32767; };
    };

    # A node runs pods: containerd + CNI, forwarding, bridge netfilter; kelson-proxy uses nftables.
    virtualisation.containerd.enable = lib.mkIf (hasRole "node") true;
    networking.nftables.enable = lib.mkIf (hasRole "node") true;
    boot.kernelModules = lib.optionals (hasRole "node") [ "br_netfilter" "overlay" ];
    boot.kernel.sysctl = lib.mkIf (hasRole "node") {
      "net.ipv4.ip_forward" = 1;
      "net.ipv6.conf.all.forwarding" = 1;
      "net.bridge.bridge-nf-call-iptables" = 1;
    };
  };
}
