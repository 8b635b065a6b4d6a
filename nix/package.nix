# The whole workspace as one package: every daemon, kelsonctl, and the systemd units, D-Bus
# policy, sysusers.d and tmpfiles.d files from systemd/ with ExecStart pointing into $out.
#
# Called from flake.nix with `pkgs.callPackage ./package.nix { }`.
{ lib
, rustPlatform
, protobuf
, pkg-config
, clang
, rocksdb
, snappy
, coreutils
}:

rustPlatform.buildRustPackage {
  pname = "kelson";
  version = (builtins.fromTOML (builtins.readFile ../Cargo.toml)).workspace.package.version;

  # The repository without build output, editor droppings or the Nix files themselves (so
  # editing a module does not rebuild the binaries).
  src = lib.cleanSourceWith {
    src = lib.cleanSource ../.;
    filter = path: type:
      let base = baseNameOf path; in
      !(type == "directory" && (base == "target" || base == "nix" || base == ".git"));
  };

  cargoLock.lockFile = ../Cargo.lock;

  # protoc: tonic-build and raft's prost codec; clang/libclang (bindgenHook): librocksdb-sys.
  nativeBuildInputs = [ protobuf pkg-config clang rustPlatform.bindgenHook ];
  buildInputs = [ rocksdb snappy ];

  # Link nixpkgs' RocksDB instead of building the bundled C++ (as on Debian, see Cargo.toml:
  # the rocksdb crate is pinned to 0.20.1, whose C API a RocksDB 7.x library provides). These
  # take precedence over .cargo/config.toml's Debian paths: cargo's [env] never overrides a
  # variable that is already set.
  ROCKSDB_LIB_DIR = "${rocksdb}/lib";
  SNAPPY_LIB_DIR = "${snappy}/lib";
  PROTOC = "${protobuf}/bin/protoc";

  # The binaries only; benchmark harnesses and test programs stay out.
  cargoBuildFlags = [ "--workspace" "--bins" ];

  # The test suites start containerd, kelson-kv clusters, D-Bus and network namespaces: they
  # run in CI (.ci/run) and, for the multi-machine behaviour, in the NixOS VM test (checks).
  doCheck = false;

  # ExecStart=/usr/bin/... and ExecReload=/bin/kill become store paths (NixOS has neither).
  postInstall = ''
    mkdir -p $out/lib/systemd/system $out/share/dbus-1/system.d $out/lib/sysusers.d $out/lib/tmpfiles.d
    for unit in systemd/*.service systemd/*.target systemd/*.timer; do
      substitute "$unit" "$out/lib/systemd/system/$(basename "$unit")" \
        --replace-quiet /usr/bin/ "$out/bin/" \
        --replace-quiet /bin/kill "${coreutils}/bin/kill"
    done
    cp systemd/dbus-1/system.d/*.conf $out/share/dbus-1/system.d/
    cp systemd/sysusers.d/kelson.conf $out/lib/sysusers.d/
    cp systemd/tmpfiles.d/kelson.conf $out/lib/tmpfiles.d/
  '';

  meta = {
    description = "Kubernetes-compatible cluster toolkit: every component a systemd service";
    license = lib.licenses.asl20;
    platforms = lib.platforms.linux;
    mainProgram = "kelsonctl";
  };
}
