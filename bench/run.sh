#!/usr/bin/env bash
# Runs ferry's benchmarks next to their references and prints the ratios.
# Usage: bench/run.sh [count]   (default 3 runs each)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-3}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

go test ./bench/ -run '^$' -bench 'BenchmarkTransfer' -benchtime 5x -count "$count" | tee -a "$out"
go test ./agent/download/ -run '^$' -bench . -benchtime 20x -count "$count" | tee -a "$out"
go test ./bench/ -run '^$' -bench 'BenchmarkFetch1GiB' -benchtime 2x -count "$count" | tee -a "$out"
go test ./events/ -run '^$' -bench 'BenchmarkAppend' -benchtime 2000x -count "$count" | tee -a "$out"

# ratio NAME_A NAME_B FIELD: median of A over median of B
ratio() {
  awk -v a="$1" -v b="$2" -v f="$3" '
    function median(arr, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (arr[j] < arr[i]) { t = arr[i]; arr[i] = arr[j]; arr[j] = t }; return (n % 2) ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2 }
    $1 ~ "^"a"(-[0-9]+)?$" { for (i = 1; i <= NF; i++) if ($(i+1) == f) A[++na] = $i }
    $1 ~ "^"b"(-[0-9]+)?$" { for (i = 1; i <= NF; i++) if ($(i+1) == f) B[++nb] = $i }
    END { if (na && nb) printf "%-60s %.2f\n", a " / " b " (" f ")", median(A, na) / median(B, nb) }' "$out"
}
echo
echo "== ratios (medians of $count runs) =="
ratio BenchmarkTransfer/ferry BenchmarkTransfer/curl MB/s
ratio BenchmarkFetch BenchmarkRawCopy MB/s
ratio BenchmarkFetch1GiB/fetch BenchmarkFetch1GiB/raw MB/s
ratio BenchmarkAppend BenchmarkAppendRawPublish ns/op
