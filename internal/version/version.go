// Package version holds the bootfs version, set at link time by the
// Makefile (-X github.com/bootfs/bootfs/internal/version.Version=...).
package version

// Version is the bootfs version; "dev" for builds outside make.
var Version = "dev"
