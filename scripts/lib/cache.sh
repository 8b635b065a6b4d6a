# shellcheck shell=bash
# The cache scaffolding of the scripts that build trees once and reuse them
# (scripts/nspawn-rootfs.sh, scripts/vm-image.sh, scripts/qemu-fetch.sh,
# ansible/tests/target-rootfs.sh). Sourced, not run.
#
# Rules, the same for every cache DIR:
# - DIR is finished when it holds MARKER, written as the very last step, and reused only while
#   MARKER names the same STAMP (the script's version and inputs, e.g. its package set);
# - anything else (an interrupted build, an older stamp) is removed and built again in DIR.tmp,
#   which is moved to DIR only once complete, so a reader never sees half a tree;
# - concurrent builders (tests run in parallel) serialize on DIR.lock: the second one waits and
#   then finds the finished tree.

# cache_lock DIR: takes DIR.lock (fd 9) until the script exits.
cache_lock() {
  mkdir -p "$(dirname "$1")"
  exec 9>"$1.lock"
  flock 9
}

# cache_fresh DIR MARKER STAMP: true when DIR is finished with STAMP.
cache_fresh() {
  [ -f "$1/$2" ] && [ "$(cat "$1/$2")" = "$3" ]
}

# cache_start DIR: removes a stale or unfinished DIR and DIR.tmp, and starts the clock.
cache_start() {
  rm -rf "$1" "$1.tmp"
  cache_started=$(date +%s)
}

# cache_finish DIR MARKER STAMP: writes MARKER into DIR.tmp last and moves DIR.tmp to DIR.
cache_finish() {
  echo "$3" >"$1.tmp/$2"
  mv "$1.tmp" "$1"
}

# cache_elapsed: seconds since cache_start.
cache_elapsed() {
  echo $(($(date +%s) - cache_started))
}
