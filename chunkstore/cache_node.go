package chunkstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/casync"
)

// A cache directory is shared by every process on a node: every container
// that mounts the cache volume runs a boot of its own. What those
// processes must agree on lives in the directory itself, under nodeDir,
// which the store layout ignores (it is not a 4-hex prefix directory):
//
//	.bootfs-node/fetch/<id>  a lock file per chunk being fetched: a process
//	                         that holds its flock fetches, the others wait
//	                         for the chunk file to appear
//	.bootfs-node/size        the bytes of chunk files in the directory and
//	                         the bytes being written, mapped shared, so that
//	                         a size cap holds across processes
//	.bootfs-node/evict       the lock of the one process that evicts
//
// flock locks die with the process that holds them, so a crashed fetcher
// never blocks the others; one that hangs blocks them no longer than the
// cache's LockWait, after which they fetch the chunk themselves. Neither
// lock guards correctness, which atomic renames and verification keep:
// losing a race costs one fetch twice, never a wrong byte.
const nodeDir = ".bootfs-node"

// sizeMagic marks an initialized size file; the version is its last byte.
const sizeMagic = "bootfsz1"

// The size file: magic, then two int64 counters.
const (
	sizeOffCommitted = 8  // bytes of chunk files renamed into place
	sizeOffPending   = 16 // bytes reserved by writes still under way
	sizeFileLen      = 24
)

// node is one process's handle on the state a cache directory shares.
type node struct {
	dir   string // the cache directory
	fetch string // dir/.bootfs-node/fetch
	log   *slog.Logger

	// mem maps the size file; nil without a size cap.
	mem  []byte
	size *os.File
}

// openNode opens the shared state of the cache in dir. With capped, it
// also maps the size file, counting the directory first if no process
// has yet. An error means the directory cannot be shared safely with a
// cap; without one, a node whose lock directory cannot be made (a
// read-only cache) still works, fetching without cross-process locks.
func openNode(dir string, capped bool, log *slog.Logger) (*node, error) {
	n := &node{dir: dir, fetch: filepath.Join(dir, nodeDir, "fetch"), log: log}
	if err := os.MkdirAll(n.fetch, 0o755); err != nil {
		n.fetch = ""
		if capped {
			return nil, fmt.Errorf("open the cache's shared state: %w", err)
		}
	}
	if !capped {
		return n, nil
	}
	if err := n.mapSize(); err != nil {
		return nil, fmt.Errorf("open the cache's shared size in %s: %w", filepath.Join(dir, nodeDir), err)
	}
	return n, nil
}

func (n *node) mapSize() error {
	f, err := os.OpenFile(filepath.Join(n.dir, nodeDir, "size"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	unlock, err := n.lockEvict(context.Background(), true)
	if err != nil {
		f.Close()
		return err
	}
	defer unlock()
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	var head [sizeFileLen]byte
	fresh := fi.Size() < sizeFileLen
	if !fresh {
		if _, err := f.ReadAt(head[:], 0); err != nil {
			f.Close()
			return err
		}
		fresh = string(head[:8]) != sizeMagic
	}
	if fresh {
		// No process has counted the directory yet (or an older bootfs
		// made it): count it once, under the evict lock.
		var total int64
		if err := walkStore(context.Background(), n.dir, func(ci ChunkInfo) error {
			total += ci.Size
			return nil
		}); err != nil {
			f.Close()
			return err
		}
		copy(head[:8], sizeMagic)
		binary.NativeEndian.PutUint64(head[sizeOffCommitted:], uint64(total))
		binary.NativeEndian.PutUint64(head[sizeOffPending:], 0)
		if _, err := f.WriteAt(head[:], 0); err != nil {
			f.Close()
			return err
		}
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, sizeFileLen, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return err
	}
	n.mem, n.size = mem, f
	return nil
}

func (n *node) counter(off int) *int64 {
	return (*int64)(unsafe.Pointer(&n.mem[off]))
}

// used returns the bytes of chunk files plus those being written.
func (n *node) used() int64 {
	return atomic.LoadInt64(n.counter(sizeOffCommitted)) + atomic.LoadInt64(n.counter(sizeOffPending))
}

// reserve counts size bytes about to be written, and reports whether they
// fit under limit with every other process's. The check and the count are
// one atomic add, so two processes cannot both take the last room. A
// reservation that does not fit is taken back.
func (n *node) reserve(size, limit int64) bool {
	p := n.counter(sizeOffPending)
	after := atomic.AddInt64(p, size) + atomic.LoadInt64(n.counter(sizeOffCommitted))
	if after <= limit {
		return true
	}
	atomic.AddInt64(p, -size)
	return false
}

// settle ends a reservation: written says the file is in place.
func (n *node) settle(size int64, written bool) {
	if written {
		atomic.AddInt64(n.counter(sizeOffCommitted), size)
	}
	atomic.AddInt64(n.counter(sizeOffPending), -size)
}

// removed counts chunk files removed by this process.
func (n *node) removed(size int64) {
	if n.mem != nil {
		atomic.AddInt64(n.counter(sizeOffCommitted), -size)
	}
}

// lockFile takes the flock of the file at name, which it creates. It
// returns a release that removes the file and drops the lock. With wait,
// it blocks; else it reports ok false when another process holds it.
//
// A holder removes the file before it unlocks, so a process that opened
// the file earlier may get the lock on a removed file: it checks that the
// path still names the file it locked, and else tries again.
func lockFile(name string, wait bool) (release func(), ok bool, err error) {
	how := unix.LOCK_EX
	if !wait {
		how |= unix.LOCK_NB
	}
	for {
		fd, err := unix.Open(name, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o644)
		if err != nil {
			return nil, false, &fs.PathError{Op: "open", Path: name, Err: err}
		}
		for {
			err = unix.Flock(fd, how)
			if err != unix.EINTR {
				break
			}
		}
		if err == unix.EWOULDBLOCK {
			unix.Close(fd)
			return nil, false, nil
		}
		if err != nil {
			unix.Close(fd)
			return nil, false, &fs.PathError{Op: "flock", Path: name, Err: err}
		}
		var locked, named unix.Stat_t
		if unix.Fstat(fd, &locked) == nil && unix.Stat(name, &named) == nil &&
			locked.Dev == named.Dev && locked.Ino == named.Ino {
			return func() {
				unix.Unlink(name)
				unix.Close(fd)
			}, true, nil
		}
		unix.Close(fd)
	}
}

// lockEvict takes the evict lock. Without wait, ok is false (and release
// nil) when another process is evicting.
func (n *node) lockEvict(ctx context.Context, wait bool) (release func(), err error) {
	name := filepath.Join(n.dir, nodeDir, "evict")
	// The evict lock file stays: lockFile's release removes it, which is
	// harmless, as the next locker creates it again.
	release, ok, err := lockFile(name, wait)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, nil
	}
	return release, nil
}

// Polling intervals of a process waiting for another's fetch: short at
// first, since most fetches take a round trip or two.
const (
	lockPollMin = time.Millisecond
	lockPollMax = 20 * time.Millisecond
)

// lockFetch returns when this process should fetch chunk id itself, with
// release to call after the chunk is cached (nil if no lock was taken),
// or when cached reports that another process has cached it meanwhile
// (done true). It waits for another process's fetch at most until
// deadline, and stops waiting when ctx ends.
func (n *node) lockFetch(ctx context.Context, id casync.ChunkID, deadline time.Time, cached func() bool) (release func(), done bool) {
	if n.fetch == "" {
		return nil, false
	}
	name := filepath.Join(n.fetch, id.String())
	poll := lockPollMin
	for {
		release, ok, err := lockFile(name, false)
		if err != nil {
			// A cache whose lock directory cannot be written fetches
			// without the lock; the cache warns of the directory itself.
			n.log.Debug("cannot take the chunk's fetch lock; fetching without it", "id", id, "err", err)
			return nil, false
		}
		if ok {
			return release, false
		}
		// Another process fetches it: wait for its file.
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, false
		case <-t.C:
		}
		if cached() {
			return nil, true
		}
		if time.Now().After(deadline) {
			n.log.Debug("another process's fetch of the chunk takes too long; fetching it too", "id", id)
			return nil, false
		}
		poll = min(2*poll, lockPollMax)
	}
}

// tryLockFetch takes the fetch lock of chunk id without waiting. It
// returns the lock's release (nil if there is no lock directory), or busy
// if another process holds the lock: that process is fetching the chunk.
func (n *node) tryLockFetch(id casync.ChunkID) (release func(), busy bool) {
	if n.fetch == "" {
		return nil, false
	}
	release, ok, err := lockFile(filepath.Join(n.fetch, id.String()), false)
	if err != nil {
		n.log.Debug("cannot take the chunk's fetch lock; fetching without it", "id", id, "err", err)
		return nil, false
	}
	return release, !ok
}

// evictTo removes the least recently used chunk files (by mtime) until the
// directory holds at most target bytes, skipping those pinned says are in
// use, and returns what it removed. Only one process evicts at a time:
// without wait, it returns at once if another one is. need, if not nil,
// is asked once the lock is held whether eviction is still needed: a
// process that waited for another's eviction may find room made. It also
// corrects the shared count by what the walk found, so a count that
// drifted (files removed by hand, a process killed mid-write) heals.
func (n *node) evictTo(ctx context.Context, target int64, wait bool, pinned func(casync.ChunkID) bool, need func() bool) (removed int, bytes int64, err error) {
	unlock, err := n.lockEvict(ctx, wait)
	if err != nil || unlock == nil {
		return 0, 0, err
	}
	defer unlock()
	if need != nil && !need() {
		return 0, 0, nil
	}
	var before int64
	if n.mem != nil {
		before = atomic.LoadInt64(n.counter(sizeOffCommitted))
	}
	removed, bytes, walked, err := evictDir(ctx, n.dir, target, pinned, nil)
	if n.mem != nil && walked >= 0 {
		// A file renamed during the walk was counted after before was
		// read and may also have been walked: an overcount, which is
		// safe and heals at the next eviction.
		atomic.AddInt64(n.counter(sizeOffCommitted), walked-before-bytes)
	}
	return removed, bytes, err
}

// evictDir removes the least recently used chunk files of the cache in dir
// (by mtime) until it holds at most target bytes, skipping those pinned
// says are in use. It returns the files and bytes it removed and the bytes
// the walk found before removing (-1 if the walk failed). remove, if not
// nil, replaces os.Remove.
func evictDir(ctx context.Context, dir string, target int64, pinned func(casync.ChunkID) bool, remove func(ChunkInfo) error) (removed int, bytes, walked int64, err error) {
	if remove == nil {
		remove = func(ci ChunkInfo) error { return os.Remove(ci.Path) }
	}
	all, walked, err := lruOrder(ctx, dir)
	if err != nil {
		return 0, 0, -1, fmt.Errorf("evict cached chunks: %w", err)
	}
	total := walked
	for _, ci := range all {
		if total <= target {
			break
		}
		if pinned != nil && pinned(ci.ID) {
			continue
		}
		if err := remove(ci); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				total -= ci.Size
				continue
			}
			return removed, bytes, walked, fmt.Errorf("evict cached chunk: %w", err)
		}
		total -= ci.Size
		bytes += ci.Size
		removed++
	}
	return removed, bytes, walked, nil
}

// lruOrder returns the chunk files of dir, least recently used (oldest
// mtime) first, and their total size.
func lruOrder(ctx context.Context, dir string) ([]ChunkInfo, int64, error) {
	var all []ChunkInfo
	var total int64
	err := walkStore(ctx, dir, func(ci ChunkInfo) error {
		all = append(all, ci)
		total += ci.Size
		return nil
	})
	slices.SortFunc(all, func(a, b ChunkInfo) int { return a.ModTime.Compare(b.ModTime) })
	return all, total, err
}

// close unmaps the size file.
func (n *node) close() error {
	if n.mem == nil {
		return nil
	}
	err := unix.Munmap(n.mem)
	if cerr := n.size.Close(); err == nil {
		err = cerr
	}
	n.mem = nil
	return err
}
