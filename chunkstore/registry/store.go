package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/sync/singleflight"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

var (
	_ chunkstore.WriteStore      = (*Store)(nil)
	_ chunkstore.FrameWriteStore = (*Store)(nil)
	_ chunkstore.BatchHaser      = (*Store)(nil)
)

// Store is a chunk store in one registry repository. Safe for concurrent
// use.
//
// Reads need the chunk map of the image: the one the URL pins, or the
// union of every chunk map tagged in the repository; it is loaded at the
// first call. Chunks written with StoreChunk are held in a local spool
// and readable at once; Commit uploads them into packs and publishes the
// map. Close without Commit drops them.
type Store struct {
	url  string // as given, for messages
	repo name.Repository
	pin  v1.Hash // the chunk map named by the URL, if any
	tag  string  // the boot image whose chunk map the URL names, if any
	opts Options
	rt   http.RoundTripper
	web  *http.Client

	load   singleflight.Group
	mu     sync.Mutex
	loaded bool
	packs  []pack
	packOf map[v1.Hash]int
	chunks map[casync.ChunkID]loc

	spool   *os.File
	spoolN  int64
	spooled map[casync.ChunkID]loc // pack is unused: offsets in the spool

	warnedRange atomic.Bool
	closed      atomic.Bool
}

// loc is where a chunk frame is: a pack (an index into Store.packs) and
// the frame's bytes in it.
type loc struct {
	pack      int
	off, size int64
}

// Ref is a parsed oci:// store URL.
type Ref struct {
	Repo name.Repository
	// Digest pins one chunk map; Tag names a boot image whose chunk map
	// to read. At most one is set.
	Digest v1.Hash
	Tag    string
}

// tagPattern is the OCI distribution spec's tag grammar.
var tagPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)

// ParseRef parses oci://host[:port]/repo, with an optional @sha256:<hex>
// (a chunk map) or :tag (a boot image) after the repository.
func ParseRef(s string, o Options) (Ref, error) {
	bad := func(why string) (Ref, error) {
		return Ref{}, fmt.Errorf("%w %q: %s (want oci://host[:port]/repository[@sha256:…|:tag])", chunkstore.ErrBadURL, s, why)
	}
	rest, ok := strings.CutPrefix(s, "oci://")
	if !ok {
		return bad("not an oci:// URL")
	}
	host, path, ok := strings.Cut(rest, "/")
	if !ok || host == "" || path == "" {
		return bad("missing host or repository")
	}
	var r Ref
	if p, d, ok := strings.Cut(path, "@"); ok {
		h, err := v1.NewHash(d)
		if err != nil || h.Algorithm != "sha256" {
			return bad("bad digest " + d)
		}
		path, r.Digest = p, h
	} else if i := strings.LastIndexByte(path, ':'); i > strings.LastIndexByte(path, '/') {
		path, r.Tag = path[:i], path[i+1:]
		if !tagPattern.MatchString(r.Tag) {
			return bad("bad tag " + r.Tag)
		}
	}
	reg, err := o.registryOf(host)
	if err != nil {
		return bad(err.Error())
	}
	if _, err := name.NewRepository(host+"/"+path, name.StrictValidation); err != nil {
		return bad(err.Error())
	}
	r.Repo = reg.Repo(path)
	return r, nil
}

// URL returns the store URL that names the chunk map d in repo.
func URL(repo name.Repository, d v1.Hash) string {
	return "oci://" + repo.RegistryStr() + "/" + repo.RepositoryStr() + "@" + d.String()
}

// New opens the store that the oci:// URL u names. It pings the
// registry, takes a token if it asks for one, and reads the chunk map(s).
func New(ctx context.Context, u string, opts Options) (*Store, error) {
	opts = opts.withDefaults()
	ref, err := ParseRef(u, opts)
	if err != nil {
		return nil, err
	}
	octx, cancel := context.WithTimeout(ctx, opts.OpenTimeout)
	defer cancel()
	ctx = octx
	rt, _, err := opts.connect(ctx, ref.Repo)
	if err != nil {
		return nil, fmt.Errorf("registry %s: %w", ref.Repo.RegistryStr(), err)
	}
	s := &Store{
		url: u, repo: ref.Repo, pin: ref.Digest, tag: ref.Tag, opts: opts, rt: rt,
		web:    &http.Client{Transport: rt},
		packOf: map[v1.Hash]int{}, chunks: map[casync.ChunkID]loc{},
		spooled: map[casync.ChunkID]loc{},
	}
	if opts.Write {
		if err := s.checkPush(ctx); err != nil {
			return nil, fmt.Errorf("open %s for writing: %w", u, err)
		}
	}
	// Read the chunk map(s) now: a repository, tag or map that is not
	// there is a clear error at open, not an EIO at the first read.
	if err := s.index(ctx); err != nil {
		return nil, fmt.Errorf("open %s: %w", u, err)
	}
	return s, nil
}

func (s *Store) String() string { return s.url }

// blobURL is the v2 API URL of a blob of the repository.
// checkPush asks the registry for a blob upload and cancels it: a token
// server that grants an anonymous client only pull access says so here,
// with an error naming the credentials to give, rather than at the
// first upload or, when every blob is there already, at a manifest PUT
// that the token refresh sends again with its body spent.
func (s *Store) checkPush(ctx context.Context) error {
	u := fmt.Sprintf("%s://%s/v2/%s/blobs/uploads/", s.repo.Scheme(), s.repo.RegistryStr(), s.repo.RepositoryStr())
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return err
	}
	resp, err := s.web.Do(req)
	if err != nil {
		return explain(err, s.opts.AuthFile)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return explain(&transport.Error{StatusCode: resp.StatusCode}, s.opts.AuthFile)
	case resp.StatusCode >= 300:
		return fmt.Errorf("start a blob upload to %s: %s", s.repo, resp.Status)
	}
	// Cancel the upload; a registry that keeps it a while is harmless.
	if loc, err := resp.Location(); err == nil {
		if del, err := http.NewRequestWithContext(ctx, http.MethodDelete, loc.String(), nil); err == nil {
			if r, err := s.web.Do(del); err == nil {
				r.Body.Close()
			}
		}
	}
	return nil
}

func (s *Store) blobURL(d v1.Hash) string {
	return fmt.Sprintf("%s://%s/v2/%s/blobs/%s", s.repo.Scheme(), s.repo.RegistryStr(), s.repo.RepositoryStr(), d)
}

// index loads the chunk map(s) once; a failed load is tried again by the
// next call. The load runs on its own, so one caller's cancellation does
// not fail the others.
func (s *Store) index(ctx context.Context) error {
	s.mu.Lock()
	loaded := s.loaded
	s.mu.Unlock()
	if loaded {
		return nil
	}
	ch := s.load.DoChan("", func() (any, error) {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		maps, err := s.readMaps(lctx)
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, m := range maps {
			s.addMap(m)
		}
		s.loaded = true
		return nil, nil
	})
	select {
	case r := <-ch:
		return r.Err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// addMap adds the chunks of m that are not known yet. Callers hold s.mu.
func (s *Store) addMap(m *chunkMap) {
	idx := make([]int, len(m.Packs))
	for i, p := range m.Packs {
		j, ok := s.packOf[p.Digest]
		if !ok {
			j = len(s.packs)
			s.packs = append(s.packs, p)
			s.packOf[p.Digest] = j
		}
		idx[i] = j
	}
	for _, e := range m.Chunks {
		if _, ok := s.chunks[e.ID]; !ok {
			s.chunks[e.ID] = loc{pack: idx[e.Pack], off: e.Off, size: e.Size}
		}
	}
}

// GetChunk returns the verified chunk id: from the spool if it was
// written here and not committed, else with one Range request of its
// pack.
func (s *Store) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("get chunk %s: %w", id, err)
	}
	frame, err := s.getFrame(ctx, id)
	if err != nil {
		return nil, err
	}
	return s.decode(nil, id, frame)
}

// decode decompresses frame, appending to dst, and verifies it against
// id. Every failure wraps *casync.ChecksumError: a frame that does not
// decompress is as corrupt as one that hashes wrong.
func (s *Store) decode(dst []byte, id casync.ChunkID, frame []byte) ([]byte, error) {
	data, err := casync.DecompressChunk(dst, frame)
	if err != nil {
		return nil, fmt.Errorf("get chunk %s from %s: %w (%w)", id, s.url, &casync.ChecksumError{Want: id, Got: s.opts.Digest.Sum(frame)}, err)
	}
	if err := casync.VerifyChunk(s.opts.Digest, id, data[len(dst):]); err != nil {
		return nil, fmt.Errorf("get chunk %s from %s: %w", id, s.url, err)
	}
	return data, nil
}

// GetFrame returns the verified frame of id, as stored.
func (s *Store) GetFrame(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("get chunk %s: %w", id, err)
	}
	frame, err := s.getFrame(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := chunkstore.VerifyFrame(s.opts.Digest, id, frame); err != nil {
		return nil, fmt.Errorf("get chunk %s from %s: %w", id, s.url, err)
	}
	return frame, nil
}

func (s *Store) getFrame(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	s.mu.Lock()
	sp, spooled := s.spooled[id]
	s.mu.Unlock()
	if spooled {
		frame := make([]byte, sp.size)
		if _, err := s.spool.ReadAt(frame, sp.off); err != nil {
			return nil, fmt.Errorf("get chunk %s: spool: %w", id, err)
		}
		return frame, nil
	}
	if err := s.index(ctx); err != nil {
		return nil, fmt.Errorf("get chunk %s: %w", id, err)
	}
	s.mu.Lock()
	l, ok := s.chunks[id]
	var p pack
	if ok {
		p = s.packs[l.pack]
	}
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("get chunk %s from %s: %w", id, s.url, chunkstore.ErrNotFound)
	}
	frame, err := s.readRange(ctx, p, l.off, l.size)
	if err != nil {
		return nil, fmt.Errorf("get chunk %s from %s: %w", id, s.url, err)
	}
	return frame, nil
}

// readRange reads n bytes at off of pack p with one Range request.
func (s *Store) readRange(ctx context.Context, p pack, off, n int64) ([]byte, error) {
	r, err := s.getRange(ctx, p, off, n)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	frame := make([]byte, n)
	if err := r.read(frame, off); err != nil {
		return nil, err
	}
	return frame, nil
}

// packReply is the body of a ranged GET of a pack: the pack's bytes from
// pos up to end, read in order. A registry that answers a Range request
// with the whole blob gives a packReply of all of it.
type packReply struct {
	body     io.ReadCloser
	p        pack
	pos, end int64
	asked    string // the Range asked for, for messages
	got      string // what the reply says it holds, for messages
	err      error  // sticky: after a failed read the position is unknown
}

// getRange sends a GET of bytes off to off+n-1 of pack p. The reply may
// hold more or fewer bytes than asked for (read checks each read against
// what it holds), but never bytes of another blob: a whole-blob reply of
// the wrong size, or a Content-Range of another size, is an error.
func (s *Store) getRange(ctx context.Context, p pack, off, n int64) (*packReply, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.blobURL(p.Digest), nil)
	if err != nil {
		return nil, err
	}
	asked := fmt.Sprintf("bytes=%d-%d", off, off+n-1)
	req.Header.Set("Range", asked)
	resp, err := s.web.Do(req)
	if err != nil {
		return nil, explain(err, s.opts.AuthFile)
	}
	r := &packReply{body: resp.Body, p: p, asked: asked}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		cr := resp.Header.Get("Content-Range")
		start, end, total, err := parseContentRange(cr)
		if err != nil || start > end || end >= p.Size || total >= 0 && total != p.Size {
			resp.Body.Close()
			return nil, fmt.Errorf("pack %s of %d bytes: asked for %s, got Content-Range %q", p.Digest, p.Size, asked, cr)
		}
		r.pos, r.end, r.got = start, end+1, "Content-Range "+strconv.Quote(cr)
		return r, nil
	case http.StatusOK:
		if resp.ContentLength >= 0 && resp.ContentLength != p.Size {
			resp.Body.Close()
			return nil, fmt.Errorf("pack %s: the registry ignored Range and sent %d bytes, but the pack has %d", p.Digest, resp.ContentLength, p.Size)
		}
		if !s.warnedRange.Swap(true) {
			s.opts.Logger.Warn("registry ignores Range requests: every chunk read downloads its pack up to the chunk", "store", s.url)
		}
		r.pos, r.end, r.got = 0, p.Size, "the whole blob"
		return r, nil
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNotFound:
		return nil, fmt.Errorf("pack %s is not in the repository (garbage-collected or lost from the registry's storage?): %w", p.Digest, chunkstore.ErrNotFound)
	case http.StatusUnauthorized, http.StatusForbidden:
		return nil, explain(fmt.Errorf("pack %s: %s", p.Digest, resp.Status), s.opts.AuthFile)
	default:
		return nil, fmt.Errorf("pack %s: %s", p.Digest, resp.Status)
	}
}

// read fills dst with the pack's bytes at off, skipping what lies
// before. off must not be behind what was read already.
func (r *packReply) read(dst []byte, off int64) error {
	if r.err != nil {
		return r.err
	}
	n := int64(len(dst))
	if off < r.pos || off+n > r.end {
		return fmt.Errorf("pack %s: bytes %d-%d are not in the reply (asked for %s, got %s)", r.p.Digest, off, off+n-1, r.asked, r.got)
	}
	if _, err := io.CopyN(io.Discard, r.body, off-r.pos); err != nil {
		r.err = fmt.Errorf("pack %s: short reply to %s: ends before byte %d: %w", r.p.Digest, r.asked, off, eofIsUnexpected(err))
		return r.err
	}
	if _, err := io.ReadFull(r.body, dst); err != nil {
		r.err = fmt.Errorf("pack %s: short reply to %s: ends inside bytes %d-%d: %w", r.p.Digest, r.asked, off, off+n-1, eofIsUnexpected(err))
		return r.err
	}
	r.pos = off + n
	return nil
}

func (r *packReply) Close() error { return r.body.Close() }

func eofIsUnexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// parseContentRange parses "bytes START-END/TOTAL"; total is -1 when
// the reply gives it as "*".
func parseContentRange(v string) (start, end, total int64, err error) {
	bad := fmt.Errorf("bad Content-Range %q", v)
	r, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, 0, 0, bad
	}
	r, t, ok := strings.Cut(r, "/")
	if !ok {
		return 0, 0, 0, bad
	}
	a, b, ok := strings.Cut(r, "-")
	if !ok {
		return 0, 0, 0, bad
	}
	if start, err = strconv.ParseInt(a, 10, 64); err != nil || start < 0 {
		return 0, 0, 0, bad
	}
	if end, err = strconv.ParseInt(b, 10, 64); err != nil {
		return 0, 0, 0, bad
	}
	total = -1
	if t != "*" {
		if total, err = strconv.ParseInt(t, 10, 64); err != nil {
			return 0, 0, 0, bad
		}
	}
	return start, end, total, nil
}

// HasChunk reports whether the chunk map(s) or the spool hold id.
func (s *Store) HasChunk(ctx context.Context, id casync.ChunkID) (bool, error) {
	has, err := s.HasChunks(ctx, []casync.ChunkID{id})
	if err != nil {
		return false, err
	}
	return has[0], nil
}

// HasChunks answers from the chunk map(s) and the spool: no request per
// chunk.
func (s *Store) HasChunks(ctx context.Context, ids []casync.ChunkID) ([]bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("has chunks: %w", err)
	}
	if err := s.index(ctx); err != nil {
		return nil, fmt.Errorf("has chunks: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]bool, len(ids))
	for i, id := range ids {
		_, inMap := s.chunks[id]
		_, inSpool := s.spooled[id]
		out[i] = inMap || inSpool
	}
	return out, nil
}

// StoreChunk compresses data and spools it until Commit.
func (s *Store) StoreChunk(ctx context.Context, id casync.ChunkID, data []byte) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("store chunk %s: %w", id, err)
	}
	if !s.opts.TrustWrites {
		if err := casync.VerifyChunk(s.opts.Digest, id, data); err != nil {
			return fmt.Errorf("store chunk %s: %w", id, err)
		}
	}
	return s.spoolFrame(id, casync.CompressChunk(nil, data))
}

// StoreFrame spools a compressed chunk until Commit.
func (s *Store) StoreFrame(ctx context.Context, id casync.ChunkID, frame []byte) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("store chunk %s: %w", id, err)
	}
	if !s.opts.TrustWrites {
		if err := chunkstore.VerifyFrame(s.opts.Digest, id, frame); err != nil {
			return fmt.Errorf("store chunk %s: %w", id, err)
		}
	}
	return s.spoolFrame(id, frame)
}

func (s *Store) spoolFrame(id casync.ChunkID, frame []byte) error {
	if s.closed.Load() {
		return fmt.Errorf("store chunk %s: %s is closed", id, s.url)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.spooled[id]; ok {
		return nil
	}
	if s.spool == nil {
		f, err := os.CreateTemp(s.opts.TempDir, "bootfs-registry-spool-*")
		if err != nil {
			return fmt.Errorf("store chunk %s: spool: %w", id, err)
		}
		os.Remove(f.Name()) // gone with the last descriptor
		s.spool = f
	}
	if _, err := s.spool.WriteAt(frame, s.spoolN); err != nil {
		return fmt.Errorf("store chunk %s: spool: %w", id, err)
	}
	s.spooled[id] = loc{off: s.spoolN, size: int64(len(frame))}
	s.spoolN += int64(len(frame))
	return nil
}

// Close drops the spool; chunks not committed are lost.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.spool != nil {
		if n := len(s.spooled); n > 0 {
			s.opts.Logger.Debug("registry store closed", "store", s.url, "spooled", n)
		}
		return s.spool.Close()
	}
	return nil
}

// sha256Hash returns the sha256 v1.Hash of b.
func sha256Hash(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// firstUse returns the distinct ids in first-use order.
func firstUse(ids []casync.ChunkID) []casync.ChunkID {
	seen := make(map[casync.ChunkID]struct{}, len(ids))
	out := make([]casync.ChunkID, 0, len(ids))
	for _, id := range ids {
		if _, ok := seen[id]; !ok {
			seen[id] = struct{}{}
			out = append(out, id)
		}
	}
	return out
}
