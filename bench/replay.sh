#!/usr/bin/env bash
# Runs the replay benchmarks and prints the medians of their ratios:
# loading a job of 10,000 events from a snapshot vs a full replay, and a
# full rebuild of a million events vs a raw ordered-consumer read of the
# same stream (the rebuild appends the million events first: minutes, ~1 GiB
# of temporary disk).
# Usage: bench/replay.sh [count]   (default 3 runs each)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-3}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

go test ./events/ -run '^$' -bench BenchmarkDecode -benchmem -count "$count" | tee -a "$out"
go test ./bench/ -run '^$' -bench BenchmarkLoadLongJob -benchtime 2s -count "$count" | tee -a "$out"
FERRY_BENCH_REBUILD=${FERRY_BENCH_REBUILD:-1} go test ./bench/ -run '^$' -bench BenchmarkRebuild -benchtime 1x -count "$count" -timeout 60m | tee -a "$out"

# metric NAME UNIT: median of UNIT over the runs of benchmark NAME
metric() {
  awk -v a="$1" -v f="$2" '
    function median(arr, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (arr[j] < arr[i]) { t = arr[i]; arr[i] = arr[j]; arr[j] = t }; return (n % 2) ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2 }
    $1 ~ "^"a"(-[0-9]+)?$" { for (i = 1; i <= NF; i++) if ($(i+1) == f) A[++na] = $i }
    END { if (na) printf "%-45s %12.2f %s\n", a, median(A, na), f }' "$out"
}
echo
echo "== medians of $count runs =="
metric BenchmarkLoadLongJob/snapshot x-replay
metric BenchmarkLoadLongJob/snapshot-cold x-replay
for s in raw raw-jobfilter decode rebuild rebuild-all; do metric "BenchmarkRebuild/$s" events/s; done
for s in raw-jobfilter decode rebuild rebuild-all; do metric "BenchmarkRebuild/$s" of-raw; done
