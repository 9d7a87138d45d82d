package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/boot/lazyfs"
)

// reports are the files a container asked for in its request
// (BOOTFS_STATS, BOOTFS_RECORD), which the agent writes as the mount
// ends: boot has exec'd the workload by then, and the figures are final
// only when the container is gone.
//
// Each file's directory is opened in the container's new root once it is
// pivoted, resolved inside it, and held by an O_PATH fd until the end,
// when the container's namespace is gone. Only a directory on another
// mount than the image's root (a volume, as -v DIR:/stats mounts) can be
// held: an fd on the root would keep the FUSE mount, and the agent's
// wait for its end, alive forever.
type reports struct {
	mu            sync.Mutex // open, in the caller's namespace, and write, by the watcher
	stats, record report
	rec           *lazyfs.Recorder // of the mount's FS, for record
	startToExec   int64            // milliseconds, from boot's start to the reply
}

// report is one file to write: name in the directory dir (-1: none).
type report struct {
	env, path string // as the container gave it, for messages
	dir       int
	name      string
}

// newReports returns the reports req asks for, with a Recorder for the
// mount's FS if it asks for the record; nil if it asks for none.
func newReports(req Request, recorder func() *lazyfs.Recorder) *reports {
	if req.Stats == "" && req.Record == "" {
		return nil
	}
	r := &reports{
		stats:  report{env: "BOOTFS_STATS", path: req.Stats, dir: -1},
		record: report{env: "BOOTFS_RECORD", path: req.Record, dir: -1},
	}
	if req.Record != "" {
		r.rec = recorder()
	}
	if req.Started > 0 {
		r.startToExec = time.Since(time.UnixMilli(req.Started)).Milliseconds()
	}
	return r
}

// open opens the directories of the reports in the root of the thread's
// mount namespace (run after pivot, in the caller's namespace), refusing
// one on the mount of root, the new root's fd. It returns one warning for
// the caller per report it cannot write.
func (r *reports) open(root int) (warnings []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var rootSt unix.Stat_t
	if err := unix.Fstat(root, &rootSt); err != nil {
		return []string{fmt.Sprintf("no BOOTFS_STATS or BOOTFS_RECORD: stat the new root: %v", err)}
	}
	for _, f := range []*report{&r.stats, &r.record} {
		if f.path == "" {
			continue
		}
		if err := f.open(rootSt.Dev); err != nil {
			warnings = append(warnings, fmt.Sprintf("%s=%s is not written: %v", f.env, f.path, err))
		}
	}
	return warnings
}

func (f *report) open(rootDev uint64) error {
	p := path.Clean("/" + f.path)
	dir, name := path.Split(p)
	if name == "" || name == "." || name == ".." {
		return errors.New("it names no file")
	}
	fd, err := resolve(unix.AT_FDCWD, dir, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return fmt.Errorf("open its directory: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return fmt.Errorf("stat its directory: %w", err)
	}
	if st.Dev == rootDev {
		unix.Close(fd)
		return fmt.Errorf("in node-agent mode it must be on a volume (docker run -v DIR:%s), which the agent writes it to as the container ends", dir)
	}
	f.dir, f.name = fd, name
	return nil
}

// write writes the reports, with the figures of reader, and closes their
// directories.
func (r *reports) write(reader *lazyfs.Reader, log *slog.Logger) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stats.dir >= 0 {
		b, err := json.MarshalIndent(mountStats(reader, r.startToExec), "", "  ")
		if err == nil {
			err = r.stats.write(append(b, '\n'))
		}
		if err != nil {
			log.Warn("cannot write the container's stats", "file", r.stats.path, "err", err)
		}
	}
	if r.record.dir >= 0 && r.rec != nil {
		if err := r.record.write(r.rec.Marshal()); err != nil {
			log.Warn("cannot write the list of files the container read", "file", r.record.path, "err", err)
		}
	}
	r.close()
}

// close lets go of the directories.
func (r *reports) close() {
	for _, f := range []*report{&r.stats, &r.record} {
		closeFD(f.dir)
		f.dir = -1
	}
}

// write writes b to the report's file atomically: a new file beside it,
// renamed over it, so a reader never sees half of one. Nothing is
// followed: not a symlink at the name, nor one at the temporary name.
func (f *report) write(b []byte) error {
	tmp := "." + f.name + ".bootfs-agent-" + strconv.Itoa(unix.Getpid())
	unix.Unlinkat(f.dir, tmp, 0) // a leftover of an agent of that pid
	fd, err := unix.Openat(f.dir, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	_, err = unix.Write(fd, b)
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(f.dir, tmp, f.dir, f.name)
	}
	if err != nil {
		unix.Unlinkat(f.dir, tmp, 0)
	}
	return err
}

// mountStats returns a mount's figures in BOOTFS_STATS's form. The node
// cache and the stores are every container's, so what one container's
// reads cost is what its mount loaded from them: chunks_fetched and
// bytes_fetched (uncompressed) count the chunks it took from the node
// cache or the stores, memory_hits those the shared LRU served; the
// node's cache hits, retries and network bytes are in the agent's
// /metrics.
func mountStats(r *lazyfs.Reader, startToExec int64) lazyfs.Stats {
	rs := r.Stats()
	return lazyfs.Stats{
		ChunksFetched: rs.ChunksFetched,
		BytesFetched:  rs.BytesFetched,
		MemoryHits:    rs.MemoryHits,
		Errors:        rs.Errors,
		StartToExecMS: startToExec,
	}
}
