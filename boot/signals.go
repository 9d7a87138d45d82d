package boot

import (
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// forwarded are the signals init passes on to the workload: every
// catchable one but SIGCHLD (init's own), SIGURG (the Go runtime's) and
// SIGPIPE (init's own broken log pipe).
func forwarded() []os.Signal {
	var out []os.Signal
	for s := syscall.Signal(1); s <= 64; s++ {
		switch s {
		case unix.SIGKILL, unix.SIGSTOP, unix.SIGCHLD, unix.SIGURG, unix.SIGPIPE, 32, 33:
			continue
		}
		out = append(out, s)
	}
	return out
}

// stopSignals are the signals that stop a container (docker stop's
// SIGTERM, a terminal's SIGINT, ...) and so end boot or the workload
// process while the workload has not started.
var stopSignals = []os.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT}

// exitOnStop makes the stopSignals end the process, with status 128+n,
// until the returned stop is called.
func exitOnStop(log *slog.Logger) (stop func()) {
	c := make(chan os.Signal, 1)
	signal.Notify(c, stopSignals...)
	done := make(chan struct{})
	go func() {
		select {
		case s := <-c:
			log.Warn("stopped before the workload started", "signal", s)
			os.Exit(128 + int(s.(syscall.Signal)))
		case <-done:
		}
	}()
	return sync.OnceFunc(func() {
		signal.Stop(c)
		close(done)
	})
}
