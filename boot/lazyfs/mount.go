package lazyfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore/opener"
	"github.com/bootfs/bootfs/internal/atomicfile"
	"github.com/bootfs/bootfs/internal/inputfile"
)

// Opener opens the store of an image's chunks, for chunk IDs of digest d
// (the index's). The caller composes it with chunkstore/opener from the
// store URL list, the credentials, the cache directory and the retry
// settings it has; the lazy filesystem never sees URLs or credentials.
type Opener func(ctx context.Context, d casync.Digest) (*opener.Opened, error)

// ImageOptions say where an image's chunks and TOC are.
type ImageOptions struct {
	// Open opens the store the index's chunks were written to. Required.
	Open Opener
	// TOC is the TOC file (--toc). Empty means INDEX.toc, or the index's
	// name with .caidx replaced by .toc, if either exists; else the TOC is
	// built by streaming the archive through its chunks.
	TOC string
	// Reader tunes fetching.
	Reader ReaderOptions
	// Logger receives progress and errors; nil discards.
	Logger *slog.Logger
}

// Image is an opened index with its store, TOC and Reader.
type Image struct {
	Index  *casync.Index
	TOC    *casync.TOC
	Reader *Reader

	store *opener.Opened // what Reader reads: cache or remote
}

// OpenImage reads the index at indexPath, opens its store with opts.Open
// and loads or builds its TOC.
func OpenImage(ctx context.Context, indexPath string, opts ImageOptions) (*Image, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Open == nil {
		return nil, errors.New("boot: no chunk store given (pass --store URL: the store the index's chunks were written to)")
	}
	idx, err := readIndex(indexPath)
	if err != nil {
		return nil, err
	}
	store, err := opts.Open(ctx, idx.Digest())
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	im := &Image{Index: idx, store: store}
	ro := opts.Reader
	if ro.Logger == nil {
		ro.Logger = log
	}
	im.Reader = NewReader(idx, store.Store, ro)

	tocPath := opts.TOC
	if tocPath == "" {
		tocPath = findTOC(indexPath)
	}
	if tocPath != "" {
		im.TOC, err = readTOC(tocPath, idx)
	} else {
		log.Info("no TOC beside the index; building it from the archive", "index", indexPath, "bytes", idx.Length())
		start := time.Now()
		im.TOC, err = casync.BuildTOC(&sequential{ctx: ctx, r: im.Reader})
		if err != nil {
			err = fmt.Errorf("boot: build TOC from the archive of %s: %w", indexPath, err)
		} else {
			log.Info("built TOC", "entries", im.TOC.Len(), "took", time.Since(start).Round(time.Millisecond))
		}
	}
	if err == nil && im.TOC.ArchiveSize != int64(idx.Length()) {
		err = fmt.Errorf("%w: TOC %s describes a %d-byte archive, index %s a %d-byte one", ErrMismatch, tocPath, im.TOC.ArchiveSize, indexPath, idx.Length())
	}
	if err != nil {
		im.Close()
		return nil, err
	}
	return im, nil
}

// maxIndexSize bounds the index boot reads, which it holds in memory: 1 GiB
// lists 26 million chunks, a 1.6 TiB archive at casync's 64 KiB average.
const maxIndexSize = 1 << 30

func readIndex(name string) (*casync.Index, error) {
	f, err := inputfile.Open(name, maxIndexSize)
	if err != nil {
		return nil, fmt.Errorf("boot: open index: %w", err)
	}
	defer f.Close()
	idx, err := casync.ReadIndex(io.LimitReader(f, maxIndexSize))
	if err != nil {
		return nil, fmt.Errorf("boot: read index %s: %w", name, err)
	}
	return idx, nil
}

// findTOC returns the TOC that sits beside the index, or "".
func findTOC(indexPath string) string {
	cands := []string{indexPath + ".toc"}
	if ext := filepath.Ext(indexPath); ext == ".caidx" {
		cands = append(cands, strings.TrimSuffix(indexPath, ext)+".toc")
	}
	for _, c := range cands {
		if st, err := os.Stat(c); err == nil && st.Mode().IsRegular() {
			return c
		}
	}
	return ""
}

// readTOC reads the TOC of idx's archive from name. A TOC is never larger
// than casync.MaxTOCSize of its archive, so a larger file is refused
// before it is read.
func readTOC(name string, idx *casync.Index) (*casync.TOC, error) {
	b, err := inputfile.ReadFile(name, casync.MaxTOCSize(int64(idx.Length())))
	if errors.Is(err, inputfile.ErrTooLarge) {
		return nil, fmt.Errorf("boot: read TOC: %w: the index describes a %d-byte archive, and no TOC of one is larger (is it the TOC of this index?)", err, idx.Length())
	}
	if err != nil {
		return nil, fmt.Errorf("boot: read TOC: %w", err)
	}
	t, err := casync.UnmarshalTOC(b)
	if err != nil {
		return nil, fmt.Errorf("boot: read TOC %s: %w", name, err)
	}
	return t, nil
}

// Stats are the figures boot reports, as JSON in the --stats file.
type Stats struct {
	// ChunksFetched and BytesFetched count the chunks, and their bytes,
	// received from the store: as stored (compressed) when a cache
	// receives them, else uncompressed.
	ChunksFetched uint64 `json:"chunks_fetched"`
	BytesFetched  uint64 `json:"bytes_fetched"`
	// CacheHits counts the chunks read from the cache directory instead.
	CacheHits uint64 `json:"cache_hits"`
	// MemoryHits counts chunk reads served from memory.
	MemoryHits uint64 `json:"memory_hits"`
	// Retries counts repeated fetch attempts.
	Retries uint64 `json:"retries"`
	// Errors counts chunks that could not be had.
	Errors uint64 `json:"errors"`
	// StartToExecMS is the time from start to exec of the workload, in
	// milliseconds; 0 when there is no workload (boot mount).
	StartToExecMS int64 `json:"start_to_exec_ms"`
	// Batches, ReadAhead*, PrefetchUnreadBytes, NetworkWaits and
	// LongestChain are the Reader's (see ReaderStats): its batch reads,
	// what read-ahead fetched over the network and what of it no read
	// used, the reads that waited for the network, and the longest
	// chain of dependent fetches.
	Batches               uint64 `json:"batches"`
	ReadAheadChunks       uint64 `json:"read_ahead_chunks"`
	ReadAheadBytes        uint64 `json:"read_ahead_bytes"`
	ReadAheadWastedChunks uint64 `json:"read_ahead_wasted_chunks"`
	ReadAheadWastedBytes  uint64 `json:"read_ahead_wasted_bytes"`
	PrefetchUnreadBytes   uint64 `json:"prefetch_unread_bytes"`
	NetworkWaits          uint64 `json:"network_waits"`
	LongestChain          uint64 `json:"longest_chain"`
}

// LogArgs returns s as the key-value pairs of the stats log line.
func (s Stats) LogArgs() []any {
	args := []any{"chunks_fetched", s.ChunksFetched, "bytes_fetched", s.BytesFetched, "cache_hits", s.CacheHits,
		"memory_hits", s.MemoryHits, "retries", s.Retries, "errors", s.Errors}
	if s.StartToExecMS != 0 {
		args = append(args, "start_to_exec_ms", s.StartToExecMS)
	}
	return append(args, "batches", s.Batches,
		"read_ahead_chunks", s.ReadAheadChunks, "read_ahead_bytes", s.ReadAheadBytes,
		"read_ahead_wasted_chunks", s.ReadAheadWastedChunks, "read_ahead_wasted_bytes", s.ReadAheadWastedBytes,
		"prefetch_unread_bytes", s.PrefetchUnreadBytes, "network_waits", s.NetworkWaits, "longest_chain", s.LongestChain)
}

// Stats returns the image's figures so far.
func (im *Image) Stats() Stats {
	rs := im.Reader.Stats()
	remote := im.store.Remote.Stats()
	s := Stats{
		ChunksFetched: remote.Hits,
		// A cache receives frames, as stored; without one the Reader
		// gets chunks.
		BytesFetched: remote.WireBytes + remote.Bytes,
		MemoryHits:   rs.MemoryHits,
		Retries:      remote.Retries,
		Errors:       rs.Errors,

		Batches:               rs.Batches,
		ReadAheadChunks:       rs.ReadAheadChunks,
		ReadAheadBytes:        rs.ReadAheadBytes,
		ReadAheadWastedChunks: rs.ReadAheadWastedChunks,
		ReadAheadWastedBytes:  rs.ReadAheadWastedBytes,
		PrefetchUnreadBytes:   rs.PrefetchUnreadBytes,
		NetworkWaits:          rs.NetworkWaits,
		LongestChain:          rs.LongestChain,
	}
	if im.store.Cache != nil {
		s.CacheHits = im.store.Cache.Stats().Hits
	}
	return s
}

// Close stops the Reader and closes the stores.
func (im *Image) Close() error {
	if im.Reader != nil {
		im.Reader.Close()
	}
	return im.store.Close()
}

// WriteStats writes s as JSON to name, atomically.
func WriteStats(name string, s Stats) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(name, append(b, '\n')); err != nil {
		return fmt.Errorf("boot: write stats: %w", err)
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
	// Record is a file to write the image paths read through the mount
	// to, at unmount and on SIGUSR1 (--record); see Recorder. Empty
	// means none.
	Record string
	// Prefetch is a list of image paths, as Record writes it (and
	// mkimage --prefetch reads it), whose chunks are fetched in one
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
	var prefetch []string
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
