{
  description = "Kelson: a Kubernetes-compatible cluster toolkit in Rust, every component a systemd service";

  # The flake lives in nix/ of the repository; `nix build ./nix#kelson` (or
  # 'git+file:.?dir=nix#kelson') copies the whole repository, so ../ is the workspace.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs = { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
      # The rocksdb crate is pinned to 0.20.1 (RocksDB 7.x C API, see Cargo.toml); nixpkgs keeps
      # a 7.10 alongside its current RocksDB.
      kelsonFor = p: p.callPackage ./package.nix { rocksdb = p.rocksdb_7_10 or p.rocksdb; };
    in
    {
      # Pure functions over a cluster description (roles, kv initial cluster, daemon configs).
      lib = import ./lib.nix;

      packages.${system} = {
        kelson = kelsonFor pkgs;
        default = self.packages.${system}.kelson;
      };

      overlays.default = final: _prev: { kelson = kelsonFor final; };

      nixosModules.kelson = { lib, pkgs, ... }: {
        imports = [ ./module.nix ];
        services.kelson.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.kelson;
      };
      nixosModules.default = self.nixosModules.kelson;

      checks.${system} = {
        kelson = self.packages.${system}.kelson;
        # 3 control-plane machines in zones a/b/c + 2 workers, as NixOS VMs.
        three-zones = import ./test.nix {
          inherit pkgs;
          kelson = self.packages.${system}.kelson;
          module = ./module.nix;
        };
        # The example description evaluates and has the expected shape (no build needed).
        lib-eval =
          let
            r = self.lib.render (builtins.fromTOML (builtins.readFile ../examples/cluster/three-zones.toml));
          in
          assert r.cp-a.roles == [ "kv" "control-plane" "node" ];
          assert r.worker-a.roles == [ "node" ];
          pkgs.runCommand "kelson-lib-eval" { } "echo ok > $out";
      };
    };
}
