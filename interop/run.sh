#!/usr/bin/env bash
# Plays every pairing of our peer and the vox-shm 0.3.1 peer (host x guest),
# each exchanging every payload tier both ways, a ring that wraps thousands
# of times and bursts larger than the ring. Checks from the link statistics
# that our extensions are on between our own peers and off against 0.3.1.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --locked -q
bin=target/release
fail=0

run_pair() { # host guest [bootstrap]
  local host=$1 guest=$2 mode=${3:-} out
  local verb=host
  [ "$mode" = bootstrap ] && verb=bootstrap-host
  echo "== $host host, $guest guest${mode:+ (walk-in over bootstrap)}"
  if ! out=$(timeout 180 "$bin/$host-peer" "$verb" "$bin/$guest-peer" 2>&1); then
    echo "$out"; echo "FAIL: $host/$guest exited non-zero"; fail=1; return
  fi
  echo "$out" | sed 's/^/   /'
  grep -q '^PASS$' <<<"$out" || { echo "FAIL: $host/$guest did not pass"; fail=1; return; }
  local ours
  ours=$(grep 'STATS impl=ours' <<<"$out" || true)
  while read -r line; do
    [ -n "$line" ] || continue
    local neg spm
    neg=$(sed -n 's/.*negotiated=\([^ ]*\).*/\1/p' <<<"$line")
    spm=$(sed -n 's/.*signals_per_message=\([0-9.]*\).*/\1/p' <<<"$line")
    if [ "$host" = our ] && [ "$guest" = our ]; then
      # Between our peers: every extension on, almost no doorbell system calls.
      [ "$neg" = "wake-on-demand,inband-close,liveness,mapping-release" ] || { echo "FAIL: extensions not negotiated: $neg"; fail=1; }
      # A signal is only sent to claim a peer's announcement that it is about
      # to sleep (one signal per announcement at most), plus one per close
      # and a few before the host has read the guest's features. How often a
      # peer sleeps depends on the machine's load, so the check is this
      # invariant, not a rate.
      local sig other_ann
      sig=$(sed -n 's/.*doorbell_signals=\([0-9]*\).*/\1/p' <<<"$line")
      if grep -q 'role=host' <<<"$line"; then
        other_ann=$(grep 'role=guest' <<<"$ours" | sed -n 's/.*wait_announcements=\([0-9]*\).*/\1/p')
      else
        other_ann=$(grep 'role=host' <<<"$ours" | sed -n 's/.*wait_announcements=\([0-9]*\).*/\1/p')
      fi
      [ "$sig" -le $((other_ann + 16)) ] || { echo "FAIL: $sig doorbell signals for $other_ann announced sleeps of the peer"; fail=1; }
    else
      # Against 0.3.1: extensions off, a signal on every commit and release.
      [ "$neg" = none ] || { echo "FAIL: extensions on against 0.3.1: $neg"; fail=1; }
      awk -v s="$spm" 'BEGIN{exit !(s >= 1.0)}' || { echo "FAIL: only $spm signals per message against 0.3.1"; fail=1; }
    fi
  done <<<"$ours"
}

for host in our legacy; do
  for guest in our legacy; do
    run_pair "$host" "$guest"
  done
done
# Bootstrap (RSH0/RSP0, three descriptors): guests spawned with nothing
# inherited walk in over the host's control socket.
for host in our legacy; do
  for guest in our legacy; do
    run_pair "$host" "$guest" bootstrap
  done
done

if [ "$fail" -ne 0 ]; then
  echo "interop: FAILED"
  exit 1
fi
echo "interop: all pairings passed (4 spawned, 4 over bootstrap)"
