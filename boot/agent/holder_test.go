package agent

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeWorkerEnv names the FIFO a fake worker (TestFakeWorker) reports to.
const fakeWorkerEnv = "BOOTFS_TEST_FAKE_WORKER"

// TestHolderKeepsMountsAcrossWorkers is a holder (RunHolder) with fake
// workers, this test binary: the first hands it a mount and dies by
// SIGKILL; the second must get that mount with the very fds the first
// sent (it writes to the FIFO through the one it received), drops it,
// and is replaced (SIGHUP); the third gets no mount; then the holder
// stops with its worker.
func TestHolderKeepsMountsAcrossWorkers(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "reports")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := os.OpenFile(fifo, os.O_RDWR, 0) // RDWR: never blocks, never EOF
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	t.Setenv(fakeWorkerEnv, fifo)
	restart := make(chan os.Signal, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- RunHolder(ctx, HolderOptions{
			SocketDir: filepath.Join(dir, "sock"), Restart: restart, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
			Worker: func() *exec.Cmd {
				cmd := exec.Command(os.Args[0], "-test.run=^TestFakeWorker$")
				cmd.Stderr = os.Stderr
				return cmd
			},
		})
	}()
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	expect := func(want string) {
		t.Helper()
		select {
		case got := <-lines:
			if got != want {
				t.Fatalf("a fake worker reported %q, want %q", got, want)
			}
		case err := <-done:
			t.Fatalf("RunHolder returned %v before a worker reported %q", err, want)
		case <-time.After(30 * time.Second):
			t.Fatalf("no worker reported %q in 30s", want)
		}
	}
	expect("0: mounts 0")
	expect("0: held 42, dying")
	expect("1: adopted 42")
	expect("1: mounts 1")
	restart <- syscall.SIGHUP
	expect("1: handing over")
	expect("2: mounts 0")
	cancel()
	expect("2: draining")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("RunHolder = %v, want nil once its worker drained", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("RunHolder did not return once its worker drained")
	}
	if _, err := os.Stat(filepath.Join(dir, "sock", SocketName)); !os.IsNotExist(err) {
		t.Errorf("the socket is left behind after the holder stopped: %v", err)
	}
}

// TestFakeWorker is the worker of TestHolderKeepsMountsAcrossWorkers, run
// by its holder; on its own it skips.
func TestFakeWorker(t *testing.T) {
	fifo := os.Getenv(fakeWorkerEnv)
	if fifo == "" || os.Getenv(WorkerEnv) != "1" {
		t.Skip("run by TestHolderKeepsMountsAcrossWorkers")
	}
	n, _ := strconv.Atoi(os.Getenv(RestartsEnv))
	report, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	say := func(fd int, format string, a ...any) {
		if _, err := unix.Write(fd, fmt.Appendf(nil, "%d: "+format+"\n", append([]any{n}, a...)...)); err != nil {
			t.Fatal(err)
		}
	}
	l, c, err := WorkerFiles()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, sigHandover, sigDrain)
	mounts := 0
	for {
		m, fds, err := receive(c)
		if err != nil {
			t.Fatal(err)
		}
		if m.Op == opReady {
			break
		}
		// Write through the received fd: it is the FIFO the first
		// worker sent, if the holder kept it.
		say(fds[fdDev], "adopted %d", m.Mount.NS)
		if err := send(c, message{Op: opDrop, NS: m.Mount.NS}); err != nil {
			t.Fatal(err)
		}
		closeFDs(fds)
		mounts++
	}
	say(int(report.Fd()), "mounts %d", mounts)
	if n == 0 {
		null, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		st := &mountState{NS: 42, Init: []byte{26}, Index: "sha256:x", TOC: "sha256:y"}
		if err := send(c, message{Op: opHold, Mount: st}, int(report.Fd()), null, null); err != nil {
			t.Fatal(err)
		}
		say(int(report.Fd()), "held 42, dying")
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
	}
	switch <-sigs {
	case sigHandover:
		say(int(report.Fd()), "handing over")
	case sigDrain:
		say(int(report.Fd()), "draining")
	}
	os.Exit(0)
}
