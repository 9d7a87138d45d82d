package boot

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/internal/bootconfig"
)

// ErrNotPrivileged is wrapped by the error Init returns at once when the
// container lacks /dev/fuse or the privilege to mount.
var ErrNotPrivileged = errors.New("boot: the container cannot mount its image")

// Init runs a boot image's workload, argv (the arguments after "--": the
// original entrypoint and command as Docker composed them), as the
// container's init:
//
//  1. It checks /dev/fuse and the privilege to mount, and reads the config.
//  2. It mounts the image read-only with FUSE on Workdir/lower, puts an
//     overlay with a writable upper over it on Workdir/root, and binds
//     /dev, /sys and every mount Docker made (volumes, binds, tmpfs, the
//     /etc files) into it; an empty Docker volume first gets the image's
//     content at its path, as Docker does.
//  3. It starts the workload in new PID and mount namespaces (see
//     WorkloadCommand), then serves the filesystem, forwards every
//     catchable signal to the workload, reaps children, and logs stats on
//     SIGUSR1.
//  4. When the workload ends it writes the stats, unmounts, and returns
//     the workload's exit status: its exit code, or 128+n if signal n
//     killed it.
//
// An error means the workload never ran.
func Init(ctx context.Context, argv []string, opts InitOptions) (int, error) {
	start := time.Now()
	opts = opts.withDefaults()
	log := opts.Logger
	if len(argv) == 0 {
		return 0, errors.New("boot: no command to run: the image has no Entrypoint or Cmd; pass one after the image name")
	}
	if err := checkPrivileges(); err != nil {
		return 0, err
	}
	cfg, err := loadConfig(opts)
	if err != nil {
		return 0, err
	}
	store := opts.Store
	if store == "" {
		store = cfg.Store
	}
	if store == "" {
		return 0, fmt.Errorf("boot: no chunk store: the image's config names none; set %s=URL (http://, ssh:// or a path)", EnvStore)
	}
	if err := opts.checkCallerStore(store); err != nil {
		return 0, err
	}
	// Until the workload process exists, a stop signal ends boot: it may
	// be blocked on the store (copying an image directory into an empty
	// volume, say), and as a container's PID 1 it would otherwise ignore
	// docker stop's SIGTERM until the kill.
	stopEarly := exitOnStop(log)
	defer stopEarly()
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return 0, fmt.Errorf("boot: %w", err)
	}
	mounts, err := ParseMountInfo(bytes.NewReader(mi))
	if err != nil {
		return 0, err
	}

	im, err := OpenImage(ctx, opts.Index, ImageOptions{
		Store: store, Cache: opts.Cache, TOC: opts.TOC, Dialers: opts.Dialers, CAFile: opts.CAFile,
		Reader: opts.Reader, Logger: log,
	})
	if err != nil {
		return 0, err
	}
	defer im.Close()
	log.Debug("opened image", "store", store, "cache", opts.Cache, "entries", im.TOC.Len(), "chunks", len(im.Index.Chunks))

	bg, stopBG := context.WithCancel(context.Background())
	defer stopBG()
	prefetched := make(chan struct{})
	go func() {
		defer close(prefetched)
		if n := PrefetchList(bg, im.Reader, cfg.Prefetch, log); n > 0 {
			log.Debug("prefetched", "chunks", n, "of", len(cfg.Prefetch))
		}
	}()

	var rec *Recorder
	if opts.Record != "" {
		rec = NewRecorder(im.TOC)
	}
	fsys, err := NewFS(im.TOC, im.Reader, FSOptions{Logger: log, AllowSuidDev: true, Recorder: rec})
	if err != nil {
		return 0, err
	}
	r := &rootfs{log: log, dir: opts.Workdir}
	defer r.teardown()
	if err := r.build(fsys, opts.Upper, mounts); err != nil {
		return 0, err
	}
	log.Debug("root ready", "root", r.root, "took", time.Since(start).Round(time.Millisecond))

	img := cfg.Image
	var extraGroups []int
	switch {
	case opts.Caller != nil:
		img.User = opts.Caller.spec()
		// Docker lists the gid it gave among the groups too.
		for _, g := range opts.Caller.Groups {
			if g != opts.Caller.GID {
				extraGroups = append(extraGroups, g)
			}
		}
	case opts.User != "":
		img.User = opts.User
	}
	if opts.WorkingDir != "" {
		img.WorkingDir = opts.WorkingDir
	}
	w, err := startWorkload(r.root, argv, img, extraGroups)
	if err != nil {
		return 0, err
	}
	stopEarly() // the workload gets every signal from here on
	var execAt time.Time
	stopForwarding := w.forwardWhileStarting(log)
	err = w.waitExec()
	stopForwarding()
	if err == nil && w.stoppedBy.Load() != 0 {
		// Killed: its end of the pipe closed as on an exec.
		err = errors.New("stopped before it exec'd its command")
	}
	if err != nil {
		// The child reported it and exits; reap it below.
		log.Debug("workload did not start", "err", err)
	} else {
		execAt = time.Now()
		log.Debug("workload started", "pid", w.pid, "start_to_exec", execAt.Sub(start).Round(time.Millisecond))
		if err := writeExecState(execState{InitPID: os.Getpid(), PID: w.pid, WorkingDir: img.WorkingDir}); err != nil {
			log.Warn("boot exec will not work", "err", err)
		} else {
			defer removeExecState()
		}
	}

	filled := make(chan struct{})
	if !opts.Background || execAt.IsZero() {
		close(filled)
	} else {
		go func() {
			defer close(filled)
			<-prefetched
			n, err := im.FillCache(bg, 2, log)
			if err != nil {
				log.Warn("no background fill", "err", err)
				return
			}
			if bg.Err() == nil {
				log.Debug("background fill done", "chunks", n)
			}
		}()
	}

	stats := func() Stats {
		s := im.Stats()
		if !execAt.IsZero() {
			s.StartToExecMS = execAt.Sub(start).Milliseconds()
		}
		return s
	}
	report := func() {
		s := stats()
		log.Info("bootfs stats", "chunks_fetched", s.ChunksFetched, "bytes_fetched", s.BytesFetched, "cache_hits", s.CacheHits,
			"memory_hits", s.MemoryHits, "retries", s.Retries, "errors", s.Errors, "start_to_exec_ms", s.StartToExecMS)
		if opts.Stats != "" {
			if err := writeStats(opts.Stats, s, opts.Caller); err != nil {
				log.Warn("cannot write stats", "file", opts.Stats, "err", err)
			}
		}
		if rec != nil {
			if err := rec.WriteFile(opts.Record, opts.Caller); err != nil {
				log.Warn("cannot write the list of files read", "file", opts.Record, "err", err)
			}
		}
	}
	status := w.supervise(report, log)
	if sig := w.stoppedBy.Load(); sig != 0 {
		status = 128 + int(sig) // as if the command had died of it
	}
	// The fill and the prefetch stop before the stats are taken and the
	// stores close: what they fetched is counted, and no fetch outlives
	// the image.
	stopBG()
	<-filled
	<-prefetched
	report()
	return status, nil
}

// checkPrivileges fails, wrapping ErrNotPrivileged, unless /dev/fuse is a
// character device this process can open and it may mount filesystems
// (CAP_SYS_ADMIN).
func checkPrivileges() error {
	var missing []string
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		missing = append(missing, "--device /dev/fuse")
	} else {
		f.Close()
	}
	if !hasCapSysAdmin() {
		missing = append(missing, "--privileged")
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("%w: this is a bootfs image, which mounts its root filesystem with FUSE at start; run it with docker run --privileged --device /dev/fuse ... (missing: %s)",
		ErrNotPrivileged, strings.Join(missing, " "))
}

// hasCapSysAdmin reports whether CAP_SYS_ADMIN is in the effective set.
func hasCapSysAdmin() bool {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<unix.CAP_SYS_ADMIN) != 0
		}
	}
	return false
}

// loadConfig reads config.json and checks the index and TOC against the
// digests it records.
func loadConfig(opts InitOptions) (*bootconfig.Config, error) {
	b, err := os.ReadFile(opts.Config)
	if err != nil {
		return nil, fmt.Errorf("boot: read config: %w (is this an image that mkimage converted?)", err)
	}
	cfg, err := bootconfig.Load(b)
	if err != nil {
		return nil, fmt.Errorf("boot: %s: %w", opts.Config, err)
	}
	for _, c := range []struct {
		name string
		blob bootconfig.Blob
	}{{opts.Index, cfg.Index}, {opts.TOC, cfg.TOC}} {
		if err := checkBlob(c.name, c.blob); err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

func checkBlob(name string, want bootconfig.Blob) error {
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return fmt.Errorf("boot: read %s: %w", name, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != want.Digest || n != want.Size {
		return fmt.Errorf("%w: %s is %s (%d bytes), the config says %s (%d bytes)", ErrMismatch, name, got, n, want.Digest, want.Size)
	}
	return nil
}

// rootfs is the workload's root and the mounts under it.
type rootfs struct {
	log    *slog.Logger
	dir    string // Workdir
	root   string // the overlay
	lower  string
	srv    *fuse.Server
	mounts []string // to unmount at teardown, in reverse order
}

// build mounts the FUSE tree, the overlay and the binds.
func (r *rootfs) build(fsys *FS, upper string, mounts []MountInfo) error {
	r.lower = filepath.Join(r.dir, "lower")
	r.root = filepath.Join(r.dir, "root")
	for _, d := range []string{r.lower, r.root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("%w: %v", ErrRootfs, err)
		}
	}
	srv, err := fsys.Mount(r.lower)
	if err != nil {
		return err
	}
	r.srv = srv

	if upper == "" {
		upper = filepath.Join(r.dir, "rw")
		if err := os.MkdirAll(upper, 0o755); err != nil {
			return fmt.Errorf("%w: %v", ErrRootfs, err)
		}
		if err := r.mount("tmpfs", upper, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
			return err
		}
	}
	up, work := filepath.Join(upper, "upper"), filepath.Join(upper, "work")
	for _, d := range []string{up, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("%w: writable layer: %v", ErrRootfs, err)
		}
	}
	// The upper's root takes the image root's mode and owner, or the
	// overlay's root would be the upper's (0755 root).
	if st, err := os.Stat(r.lower); err == nil {
		sys := st.Sys().(*syscall.Stat_t)
		_ = os.Chown(up, int(sys.Uid), int(sys.Gid))
		_ = unix.Chmod(up, sys.Mode&0o7777)
	}
	if err := r.overlay(up, work); err != nil {
		return err
	}

	for _, d := range []string{"dev", "proc", "sys"} {
		if err := r.bindPoint("/"+d, true); err != nil {
			return err
		}
	}
	for _, d := range []string{"/dev", "/sys"} {
		if err := r.mount(d, filepath.Join(r.root, d), "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return err
		}
	}
	vols := containerMounts(mounts)
	byDepth(vols)
	for _, m := range vols {
		if err := r.bindMount(m); err != nil {
			return err
		}
	}
	return nil
}

// overlay mounts the overlay of the image and the writable layer on
// r.root. overlayfs shows its options in /proc/mounts as they were given,
// so they are paths relative to r.dir, where init changes to for the
// mount: the workload's mount table then never names /.bootfs.
func (r *rootfs) overlay(up, work string) error {
	rel := func(p string) (string, error) {
		s, err := filepath.Rel(r.dir, p)
		if err != nil {
			return "", fmt.Errorf("%w: %v", ErrRootfs, err)
		}
		if strings.ContainsAny(s, ",:") {
			// overlayfs splits its options at commas and lowerdir at colons.
			return "", fmt.Errorf("%w: %s: a path for overlayfs must not hold ',' or ':'", ErrRootfs, p)
		}
		return s, nil
	}
	var dirs [3]string
	for i, p := range []string{r.lower, up, work} {
		var err error
		if dirs[i], err = rel(p); err != nil {
			return err
		}
	}
	back, err := os.Open(".")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRootfs, err)
	}
	defer back.Close()
	if err := os.Chdir(r.dir); err != nil {
		return fmt.Errorf("%w: %v", ErrRootfs, err)
	}
	defer back.Chdir()
	data := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", dirs[0], dirs[1], dirs[2])
	if err := r.mount("overlay", r.root, "overlay", 0, data); err != nil {
		return fmt.Errorf("%w (BOOTFS_UPPER must not be on an overlay filesystem; use a volume)", err)
	}
	return nil
}

// bindPoint makes the mount point p (a container path) in the root, and
// returns nil if it exists already.
func (r *rootfs) bindPoint(p string, dir bool) error {
	_, err := r.target(p, dir)
	return err
}

func (r *rootfs) target(p string, dir bool) (string, error) {
	t, err := resolveIn(r.root, p)
	if err != nil {
		return "", err
	}
	if err := mountPoint(t, dir); err != nil {
		return "", fmt.Errorf("%w: mount point %s: %v", ErrRootfs, p, err)
	}
	return t, nil
}

// bindMount binds the container's mount m into the root at the same path.
func (r *rootfs) bindMount(m MountInfo) error {
	fi, err := os.Stat(m.Point)
	if err != nil {
		r.log.Warn("cannot see a mount Docker made; not passing it on", "path", m.Point, "err", err)
		return nil
	}
	if fi.IsDir() && m.IsNamedVolume() && isEmptyDir(m.Point) {
		if err := r.fillVolume(m.Point); err != nil {
			return err
		}
	}
	t, err := r.target(m.Point, fi.IsDir())
	if err != nil {
		return err
	}
	if err := r.mount(m.Point, t, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return err
	}
	if m.ReadOnly() {
		if err := unix.Mount("", t, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("%w: make %s read-only: %v", ErrRootfs, m.Point, err)
		}
	}
	r.log.Debug("bound", "path", m.Point, "fstype", m.FSType, "ro", m.ReadOnly())
	return nil
}

// fillVolume copies the image's content at p, if it has any, into the
// empty volume mounted at p.
func (r *rootfs) fillVolume(p string) error {
	src, err := resolveIn(r.lower, p)
	if err != nil {
		return err
	}
	fi, err := os.Stat(src)
	if err != nil || !fi.IsDir() {
		return nil
	}
	start := time.Now()
	if err := copyTree(src, p, r.log); err != nil {
		return fmt.Errorf("%w: copy the image's %s into its empty volume: %v", ErrRootfs, p, err)
	}
	r.log.Debug("filled empty volume from the image", "path", p, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

func (r *rootfs) mount(source, target, fstype string, flags uintptr, data string) error {
	if err := unix.Mount(source, target, fstype, flags, data); err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			// CAP_SYS_ADMIN without --privileged: seccomp or AppArmor.
			return fmt.Errorf("%w: mount %s: %v; run it with docker run --privileged --device /dev/fuse ...", ErrNotPrivileged, target, err)
		}
		return fmt.Errorf("%w: mount %s on %s (%s %s): %v", ErrRootfs, source, target, fstype, data, err)
	}
	r.mounts = append(r.mounts, target)
	return nil
}

// teardown unmounts everything build mounted: the root's tree at once
// (lazily), then the FUSE server, so the cache is left complete.
func (r *rootfs) teardown() {
	for i := len(r.mounts) - 1; i >= 0; i-- {
		if err := unix.Unmount(r.mounts[i], unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			r.log.Debug("unmount", "path", r.mounts[i], "err", err)
		}
	}
	r.mounts = nil
	if r.srv != nil {
		if err := Unmount(r.srv, r.lower, r.log); err != nil {
			r.log.Warn("cannot unmount the image", "path", r.lower, "err", err)
		}
		r.srv = nil
	}
}

// workloadSpec is what init tells the workload process (see
// WorkloadCommand) on its fd 3.
type workloadSpec struct {
	Root       string   `json:"root"`
	Argv       []string `json:"argv"`
	Env        []string `json:"env"`
	ImageEnv   []string `json:"image_env"`
	User       string   `json:"user"`
	WorkingDir string   `json:"working_dir"`
	// ExtraGroups are supplementary groups to add to the user's own
	// (Docker's --group-add for a Caller).
	ExtraGroups []int `json:"extra_groups,omitempty"`
}

// workload is the running workload process.
type workload struct {
	pid   int
	execR *os.File
	sigc  chan os.Signal
	// stoppedBy is the stop signal that killed the workload process
	// before it exec'd its command, if one did.
	stoppedBy atomic.Int32
}

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

// startWorkload re-executes this binary as WorkloadCommand in new PID and
// mount namespaces.
func startWorkload(root string, argv []string, img bootconfig.Image, extraGroups []int) (*workload, error) {
	spec, err := json.Marshal(workloadSpec{
		Root: root, Argv: argv, Env: os.Environ(), ImageEnv: img.Env,
		User: img.User, WorkingDir: img.WorkingDir, ExtraGroups: extraGroups,
	})
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	specR, specW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	defer specR.Close()
	execR, execW, err := os.Pipe()
	if err != nil {
		specW.Close()
		return nil, fmt.Errorf("boot: %w", err)
	}
	defer execW.Close()

	cmd := exec.Command("/proc/self/exe", WorkloadCommand)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{specR, execW}
	cmd.Env = []string{}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS}
	if isTerminal(0) {
		// docker run -t: the workload leads its own session on the tty.
		cmd.SysProcAttr.Setsid = true
		cmd.SysProcAttr.Setctty = true
		cmd.SysProcAttr.Ctty = 0
	}

	w := &workload{execR: execR, sigc: make(chan os.Signal, 64)}
	// Before the start, so no signal or exit is missed.
	signal.Notify(w.sigc, append(forwarded(), unix.SIGCHLD)...)
	if err := cmd.Start(); err != nil {
		signal.Stop(w.sigc)
		specW.Close()
		execR.Close()
		return nil, fmt.Errorf("boot: start the workload: %w", err)
	}
	w.pid = cmd.Process.Pid
	// A failed write means the child died early: waitExec sees its end
	// of the exec pipe close and supervise reaps it.
	_, _ = specW.Write(spec)
	specW.Close()
	return w, nil
}

func isTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
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

// forwardWhileStarting handles signals for the workload process until
// the returned stop is called, while it has not exec'd its command yet.
// Its first reads of the image (its user's entry in /etc/passwd, its
// binary) may wait on a store that does not answer, in page-cache reads
// that only SIGKILL interrupts; and until it execs, it is boot's own code
// with nothing to clean up. So a stop signal (stopSignals) kills it, and
// is recorded for the exit status; others are forwarded. Signals that stop does not see are left for supervise.
func (w *workload) forwardWhileStarting(log *slog.Logger) (stop func()) {
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		for {
			select {
			case <-done:
				return
			case s := <-w.sigc:
				if s == unix.SIGCHLD {
					continue // supervise reaps before it waits
				}
				sig := s.(syscall.Signal)
				if slices.Contains(stopSignals, s) {
					log.Warn("stopped before the workload started", "signal", s)
					w.stoppedBy.CompareAndSwap(0, int32(sig))
					sig = unix.SIGKILL
				} else {
					log.Debug("forwarding signal while the workload starts", "signal", s)
				}
				if err := unix.Kill(w.pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
					log.Warn("cannot forward signal to the workload", "signal", s, "err", err)
				}
			}
		}
	}()
	return func() {
		close(done)
		<-exited
	}
}

// waitExec waits until the workload process has exec'd the command (its
// end of the pipe closes on exec) or reports why it could not.
func (w *workload) waitExec() error {
	defer w.execR.Close()
	b, _ := io.ReadAll(io.LimitReader(w.execR, 64<<10))
	if len(b) > 0 {
		return errors.New(string(b))
	}
	return nil
}

// supervise forwards signals to the workload and reaps children until the
// workload exits, and returns its exit status. onUSR1 runs on SIGUSR1,
// which is forwarded too.
func (w *workload) supervise(onUSR1 func(), log *slog.Logger) int {
	log = orDiscard(log)
	defer signal.Stop(w.sigc)
	for {
		// A reap first: the workload may have ended before the signal
		// handler was in place.
		if status, done := w.reap(log); done {
			return status
		}
		s := <-w.sigc
		switch s {
		case unix.SIGCHLD:
			continue
		case unix.SIGUSR1:
			onUSR1()
		}
		log.Debug("forwarding signal", "signal", s)
		if err := unix.Kill(w.pid, s.(syscall.Signal)); err != nil && !errors.Is(err, unix.ESRCH) {
			log.Warn("cannot forward signal to the workload", "signal", s, "err", err)
		}
	}
}

// reap collects every child that has ended. done is true once the
// workload has, with its exit status.
func (w *workload) reap(log *slog.Logger) (status int, done bool) {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return 0, false
		}
		if pid != w.pid {
			log.Debug("reaped an orphan", "pid", pid)
			continue
		}
		switch {
		case ws.Exited():
			return ws.ExitStatus(), true
		case ws.Signaled():
			return 128 + int(ws.Signal()), true
		}
	}
}

func orDiscard(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}
