// Package bench holds whole-system measurements of bootfs side by side with
// the tools a user would use instead (casync, desync, plain images), each
// run on the same input in the same process run so that the ratios are
// comparable. It has no library code; everything is in _test.go files and
// scripts.
package bench
