// Package bench holds ferry's end-to-end benchmarks. Each one runs a
// reference side by side in the same process and run (curl for downloads),
// so results are read as ratios; run.sh prints them. BENCHMARKS.md records
// the numbers and the commands that reproduce them.
package bench
