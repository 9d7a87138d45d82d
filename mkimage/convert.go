package mkimage

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

// Options configure Convert. The zero value chunks with casync's defaults
// and writes nothing but the returned Summary. Fields map one to one to
// mkimage's flags.
type Options struct {
	// IndexOut is a file to write the caidx to (--index-out); the TOC goes
	// beside it as IndexOut+".toc".
	IndexOut string
	// CatarOut is a file to write the plain catar to (--catar-out).
	CatarOut string
	// ChunkSize is min:avg:max (--chunk-size); zero means 16k:64k:256k.
	ChunkSize casync.ChunkSize
	// Chunker is the chunking algorithm (--chunker); "" means buzhash.
	Chunker casync.ChunkerKind
	// Digest is the chunk ID hash (--digest).
	Digest casync.Digest
	// Jobs bounds the goroutines that hash, compress and upload (-j);
	// zero means GOMAXPROCS. The output never depends on it.
	Jobs int
	// TempDir holds the payload spill file of a tar source (default
	// os.TempDir()).
	TempDir string
	// TempMax bounds that spill file (--tmp-max): the sum of the sizes of
	// the tar's regular files, a sparse one counted at its full size,
	// whose holes take no disk. Zero means the free space of TempDir's
	// file system when the conversion starts; a negative value means no
	// limit.
	TempMax int64
	// Log receives progress and warnings; nil discards them.
	Log *slog.Logger
	// Pull pulls a missing image SOURCE (--pull).
	Pull bool
	// Progress, if set, is called from time to time with the figures so
	// far, and once more at the end. Calls never overlap.
	Progress func(Progress)
}

// Progress is a snapshot of a conversion under way.
type Progress struct {
	// Total estimates the archive's size (the image's, or the tarball's);
	// 0 when not known, as for a directory. Bytes may pass it.
	Total        int64
	Bytes        int64 // archive bytes chunked
	Chunks       int   // chunks cut
	NewChunks    int   // chunks the store did not have
	BytesWritten int64 // compressed bytes written to the store
	Elapsed      time.Duration
}

// Summary describes a finished conversion.
type Summary struct {
	Source string `json:"source"`
	// SourceID is the image ID of a docker source.
	SourceID string `json:"source_id,omitempty"`
	// Entries is the number of nodes in the archive.
	Entries int `json:"entries"`
	// Bytes is the size of the catar archive.
	Bytes int64 `json:"bytes"`
	// Chunks is the number of chunks in the index, UniqueChunks the
	// number of distinct ones.
	Chunks       int `json:"chunks"`
	UniqueChunks int `json:"unique_chunks"`
	// NewChunks is the number of chunks the store did not have before,
	// NewBytes their uncompressed size, BytesWritten their compressed size.
	NewChunks    int   `json:"new_chunks"`
	NewBytes     int64 `json:"new_bytes"`
	BytesWritten int64 `json:"bytes_written"`
	// DedupRatio is the share of archive bytes that did not have to be
	// stored: repeated within the archive or already in the store.
	DedupRatio float64 `json:"dedup_ratio"`
	Seconds    float64 `json:"seconds"`
	Store      string  `json:"store,omitempty"`
	IndexOut   string  `json:"index,omitempty"`
	TOCDigest  string  `json:"toc_digest"`
	// RuntimeStore is the store URL a boot image reads, when the store
	// gave one on commit (an oci:// store pins its chunk map).
	RuntimeStore string `json:"runtime_store,omitempty"`

	// Index and TOC are the results themselves.
	Index *casync.Index `json:"-"`
	TOC   *casync.TOC   `json:"-"`
}

func (o *Options) logger() *slog.Logger {
	if o.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Log
}

// Convert encodes src as a catar, cuts it into chunks, stores the chunks
// that store lacks and builds the index and TOC. A nil store means the
// chunks are cut and hashed but stored nowhere. The output files are
// written only when everything else has succeeded, each whole or not at
// all.
//
// The store is opened by the caller (cmd/mkimage, with the opener, for
// writing: chunk IDs are computed here from the very bytes that are
// stored, so the stores need not hash them again). If it is a
// chunkstore.Syncer (a local directory, written without an fsync per
// chunk), it is synced once, after the last chunk and before the index
// that refers to the chunks is written: a crash before that leaves no
// index that names an unsynced chunk. Convert does not close it.
func Convert(ctx context.Context, src Source, store chunkstore.WriteStore, opts Options) (*Summary, error) {
	start := time.Now()
	log := opts.logger()
	jobs := opts.Jobs
	if jobs <= 0 {
		jobs = defaultJobs()
	}

	if src.Kind == "docker" {
		c, err := dockerClient()
		if err != nil {
			return nil, err
		}
		defer c.Close()
		info, err := inspectImage(ctx, c, src.Path, opts.Pull)
		if err != nil {
			return nil, err
		}
		src.docker, src.image = c, &info
	}

	var catarFile *pendingFile
	if opts.CatarOut != "" {
		f, err := createPending(opts.CatarOut)
		if err != nil {
			return nil, err
		}
		defer f.abort()
		catarFile = f
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var tempMax int64
	if src.Kind != "dir" { // only a tar stream spills
		var err error
		if tempMax, err = spillLimit(opts); err != nil {
			return nil, err
		}
	}

	// Stage 1: the encoder writes the catar into a pipe (and the optional
	// catar file), and reports every entry to the TOC builder.
	tocb := casync.NewTOCBuilder()
	pr, pw := io.Pipe()
	var archiveSize atomic.Int64
	encodeDone := make(chan error, 1)
	go func() {
		var w io.Writer = pw
		if catarFile != nil {
			w = io.MultiWriter(pw, catarFile.f)
		}
		bw := bufio.NewWriterSize(&countingWriter{w: w, n: &archiveSize}, 1<<20)
		err := src.encode(ctx, bw, &casync.EncodeOptions{
			OnEntry: tocb.Add,
			TempDir: opts.TempDir,
			TempMax: tempMax,
			Log:     log,
			Digest:  opts.Digest,
		})
		if err == nil {
			err = bw.Flush()
		}
		if errors.Is(err, casync.ErrTempMax) {
			err = fmt.Errorf("%w (the contents of a tar source wait in a temporary file in %s until the tar is read: raise --tmp-max, or give --tmpdir a file system with more room)", err, tempDirName(opts))
		}
		pw.CloseWithError(err)
		encodeDone <- err
	}()

	// Stage 2: chunk and hash in parallel, in stream order. Stage 3: the
	// chunks not seen before in this archive go to the uploader in
	// batches; it asks the store which of a batch it lacks in one go (a
	// remote store's round trips overlap) and compresses and stores
	// those. At most two batches are in flight, which bounds memory and
	// holds the chunker back when the store is slow.
	up := newUploader(store, log, jobs)
	up.total = src.sizeHint()
	upg, upctx := errgroup.WithContext(ctx)
	upg.SetLimit(2)
	seen := make(map[casync.ChunkID]struct{})
	var batch []pendingChunk
	flush := func() {
		if len(batch) == 0 {
			return
		}
		b := batch
		batch = nil
		upg.Go(func() error {
			defer releaseBatch(b)
			return up.uploadBatch(upctx, b)
		})
	}
	var lastProgress time.Time
	var chunks int
	chunkOpts := casync.ChunkOptions{Chunker: opts.Chunker, Size: opts.ChunkSize, Digest: opts.Digest, Jobs: jobs}
	idx, splitErr := casync.BuildIndex(ctx, pr, casync.CatarFeatureFlags(opts.Digest), chunkOpts, func(c casync.Chunk) error {
		chunks++
		if opts.Progress != nil && time.Since(lastProgress) > 200*time.Millisecond {
			lastProgress = time.Now()
			opts.Progress(up.progress(int64(c.Start+c.Size), chunks, start))
		}
		if _, ok := seen[c.ID]; ok {
			return nil
		}
		seen[c.ID] = struct{}{}
		if store == nil {
			return nil
		}
		if err := upctx.Err(); err != nil {
			return context.Cause(upctx)
		}
		buf := getBuf()
		*buf = append((*buf)[:0], c.Data...)
		batch = append(batch, pendingChunk{id: c.ID, data: buf})
		if len(batch) == hasBatchSize {
			flush()
		}
		return nil
	})
	if splitErr == nil {
		flush()
	} else {
		releaseBatch(batch)
	}
	// Unblock the encoder if chunking stopped early, then collect all
	// three stages' errors; the first real one wins.
	if splitErr != nil {
		cancel()
		pr.CloseWithError(splitErr)
	}
	encErr := <-encodeDone
	upErr := upg.Wait()
	// An upload failure stops the other stages, which then report it
	// again, wrapped; it goes first.
	if err := firstError(upErr, encErr, splitErr); err != nil {
		return nil, err
	}
	var runtimeStore string
	if store != nil {
		if err := chunkstore.Sync(ctx, store); err != nil {
			return nil, err
		}
		rs, err := commitStore(ctx, store, idx)
		if err != nil {
			return nil, err
		}
		runtimeStore = rs
	}

	toc, err := tocb.TOC(archiveSize.Load(), casync.CatarFeatureFlags(opts.Digest))
	if err != nil {
		return nil, fmt.Errorf("build TOC: %w", err)
	}
	if opts.IndexOut != "" {
		if err := writeIndexAndTOC(opts.IndexOut, idx, toc); err != nil {
			return nil, err
		}
	}
	if catarFile != nil {
		if err := catarFile.commit(); err != nil {
			return nil, err
		}
	}

	sum := &Summary{
		Source:       src.String(),
		SourceID:     src.imageID(),
		Entries:      toc.Len(),
		Bytes:        archiveSize.Load(),
		Chunks:       len(idx.Chunks),
		UniqueChunks: len(seen),
		NewChunks:    int(up.newChunks.Load()),
		NewBytes:     up.newBytes.Load(),
		BytesWritten: up.written.Load(),
		Seconds:      time.Since(start).Seconds(),
		Store:        storeName(store),
		IndexOut:     opts.IndexOut,
		TOCDigest:    toc.Digest(),
		RuntimeStore: runtimeStore,
		Index:        idx,
		TOC:          toc,
	}
	if sum.Bytes > 0 {
		stored := sum.NewBytes
		if store == nil {
			stored = uniqueBytes(idx)
		}
		sum.DedupRatio = 1 - float64(stored)/float64(sum.Bytes)
	}
	if opts.Progress != nil {
		opts.Progress(up.progress(sum.Bytes, sum.Chunks, start))
	}
	return sum, nil
}

// firstError returns the first error that is not a mere consequence of
// another stage stopping: a pipe closed or a context cancelled because a
// sibling failed.
// spillLimit is the TempMax that EncodeTar gets for opts.
func spillLimit(opts Options) (int64, error) {
	switch {
	case opts.TempMax > 0:
		return opts.TempMax, nil
	case opts.TempMax < 0:
		return 0, nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(tempDirName(opts), &st); err != nil {
		return 0, fmt.Errorf("temporary directory %s: %w (set --tmpdir)", tempDirName(opts), err)
	}
	return max(int64(st.Bavail)*st.Bsize, 1), nil
}

func tempDirName(opts Options) string {
	if opts.TempDir != "" {
		return opts.TempDir
	}
	return os.TempDir()
}

func firstError(errs ...error) error {
	var fallback error
	for _, err := range errs {
		if err == nil {
			continue
		}
		if errors.Is(err, context.Canceled) || errors.Is(err, io.ErrClosedPipe) {
			if fallback == nil {
				fallback = err
			}
			continue
		}
		return err
	}
	return fallback
}

func uniqueBytes(idx *casync.Index) int64 {
	seen := make(map[casync.ChunkID]struct{}, len(idx.Chunks))
	var n int64
	for _, c := range idx.Chunks {
		if _, ok := seen[c.ID]; !ok {
			seen[c.ID] = struct{}{}
			n += int64(c.Size)
		}
	}
	return n
}

// hasBatchSize is how many chunks the uploader asks the store about at
// once.
const hasBatchSize = 64

// pendingChunk is a chunk waiting for the uploader, in a pooled buffer.
type pendingChunk struct {
	id   casync.ChunkID
	data *[]byte
}

func releaseBatch(b []pendingChunk) {
	for _, p := range b {
		putBuf(p.data)
	}
}

// uploader stores the chunks a store lacks and counts them.
type uploader struct {
	store chunkstore.WriteStore
	log   *slog.Logger
	// hasParallel bounds the has-checks in flight per batch, and
	// putParallel the chunks compressed and stored at once per batch.
	hasParallel, putParallel int
	total                    int64 // for Progress.Total
	newChunks                atomic.Int64
	newBytes                 atomic.Int64
	written                  atomic.Int64
	mu                       sync.Mutex // serialises Progress snapshots
}

func newUploader(store chunkstore.WriteStore, log *slog.Logger, jobs int) *uploader {
	u := &uploader{store: store, log: log, hasParallel: 16, putParallel: jobs}
	if !chunkstore.IsLocal(store) {
		// A remote store's writes wait on the network, not the CPU.
		u.putParallel = max(jobs, 8)
	}
	return u
}

// uploadBatch stores the chunks of b that the store lacks.
func (u *uploader) uploadBatch(ctx context.Context, b []pendingChunk) error {
	ids := make([]casync.ChunkID, len(b))
	for i, p := range b {
		ids[i] = p.id
	}
	// The stores' errors name the chunk and the store already.
	has, err := chunkstore.HasChunks(ctx, u.store, ids, u.hasParallel)
	if err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(u.putParallel)
	for i, p := range b {
		if has[i] {
			continue
		}
		g.Go(func() error { return u.upload(ctx, p.id, *p.data) })
	}
	return g.Wait()
}

// upload compresses and stores one chunk.
func (u *uploader) upload(ctx context.Context, id casync.ChunkID, data []byte) error {
	fbuf := getBuf()
	defer putBuf(fbuf)
	frame := casync.CompressChunk((*fbuf)[:0], data)
	*fbuf = frame
	// The compression runs here, on the upload goroutines, and only once:
	// a store that takes frames stores them as they are.
	if err := chunkstore.WriteFrame(ctx, u.store, id, frame); err != nil {
		return err
	}
	u.newChunks.Add(1)
	u.newBytes.Add(int64(len(data)))
	u.written.Add(int64(len(frame)))
	return nil
}

// bufs recycles the chunk and frame buffers of the upload goroutines, so
// that converting an image allocates a bounded number of them instead of
// one per chunk.
var bufs = sync.Pool{New: func() any { return new([]byte) }}

func getBuf() *[]byte  { return bufs.Get().(*[]byte) }
func putBuf(b *[]byte) { bufs.Put(b) }

func (u *uploader) progress(bytes int64, chunks int, start time.Time) Progress {
	u.mu.Lock()
	defer u.mu.Unlock()
	return Progress{
		Total:        u.total,
		Bytes:        bytes,
		Chunks:       chunks,
		NewChunks:    int(u.newChunks.Load()),
		BytesWritten: u.written.Load(),
		Elapsed:      time.Since(start),
	}
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// writeIndexAndTOC writes the caidx to name and the TOC to name+".toc",
// each atomically.
func writeIndexAndTOC(name string, idx *casync.Index, toc *casync.TOC) error {
	tocBytes, err := toc.MarshalBinary()
	if err != nil {
		return fmt.Errorf("encode TOC: %w", err)
	}
	if err := writeAtomic(name+".toc", func(w io.Writer) error {
		_, err := w.Write(tocBytes)
		return err
	}); err != nil {
		return err
	}
	return writeAtomic(name, func(w io.Writer) error {
		_, err := idx.WriteTo(w)
		return err
	})
}

// pendingFile is an output file written under a temporary name in the
// same directory and renamed into place by commit.
type pendingFile struct {
	f    *os.File
	name string
	done bool
}

func createPending(name string) (*pendingFile, error) {
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", name, err)
	}
	return &pendingFile{f: f, name: name}, nil
}

func (p *pendingFile) commit() error {
	if err := p.f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", p.name, err)
	}
	if err := p.f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", p.name, err)
	}
	if err := os.Chmod(p.f.Name(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", p.name, err)
	}
	if err := os.Rename(p.f.Name(), p.name); err != nil {
		return fmt.Errorf("write %s: %w", p.name, err)
	}
	p.done = true
	return nil
}

// abort removes the temporary file unless commit succeeded.
func (p *pendingFile) abort() {
	if !p.done {
		p.f.Close()
		os.Remove(p.f.Name())
	}
}

func writeAtomic(name string, write func(io.Writer) error) error {
	p, err := createPending(name)
	if err != nil {
		return err
	}
	defer p.abort()
	bw := bufio.NewWriter(p.f)
	if err := write(bw); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return p.commit()
}

func defaultJobs() int { return runtime.GOMAXPROCS(0) }

// storeName names store in the summary, "" for none.
func storeName(store chunkstore.WriteStore) string {
	if store == nil {
		return ""
	}
	return chunkstore.Name(store)
}
