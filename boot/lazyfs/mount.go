package lazyfs

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// mountOptions returns the go-fuse options Mount uses.
func (f *FS) mountOptions() *fuse.MountOptions {
	flags := uintptr(syscall.MS_RDONLY)
	if !f.opts.AllowSuidDev {
		flags |= syscall.MS_NOSUID | syscall.MS_NODEV
	}
	return &fuse.MountOptions{
		AllowOther:       true,
		Options:          []string{"ro", "default_permissions"},
		FsName:           f.opts.FsName,
		Name:             "bootfs",
		DirectMount:      true,
		DirectMountFlags: flags,
		MaxWrite:         maxRead,
		MaxReadAhead:     maxRead,
		// Reads are answered from memory, never from a file
		// descriptor: splicing would only add system calls.
		DisableSplice: true,
		Debug:         f.opts.Debug,
	}
}

// Mount mounts the filesystem on dir and serves it until it is
// unmounted. Unmount it with the server's Unmount (or Unmount).
func (f *FS) Mount(dir string) (*fuse.Server, error) {
	if err := checkMountpoint(dir); err != nil {
		return nil, err
	}
	srv, err := fuse.NewServer(f, dir, f.mountOptions())
	if err == nil {
		go srv.Serve()
		if err = srv.WaitMount(); err != nil {
			srv.Unmount() // leave no dead mount behind
		}
	}
	if err != nil {
		return nil, fmt.Errorf("boot: mount FUSE filesystem on %s: %w", dir, err)
	}
	return srv, nil
}

// KernelOptions returns the FUSE mount options (fsconfig keys and
// values) the kernel needs for this filesystem besides fd, rootmode,
// user_id and group_id, for a caller that mounts it with the new mount
// API and serves it with ServeFD: what Mount passes to mount(2).
func (f *FS) KernelOptions() map[string]string {
	return map[string]string{
		"allow_other":         "",
		"default_permissions": "",
		"max_read":            fmt.Sprint(maxRead),
	}
}

// AllowSuidDev reports whether the mount is to be made without nosuid
// and nodev (see FSOptions.AllowSuidDev).
func (f *FS) AllowSuidDev() bool { return f.opts.AllowSuidDev }

// NewFDServer returns a server of the filesystem on fd, an open
// /dev/fuse whose connection the caller has mounted already (fsopen and
// fsmount with the options of KernelOptions), as a node agent does. The
// caller runs its Serve, which returns when the kernel ends the
// connection (the mount's last reference went, or it was aborted). The
// server takes fd over and closes it when Serve returns.
func (f *FS) NewFDServer(fd int) (*fuse.Server, error) {
	o := f.mountOptions()
	o.DirectMount = false // go-fuse takes /dev/fd/N as mounted already
	srv, err := fuse.NewServer(f, fmt.Sprintf("/dev/fd/%d", fd), o)
	if err != nil {
		return nil, fmt.Errorf("boot: serve FUSE on fd %d: %w", fd, err)
	}
	return srv, nil
}

// checkMountpoint fails unless dir is a directory. The kernel mounts a
// FUSE filesystem on a file too, and go-fuse then fails to serve it,
// leaving a mount that answers nothing.
func checkMountpoint(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("boot: mount point: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("boot: mount point %s is not a directory", dir)
	}
	return nil
}

// Unmount unmounts a mount that FS.Mount made. If files are still open,
// it detaches the mount lazily (MNT_DETACH): the kernel removes it once
// they are closed, and the server keeps serving them until then.
func Unmount(srv *fuse.Server, mountpoint string, log *slog.Logger) error {
	err := srv.Unmount()
	if err == nil {
		return nil
	}
	if log != nil {
		log.Warn("unmount failed, detaching lazily", "mountpoint", mountpoint, "err", err)
	}
	if derr := syscall.Unmount(mountpoint, syscall.MNT_DETACH); derr != nil {
		return fmt.Errorf("boot: unmount %s: %w (lazy unmount: %w)", mountpoint, err, derr)
	}
	return nil
}

// MountOptions configure RunMount. Fields map one to one to `boot mount`
// flags.
type MountOptions struct {
	ImageOptions
	// Stats is a file to write Stats to as JSON, at unmount and on
	// SIGUSR1 (--stats). Empty means none.
	Stats string
	// Record is a file to write the image files read through the mount
	// to, each with the 64 KiB blocks of it read, at unmount and on
	// SIGUSR1 (--record); see Recorder. Empty means none.
	Record string
	// Prefetch is a list of image files or parts of them, as Record
	// writes it (and mkimage --prefetch reads it; see ReadPathList),
	// whose chunks are fetched in one
	// sweep in the background from before the mount is up, reads first
	// (--prefetch); see PrefetchPaths. Empty means none.
	Prefetch string
	// FS tunes the filesystem; its Logger defaults to ImageOptions.Logger.
	FS FSOptions
}

// RunMount is `boot mount`: it mounts the image of the index at indexPath
// on mountpoint, serves it until ctx ends (or it is unmounted from
// outside), then unmounts it and writes the stats. It handles SIGUSR1 by
// writing the stats.
func RunMount(ctx context.Context, indexPath, mountpoint string, opts MountOptions) error {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.FS.Logger == nil {
		opts.FS.Logger = log
	}
	if err := checkMountpoint(mountpoint); err != nil { // before any fetch
		return err
	}
	var prefetch []PrefetchEntry
	if opts.Prefetch != "" {
		var err error
		if prefetch, err = ReadPathList(opts.Prefetch); err != nil {
			return err
		}
	}
	im, err := OpenImage(ctx, indexPath, opts.ImageOptions)
	if err != nil {
		return err
	}
	defer im.Close()
	if len(prefetch) > 0 {
		// Stopped before im.Close (deferred later, so run first).
		bg, stopBG := context.WithCancel(context.Background())
		defer stopBG()
		go func() {
			n := PrefetchPaths(bg, im.Reader, im.TOC, prefetch, log)
			log.Debug("prefetched", "chunks", n, "files", len(prefetch))
		}()
	}
	var rec *Recorder // the one --record writes out
	if opts.Record != "" {
		rec = NewRecorder(im.TOC)
		opts.FS.Recorder = rec
	}
	fsys, err := NewFS(im.TOC, im.Reader, opts.FS)
	if err != nil {
		return err
	}
	srv, err := fsys.Mount(mountpoint)
	if err != nil {
		return err
	}
	log.Info("mounted", "index", indexPath, "mountpoint", mountpoint, "entries", im.TOC.Len(), "archive_bytes", im.TOC.ArchiveSize)

	served := make(chan struct{})
	go func() {
		srv.Wait()
		close(served)
	}()
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)

	writeStats := func() {
		s := im.Stats()
		log.Info("stats", s.LogArgs()...)
		if opts.Stats != "" {
			if err := WriteStats(opts.Stats, s); err != nil {
				log.Error("cannot write stats", "file", opts.Stats, "err", err)
			}
		}
		if rec != nil {
			if err := rec.WriteFile(opts.Record); err != nil {
				log.Error("cannot write the list of files read", "file", opts.Record, "err", err)
			}
		}
	}
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-served:
			log.Warn("unmounted from outside", "mountpoint", mountpoint)
			writeStats()
			return nil
		case <-usr1:
			writeStats()
		}
	}
	err = Unmount(srv, mountpoint, log)
	select {
	case <-served:
	case <-time.After(5 * time.Second):
		// Detached with files still open: stop waiting for them.
		log.Warn("files still open on the detached mount; they will fail from now on", "mountpoint", mountpoint)
	}
	writeStats()
	if err != nil {
		return err
	}
	log.Info("unmounted", "mountpoint", mountpoint)
	return nil
}
