package boot

import (
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/internal/testenv"
)

// TestPrepareUpperReuses: a second start keeps the upper's files and
// empties overlayfs's work directory, whatever the last mount left there.
func TestPrepareUpperReuses(t *testing.T) {
	dir := t.TempDir()
	up, work, err := prepareUpper(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(up, "kept"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	// What overlayfs leaves: work/work with an entry no one may read.
	left := filepath.Join(work, "work", "#1")
	if err := os.MkdirAll(left, 0); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(work, "work"), 0)
	up2, work2, err := prepareUpper(dir)
	if err != nil {
		t.Fatalf("prepareUpper over leftovers: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(up2, "kept")); err != nil || string(b) != "x" {
		t.Errorf("upper after a restart: %q, %v; want the file kept", b, err)
	}
	if names, _ := os.ReadDir(work2); len(names) != 0 {
		t.Errorf("work directory after prepareUpper holds %v, want nothing", names)
	}
}

// TestPrepareUpperBadVolume: a full or read-only volume fails at once,
// naming the volume's path and what to do.
func TestPrepareUpperBadVolume(t *testing.T) {
	testenv.RequireRoot(t)
	for _, tt := range []struct {
		name, opts, want string
		flags            uintptr
	}{
		{name: "full", opts: "size=8k", want: "is full"},
		{name: "read-only", flags: unix.MS_RDONLY, want: "is read-only"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := unix.Mount("tmpfs", dir, "tmpfs", tt.flags, tt.opts); err != nil {
				t.Skipf("cannot mount a tmpfs: %v", err)
			}
			defer unix.Unmount(dir, unix.MNT_DETACH)
			if tt.name == "full" {
				// Fill it: the directories still fit, a file does not.
				f, _ := os.Create(filepath.Join(dir, "fill"))
				f.Write(make([]byte, 64<<10))
				f.Close()
			}
			_, _, err := prepareUpper(dir)
			if err == nil || !errors.Is(err, ErrRootfs) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("prepareUpper(%s volume) = %v, want an error naming %s that says it %s", tt.name, err, dir, tt.want)
			}
		})
	}
}

// TestCatches reads handlers from /proc: this process catches what it
// asked signal.Notify for; a sleep catches nothing.
func TestCatches(t *testing.T) {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR2)
	defer signal.Stop(c)
	if ok, err := catches(os.Getpid(), syscall.SIGUSR2); !ok || err != nil {
		t.Errorf("catches(self, SIGUSR2) = %v, %v; want true", ok, err)
	}
	sleep := exec.Command("sleep", "30")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer sleep.Process.Kill()
	time.Sleep(100 * time.Millisecond) // until it has exec'd
	for _, s := range []syscall.Signal{syscall.SIGTERM, syscall.SIGUSR1, syscall.SIGHUP} {
		if ok, err := catches(sleep.Process.Pid, s); ok || err != nil {
			t.Errorf("catches(sleep, %v) = %v, %v; want false", s, ok, err)
		}
	}
	if _, err := catches(1<<22+7, syscall.SIGTERM); err == nil {
		t.Errorf("catches of a process that does not exist: no error")
	}
}
