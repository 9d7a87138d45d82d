package boot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/bootfs/bootfs/boot/lazyfs"
	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/opener"
	"github.com/bootfs/bootfs/internal/bootconfig"
	"github.com/bootfs/bootfs/internal/inputfile"
)

// Init runs a boot image's workload, argv (the arguments after "--": the
// original entrypoint and command as Docker composed them), as the
// container's init:
//
//  1. It checks /dev/fuse and the privilege to mount, and reads the config.
//  2. It mounts the image read-only with FUSE on Workdir/lower, puts an
//     overlay over it on Workdir/root whose writable upper is the volume
//     at Workdir/upper (or Upper), and binds /proc, /dev, /sys and every
//     mount Docker made (volumes, binds, tmpfs, the /etc files) into it;
//     an empty Docker volume first gets the image's content at its path,
//     as Docker does. With a read-only container root, the root is made
//     read-only too.
//  3. It makes that root the root of the container's own mount
//     namespace, the old one detached (see pivotHere), so docker exec and
//     health checks run in it; it keeps the cache through a descriptor.
//  4. It starts the workload (see WorkloadCommand), then serves the
//     filesystem, forwards signals to the workload as the kernel would
//     deliver them to the container's PID 1 (see asPID1Would), reaps
//     children, and logs stats on SIGUSR1.
//  5. When the workload ends it writes the stats and returns
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
	if err := checkRoot(); err != nil {
		return 0, err
	}
	if status, done, err := initViaAgent(argv, opts); done {
		return status, err
	}
	log.Info("bootfs: in-container mode: this container mounts its own image (it needs --privileged --device /dev/fuse); to run it with no privilege, start bootfs-agent on the node and add -v /run/bootfs:/run/bootfs")
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
		return 0, fmt.Errorf("boot: no chunk store: the image's config names none; set %s=URL (http://, ssh://, oci:// or a path)", EnvStore)
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

	cache := opts.Cache
	if cache != "" {
		// Reached through its descriptor once the old root is gone.
		held, name, err := heldDir(cache)
		if err != nil {
			return 0, fmt.Errorf("boot: chunk cache: %w", err)
		}
		defer held.Close()
		cache = name
	}
	open := opts.Open
	if open == nil {
		open = opener.Open
	}
	im, err := lazyfs.OpenImage(ctx, opts.Index, lazyfs.ImageOptions{
		Open: func(ctx context.Context, d casync.Digest) (*opener.Opened, error) {
			return open(ctx, store, opener.Options{
				Credentials: opts.Credentials, Digest: d, Retry: opts.Retry, Logger: log,
				Cache: cache, CacheOptions: chunkstore.CacheOptions{MaxBytes: opts.CacheMax},
			})
		},
		TOC: opts.TOC, Reader: opts.Reader, Logger: log,
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
		if n := lazyfs.PrefetchList(bg, im.Reader, cfg.Prefetch, log); n > 0 {
			log.Debug("prefetched", "chunks", n, "of", len(cfg.Prefetch))
		}
	}()

	var rec *lazyfs.Recorder
	if opts.Record != "" {
		rec = lazyfs.NewRecorder(im.TOC)
	}
	fsys, err := lazyfs.NewFS(im.TOC, im.Reader, lazyfs.FSOptions{Logger: log, AllowSuidDev: true, Recorder: rec})
	if err != nil {
		return 0, err
	}
	r := &rootfs{log: log, dir: opts.Workdir}
	defer r.teardown()
	if err := r.build(fsys, opts.Upper, mounts); err != nil {
		return 0, err
	}
	if err := r.enter(); err != nil {
		return 0, err
	}
	log.Debug("root ready", "root", r.root, "took", time.Since(start).Round(time.Millisecond))

	img, extraGroups, err := opts.workloadImage(cfg.Image)
	if err != nil {
		return 0, err
	}
	environ := os.Environ()
	if opts.Caller != nil {
		environ = withoutSecureTraceback(environ)
	}
	w, err := startWorkload(argv, environ, img, extraGroups)
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

	stats := func() lazyfs.Stats {
		s := im.Stats()
		if !execAt.IsZero() {
			s.StartToExecMS = execAt.Sub(start).Milliseconds()
		}
		return s
	}
	report := func() {
		s := stats()
		log.Info("bootfs stats", s.LogArgs()...)
		if opts.Stats != "" {
			// With the rights of the user who started boot, if one did.
			if err := opts.Caller.do(func() error { return lazyfs.WriteStats(opts.Stats, s) }); err != nil {
				log.Warn("cannot write stats", "file", opts.Stats, "err", err)
			}
		}
		if rec != nil {
			if err := opts.Caller.do(func() error { return rec.WriteFile(opts.Record) }); err != nil {
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

// workloadImage returns the image configuration the workload runs with:
// img with the user and working directory the options override, and the
// supplementary groups to add.
//
// The user is the one Docker started boot as, with the groups it gave:
// the boot image's USER is the original's, so Docker resolved the image's
// USER, or --user, as it would have for the original's workload. That is
// the Caller when boot runs setuid; started as root (an image without a
// USER, or --user 0 or root[:GROUP]), it is root with the gid and groups
// Docker gave, unless BOOTFS_USER names another user.
func (opts InitOptions) workloadImage(img bootconfig.Image) (bootconfig.Image, []int, error) {
	c := opts.Caller
	if c == nil && opts.User == "" {
		var err error
		if c, err = startedAs(); err != nil {
			return img, nil, err
		}
	}
	var extraGroups []int
	if c != nil {
		img.User = c.spec()
		// Docker lists the gid it gave among the groups too.
		for _, g := range c.Groups {
			if g != c.GID {
				extraGroups = append(extraGroups, g)
			}
		}
	} else {
		img.User = opts.User
	}
	if opts.WorkingDir != "" {
		img.WorkingDir = opts.WorkingDir
	}
	return img, extraGroups, nil
}

// loadConfig reads config.json and checks the index and TOC against the
// digests it records.
func loadConfig(opts InitOptions) (*bootconfig.Config, error) {
	cfg, err := bootconfig.ReadFile(opts.Config)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("boot: read config: %w (is this an image that mkimage converted?)", err)
	}
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
	f, err := inputfile.Open(name, want.Size)
	if err != nil {
		return fmt.Errorf("boot: %w (the config says %d bytes)", err, want.Size)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, want.Size+1)) // +1: a file that grew is a mismatch
	if err != nil {
		return fmt.Errorf("boot: read %s: %w", name, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != want.Digest || n != want.Size {
		return fmt.Errorf("%w: %s is %s (%d bytes), the config says %s (%d bytes)", lazyfs.ErrMismatch, name, got, n, want.Digest, want.Size)
	}
	return nil
}
