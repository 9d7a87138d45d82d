package testenv

import (
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Within runs f and returns its error, or fails t if f has not returned
// after a generous safety timeout: for inputs that once hung the code
// under test, such as a FIFO where a file belongs. It is a safety net,
// not a timing assertion.
func Within(t testing.TB, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("%s hangs", what)
		return nil
	}
}

// FIFO makes a FIFO in a new temporary directory and returns its path:
// the file that hangs a reader that opens and reads without checking.
func FIFO(t testing.TB) string {
	t.Helper()
	name := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(name, 0o644); err != nil {
		t.Fatal(err)
	}
	return name
}
