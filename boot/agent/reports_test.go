package agent

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// TestReportWriteFollowsNothing: the agent writes a container's report
// as root into a directory the container controls, so a symlink planted
// at the report's name, or at its temporary name, is replaced, never
// followed, and nothing is left beside the report.
func TestReportWriteFollowsNothing(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "host-file")
	if err := os.WriteFile(outside, []byte("host\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(dir, "run.json")); err != nil {
		t.Fatal(err)
	}
	tmp := "." + "run.json" + ".bootfs-agent-" + strconv.Itoa(unix.Getpid())
	if err := os.Symlink(outside, filepath.Join(dir, tmp)); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := report{dir: fd, name: "run.json"}
	defer unix.Close(fd)
	if err := f.write([]byte("{}\n")); err != nil {
		t.Fatalf("write: %v", err)
	}
	if b, _ := os.ReadFile(outside); string(b) != "host\n" {
		t.Errorf("the file a planted symlink names now holds %q", b)
	}
	fi, err := os.Lstat(filepath.Join(dir, "run.json"))
	if b, _ := os.ReadFile(filepath.Join(dir, "run.json")); err != nil || !fi.Mode().IsRegular() || string(b) != "{}\n" {
		t.Errorf("the report is %v (%v), holding %q; want a regular file holding {}", fi, err, b)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("the directory holds %v, want only the report", entries)
	}
}
