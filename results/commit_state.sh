#!/usr/bin/env bash
# Commit the campaign's durable state (results/cifar10/) every EVERY minutes while a job
# runs, so an abrupt stop loses at most that much compute. Only results/cifar10 is
# committed: other staged or unstaged work in the tree is left as it is.
#   EVERY  minutes between commits (default 25; the campaign promises at most 30 lost)
#   ONCE=1 commit once and exit
set -uo pipefail
cd "$(dirname "$0")/.."
EVERY=${EVERY:-25}
summary() {  # one line: each run's last finished epoch
  local out=""
  for m in results/cifar10/runs/*/metrics.csv; do
    [ -f "$m" ] || continue
    out+="$(basename "$(dirname "$m")") epoch $(tail -n1 "$m" | cut -d, -f1); "
  done
  for t in results/cifar10/logs/*.tsv; do
    [ -f "$t" ] || continue
    out+="$(basename "$t" .tsv) $(($(wc -l <"$t") - 1)) rows; "
  done
  echo "${out:-no runs yet}"
}
commit_once() {
  git add -A results/cifar10 2>/dev/null || return 1
  if git diff --cached --quiet -- results/cifar10; then return 0; fi
  for _ in 1 2 3 4 5; do  # another git command may hold the index lock for a moment
    git commit -q -m "campaign state $(date -u +%FT%H:%MZ): $(summary)" -- results/cifar10 && return 0
    sleep 5
  done
  echo "commit_state: could not commit results/cifar10" >&2
  return 1
}
if [ "${ONCE:-0}" = 1 ]; then commit_once; exit; fi
while true; do
  sleep "$(awk "BEGIN {print $EVERY * 60}")"
  commit_once
done
