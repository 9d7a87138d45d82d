//go:build race

package chunkstore_test

// raceEnabled reports whether the tests run under the race detector,
// which makes hashing and zstd several times slower.
const raceEnabled = true
