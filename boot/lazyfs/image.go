package lazyfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore/opener"
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
