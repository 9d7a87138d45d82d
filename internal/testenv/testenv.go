// Package testenv lets tests that need something from the machine (a
// binary, root, /dev/fuse, a Docker engine) skip with the reason when it is
// missing, or fail when E2E_REQUIRE=1 says the environment must have it, as
// CI does.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// Required reports whether E2E_REQUIRE=1 is set, turning skips into failures.
func Required() bool { return os.Getenv("E2E_REQUIRE") == "1" }

// Skip skips t with reason, or fails it when the environment is required.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if Required() {
		t.Fatalf("E2E_REQUIRE=1 but %s", reason)
	}
	t.Skip(reason)
}

// LookPath returns the path of the named binary, or skips t without it.
func LookPath(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Skip(t, name+" is not installed")
	}
	return p
}

// RequireRoot skips t unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "test needs root")
	}
}
