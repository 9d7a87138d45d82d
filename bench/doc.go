// Package bench holds whole-system measurements of bootfs side by side with
// the tools a user would use instead (casync, desync, plain images), each
// run on the same input in the same run so that the ratios are comparable.
//
// The package itself has only benchmarks (BenchmarkConvertDir). The
// harness that times containers end to end is bench/harness, driven by
// bench/cmd/benchrun and bench/run.sh; bench/shaper is its
// latency/bandwidth-shaping TCP proxy. None of it may be imported by boot
// or mkimage: the plotting library stays out of the shipped binaries.
package bench
