package chunkstore

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/bootfs/bootfs/casync"
)

// HandlerOptions configure the HTTP chunk-store handler. The zero value
// serves reads only, with the limits below at their defaults.
type HandlerOptions struct {
	// WriteToken enables PUT for requests that carry
	// "Authorization: Bearer <WriteToken>". Without it, PUT answers 403.
	WriteToken string
	// MaxConcurrent bounds the chunk requests whose chunk is being read,
	// verified or stored at once (the slots); the rest wait. A slot is
	// never held while an answer is sent or a body received, so a client
	// that stops reading costs its own connection, not a slot. Zero
	// means 16 per CPU.
	MaxConcurrent int
	// MaxPerClient bounds the slots that the requests from one client
	// address hold at once, so that no client can take them all. Zero
	// means a quarter of MaxConcurrent, at least 1.
	MaxPerClient int
	// MinRate is the slowest, in bytes a second, that a client may read
	// an answer or send a PUT body. Each write or read of up to 64 KiB
	// must finish within 2 seconds plus its size at this rate; a client
	// that falls behind has its connection (or HTTP/2 stream) closed.
	// Zero means 16 KiB/s.
	MinRate int
	// MaxPutBytes bounds the PUT body bytes held at once across all
	// requests (each PUT counts its Content-Length, or the largest frame
	// without one). A PUT that would go over waits for room for up to
	// PutWait and then gets 503 with Retry-After. Zero means 64 MiB.
	MaxPutBytes int64
	// PutWait is how long a PUT waits for room under MaxPutBytes. Zero
	// means 10 seconds.
	PutWait time.Duration
	// Logger receives a debug line per request and an error line for each
	// corrupt chunk; nil discards them.
	Logger *slog.Logger
}

// Defaults of HandlerOptions and ServerOptions.
const (
	DefaultMinRate           = 16 << 10
	DefaultMaxPutBytes       = 64 << 20
	DefaultPutWait           = 10 * time.Second
	DefaultMaxConns          = 1024
	DefaultMaxConnsPerClient = 256
)

// ioPiece is the most a handler writes or reads under one deadline, and
// ioGrace the time every piece gets on top of its size at MinRate.
const (
	ioPiece = 64 << 10
	ioGrace = 2 * time.Second
)

// Handler serves a store over HTTP in casync's layout:
//
//	GET  /<4 hex>/<64 hex>.cacnk   200 with the zstd frame, 404, or 400
//	HEAD /<4 hex>/<64 hex>.cacnk   200, 404, or 400
//	PUT  /<4 hex>/<64 hex>.cacnk   201; 400 for a frame that is not the id;
//	                               401 without the write token
//	POST /batch                    many chunks in one reply (see batchwire.go);
//	                               400 or 413 for a bad or too big request
//	GET  /metrics                  counters in Prometheus text format
//
// Every answer carries "Bootfs-Chunkstore: batch" (BatchHeader), from
// which a client learns that it may read in batches.
//
// Any other path is a 400: the handler maps a request to a chunk ID and
// never to a file name, so nothing outside the store can be reached.
// Every chunk is verified before it is served (a corrupt one is a 500 and
// an error in the log, never its bytes) and before it is stored. Frames
// are served as stored, not recompressed, when the store is a FrameStore.
type Handler struct {
	store     Store
	opts      HandlerOptions
	log       *slog.Logger
	slots     chan struct{}
	perClient int
	rate      int
	putBytes  *semaphore.Weighted
	maxPut    int64
	putWait   time.Duration

	clientsMu sync.Mutex
	clients   map[string]*clientSlots

	inFlight                 atomic.Int64
	sentBytes, receivedBytes atomic.Uint64
	corrupt                  atomic.Uint64
	batchChunks              atomic.Uint64
	mu                       sync.Mutex
	requests                 map[requestKey]uint64
}

// clientSlots are the slots one client address may hold, and refs the
// requests of that client waiting for or holding one.
type clientSlots struct {
	sem  chan struct{}
	refs int
}

type requestKey struct {
	method string
	code   int
}

// NewHTTPHandler returns a handler that serves store.
func NewHTTPHandler(store Store, opts HandlerOptions) *Handler {
	n := opts.MaxConcurrent
	if n <= 0 {
		n = 16 * runtime.GOMAXPROCS(0)
	}
	per := opts.MaxPerClient
	if per <= 0 {
		per = max(1, n/4)
	}
	rate := opts.MinRate
	if rate <= 0 {
		rate = DefaultMinRate
	}
	maxPut := opts.MaxPutBytes
	if maxPut <= 0 {
		maxPut = DefaultMaxPutBytes
	}
	putWait := opts.PutWait
	if putWait <= 0 {
		putWait = DefaultPutWait
	}
	return &Handler{
		store:     store,
		opts:      opts,
		log:       logger(opts.Logger),
		slots:     make(chan struct{}, n),
		perClient: min(per, n),
		rate:      rate,
		putBytes:  semaphore.NewWeighted(maxPut),
		maxPut:    maxPut,
		putWait:   putWait,
		clients:   make(map[string]*clientSlots),
		requests:  make(map[requestKey]uint64),
	}
}

// ioTime is how long a read or write of n bytes may take: ioGrace plus
// n bytes at the minimum rate.
func (h *Handler) ioTime(n int) time.Duration {
	return ioGrace + time.Duration(n)*time.Second/time.Duration(h.rate)
}

// statusWriter records what a handler answered, for the log and metrics,
// and writes the body in pieces, each under a write deadline of its own:
// a client that keeps reading at the minimum rate never times out, and
// one that stops is cut off within ioTime(ioPiece) of its buffers
// filling.
type statusWriter struct {
	http.ResponseWriter
	h      *Handler
	rc     *http.ResponseController
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	var n int
	for n < len(b) {
		p := b[n:min(len(b), n+ioPiece)]
		// ErrNotSupported (a ResponseRecorder) leaves no deadline to set.
		_ = w.rc.SetWriteDeadline(time.Now().Add(w.h.ioTime(len(p))))
		m, err := w.ResponseWriter.Write(p)
		n += m
		w.bytes += int64(m)
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rc := http.NewResponseController(rw)
	w := &statusWriter{ResponseWriter: rw, h: h, rc: rc}
	if r.Method != http.MethodPut && r.ContentLength != 0 {
		// The server discards a body nobody reads after the answer:
		// under a deadline too.
		_ = rc.SetReadDeadline(time.Now().Add(h.ioTime(ioPiece)))
	}
	h.inFlight.Add(1)
	h.serve(w, r)
	h.inFlight.Add(-1)
	// What the answer left buffered is flushed after ServeHTTP returns.
	_ = rc.SetWriteDeadline(time.Now().Add(h.ioTime(ioPiece)))
	if w.status == 0 {
		w.status = http.StatusOK
	}
	h.sentBytes.Add(uint64(w.bytes))
	method := r.Method
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPut, http.MethodPost:
	default:
		method = "other"
	}
	h.mu.Lock()
	h.requests[requestKey{method, w.status}]++
	h.mu.Unlock()
	h.log.Debug("http request", "method", r.Method, "path", r.URL.EscapedPath(), "status", w.status,
		"bytes", w.bytes, "duration", time.Since(start), "remote", r.RemoteAddr)
}

func (h *Handler) serve(w *statusWriter, r *http.Request) {
	// Every answer says the server reads in batches: a client learns it
	// from its first reply.
	w.Header().Set(BatchHeader, "batch")
	if r.URL.Path == batchPath && r.URL.RawPath == "" {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h.batch(w, r)
		return
	}
	if r.URL.Path == "/metrics" && r.URL.RawPath == "" {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		h.WriteMetrics(w)
		return
	}
	// Escapes are never needed in a chunk path, so a RawPath (set only
	// when the escaped form differs from the default) is refused too:
	// "/%2e%2e/x" never gets as far as a file name.
	if r.URL.RawPath != "" || len(r.URL.Path) == 0 || r.URL.Path[0] != '/' {
		http.Error(w, "bad chunk path: want /<4 hex>/<64 hex>.cacnk", http.StatusBadRequest)
		return
	}
	id, err := ParseChunkPath(r.URL.Path[1:])
	if err != nil {
		http.Error(w, "bad chunk path: want /<4 hex>/<64 hex>.cacnk", http.StatusBadRequest)
		return
	}
	switch r.Method {
	case http.MethodGet:
		h.get(w, r, id)
	case http.MethodHead:
		h.head(w, r, id)
	case http.MethodPut:
		if h.authorized(w, r) {
			h.put(w, r, id)
		}
	default:
		w.Header().Set("Allow", "GET, HEAD, PUT")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

// acquire takes one of the slots of the request's client and then one of
// the server's, waiting for each as long as the request lives. When the
// client gives up first it answers 503 and returns ok == false.
func (h *Handler) acquire(w http.ResponseWriter, r *http.Request) (release func(), ok bool) {
	release, ok = h.take(r)
	if !ok {
		// The client went away; nobody reads the answer.
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	return release, ok
}

// take takes the slots as acquire does, and reports ok == false, having
// taken none, when the client gives up first.
func (h *Handler) take(r *http.Request) (release func(), ok bool) {
	key := clientKey(r.RemoteAddr)
	h.clientsMu.Lock()
	c := h.clients[key]
	if c == nil {
		c = &clientSlots{sem: make(chan struct{}, h.perClient)}
		h.clients[key] = c
	}
	c.refs++
	h.clientsMu.Unlock()
	leave := func() {
		h.clientsMu.Lock()
		if c.refs--; c.refs == 0 {
			delete(h.clients, key)
		}
		h.clientsMu.Unlock()
	}
	done := r.Context().Done()
	select {
	case c.sem <- struct{}{}:
		select {
		case h.slots <- struct{}{}:
			return func() { <-h.slots; <-c.sem; leave() }, true
		case <-done:
			<-c.sem
		}
	case <-done:
	}
	leave()
	return nil, false
}

// clientKey is the address a request's slots are counted under: the
// remote IP, so that one host's connections share one share.
func clientKey(remote string) string {
	if host, _, err := net.SplitHostPort(remote); err == nil {
		return host
	}
	return remote
}

// get answers a GET. Its slot covers reading and verifying the chunk
// only: the answer is sent without one, paced by statusWriter.
func (h *Handler) get(w http.ResponseWriter, r *http.Request, id casync.ChunkID) {
	release, ok := h.acquire(w, r)
	if !ok {
		return
	}
	frame, err := h.frame(r.Context(), id)
	release()
	if err != nil {
		h.fail(w, r, id, err)
		return
	}
	chunkHeaders(w.Header(), id)
	w.Header().Set("Content-Length", strconv.Itoa(len(frame)))
	w.WriteHeader(http.StatusOK)
	w.Write(frame)
}

// batch answers a batch read (see batchwire.go): it reads the IDs, then
// for each chunk takes a slot, reads and verifies the chunk, gives the
// slot back and sends the chunk's record, paced by statusWriter, as a GET
// would. A batch thus holds at most one slot at a time. The reply stops
// after about BatchBytes of frames; the client asks again for the rest.
func (h *Handler) batch(w *statusWriter, r *http.Request) {
	if r.ContentLength > batchMaxRequest {
		http.Error(w, fmt.Sprintf("a batch asks for at most %d chunks (%d bytes of IDs)", BatchChunks, batchMaxRequest), http.StatusRequestEntityTooLarge)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, batchMaxRequest))
	// No deadline while the chunks are read and sent: one expiring under
	// the server's background read would cancel the request's context.
	// The write deadlines pace the reply.
	_ = w.rc.SetReadDeadline(time.Time{})
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			http.Error(w, fmt.Sprintf("a batch asks for at most %d chunks (%d bytes of IDs)", BatchChunks, batchMaxRequest), http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "read request body: "+err.Error(), http.StatusBadRequest)
		return
	}
	ids, err := parseBatchRequest(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/vnd.bootfs.chunk-batch")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	var head []byte
	sent, records := 0, 0
	for _, id := range ids {
		if sent >= BatchBytes {
			break
		}
		release, ok := h.take(r)
		if !ok {
			return
		}
		frame, err := h.frame(r.Context(), id)
		release()
		status, payload := byte(batchFound), frame
		switch {
		case err == nil:
		case r.Context().Err() != nil:
			return // the client went away
		case errors.Is(err, ErrNotFound):
			status, payload = batchMissing, nil
		default:
			status, payload = batchFailed, []byte(h.failure(id, err))
		}
		h.batchChunks.Add(1)
		head = appendBatchRecord(head[:0], id, status, len(payload))
		if _, err := w.Write(head); err != nil {
			return
		}
		if _, err := w.Write(payload); err != nil {
			return
		}
		_ = w.rc.Flush()
		sent += len(payload)
		records++
	}
	w.Write(appendBatchEnd(head[:0], records))
}

// failure logs why the chunk id could not be served in a batch, as fail
// does for a GET, and returns what the client is told.
func (h *Handler) failure(id casync.ChunkID, err error) string {
	switch {
	case isCorrupt(err):
		h.corrupt.Add(1)
		h.log.Error("refusing to serve corrupt chunk", "id", id, "err", err)
		return "the chunk is corrupt on the server"
	case errors.Is(err, ErrNotRegular):
		h.log.Error("refusing to serve a chunk path that is not a regular file", "id", id, "err", err)
		return "the chunk is not a regular file on the server (its operator should run chunkstore verify --repair)"
	}
	h.log.Error("chunk request failed", "method", "POST", "id", id, "err", err)
	return "internal server error"
}

// frame is the verified frame of id, as stored when the store is a
// FrameStore.
func (h *Handler) frame(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	if fs, ok := h.store.(FrameStore); ok {
		return fs.GetFrame(ctx, id)
	}
	data, err := h.store.GetChunk(ctx, id)
	if err != nil {
		return nil, err
	}
	return casync.CompressChunk(nil, data), nil
}

func (h *Handler) head(w http.ResponseWriter, r *http.Request, id casync.ChunkID) {
	release, ok := h.acquire(w, r)
	if !ok {
		return
	}
	has, err := h.store.HasChunk(r.Context(), id)
	release()
	switch {
	case err != nil:
		h.fail(w, r, id, err)
	case has:
		// GET's headers, but Content-Length: HasChunk does not read
		// the frame, and a HEAD answered without one is still valid.
		chunkHeaders(w.Header(), id)
		w.WriteHeader(http.StatusOK)
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}

// chunkHeaders sets the headers of a chunk that GET and HEAD share.
func chunkHeaders(hdr http.Header, id casync.ChunkID) {
	hdr.Set("Content-Type", "application/octet-stream")
	// A chunk never changes: its name is its content.
	hdr.Set("Cache-Control", "public, max-age=31536000, immutable")
	hdr.Set("ETag", `"`+id.String()+`"`)
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, id casync.ChunkID, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		http.Error(w, "chunk "+id.String()+" not found", http.StatusNotFound)
	case isCorrupt(err):
		h.corrupt.Add(1)
		h.log.Error("refusing to serve corrupt chunk", "id", id, "err", err)
		http.Error(w, "chunk "+id.String()+" is corrupt on the server", http.StatusInternalServerError)
	case errors.Is(err, ErrNotRegular):
		h.log.Error("refusing to serve a chunk path that is not a regular file", "id", id, "err", err)
		http.Error(w, "chunk "+id.String()+" is not a regular file on the server (its operator should run chunkstore verify --repair)", http.StatusInternalServerError)
	case r.Context().Err() != nil:
		// The client went away; nobody reads the answer.
		w.WriteHeader(http.StatusServiceUnavailable)
	default:
		h.log.Error("chunk request failed", "method", r.Method, "id", id, "err", err)
		http.Error(w, "internal server error", http.StatusInternalServerError)
	}
}

// authorized checks the bearer token of a write in constant time, and
// answers the request itself when it fails.
func (h *Handler) authorized(w http.ResponseWriter, r *http.Request) bool {
	if h.opts.WriteToken == "" {
		http.Error(w, "this chunk server does not accept writes (start it with --write-token-file)", http.StatusForbidden)
		return false
	}
	want := []byte("Bearer " + h.opts.WriteToken)
	if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="chunkstore"`)
		http.Error(w, "writes need the bearer token", http.StatusUnauthorized)
		return false
	}
	return true
}

// put answers a PUT. The body is read under MaxPutBytes, then a slot
// covers verifying and storing it.
func (h *Handler) put(w *statusWriter, r *http.Request, id casync.ChunkID) {
	ws, ok := h.store.(WriteStore)
	if !ok {
		http.Error(w, "this chunk store is read-only", http.StatusForbidden)
		return
	}
	if r.ContentLength > maxFrameSize {
		http.Error(w, fmt.Sprintf("chunk frame of %d bytes is larger than any chunk (at most %d bytes)", r.ContentLength, maxFrameSize), http.StatusRequestEntityTooLarge)
		return
	}
	weight := r.ContentLength
	if weight < 0 {
		weight = maxFrameSize
	}
	weight = min(weight, h.maxPut)
	wctx, cancel := context.WithTimeout(r.Context(), h.putWait)
	err := h.putBytes.Acquire(wctx, weight)
	cancel()
	if err != nil {
		if r.Context().Err() != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Retry-After", "1")
		http.Error(w, "server busy: too many chunk uploads in flight; retry later", http.StatusServiceUnavailable)
		return
	}
	defer h.putBytes.Release(weight)
	frame, err := h.readBody(w, r)
	// No deadline while the chunk is stored: one expiring under the
	// server's background read would cancel the request's context.
	_ = w.rc.SetReadDeadline(time.Time{})
	h.receivedBytes.Add(uint64(len(frame)))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			http.Error(w, fmt.Sprintf("chunk frame larger than any chunk (at most %d bytes)", maxFrameSize), http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "read request body: "+err.Error(), http.StatusBadRequest)
		return
	}
	release, ok := h.acquire(w, r)
	if !ok {
		return
	}
	err = StoreFrame(r.Context(), ws, casync.SHA512_256, id, frame)
	release()
	var tooLarge *ChunkSizeError
	switch {
	case err == nil:
		w.WriteHeader(http.StatusCreated)
	case errors.As(err, &tooLarge):
		http.Error(w, tooLarge.Error(), http.StatusRequestEntityTooLarge)
	case isCorrupt(err):
		h.corrupt.Add(1)
		http.Error(w, "chunk frame does not match its id "+id.String(), http.StatusBadRequest)
	case errors.Is(err, syscall.EROFS), errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, fs.ErrPermission):
		// The writer can do nothing about it, but should know.
		h.log.Error("cannot store chunk", "id", id, "err", err)
		http.Error(w, "the server cannot write to its store: "+errnoText(err), http.StatusInsufficientStorage)
	default:
		h.fail(w, r, id, err)
	}
}

// readBody reads a PUT body of at most maxFrameSize bytes, a piece at a
// time, each under a read deadline of its own (see MinRate).
func (h *Handler) readBody(w *statusWriter, r *http.Request) ([]byte, error) {
	deadline := func(n int) { _ = w.rc.SetReadDeadline(time.Now().Add(h.ioTime(n))) }
	if r.ContentLength >= 0 {
		buf := make([]byte, r.ContentLength)
		for n := 0; n < len(buf); {
			p := min(len(buf)-n, ioPiece)
			deadline(p)
			m, err := io.ReadFull(r.Body, buf[n:n+p])
			n += m
			if err != nil {
				return buf[:n], err
			}
		}
		return buf, nil
	}
	body := http.MaxBytesReader(w, r.Body, maxFrameSize)
	var buf []byte
	for {
		buf = slices.Grow(buf, ioPiece)
		deadline(ioPiece)
		m, err := body.Read(buf[len(buf) : len(buf)+ioPiece])
		buf = buf[:len(buf)+m]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// errnoText is the system error under err, such as "read-only file
// system", without the server's paths.
func errnoText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return "permission denied"
}

// WriteMetrics writes the handler's and the store's counters in
// Prometheus text exposition format.
func (h *Handler) WriteMetrics(w io.Writer) {
	h.mu.Lock()
	keys := make([]requestKey, 0, len(h.requests))
	for k := range h.requests {
		keys = append(keys, k)
	}
	counts := make(map[requestKey]uint64, len(keys))
	for _, k := range keys {
		counts[k] = h.requests[k]
	}
	h.mu.Unlock()
	slices.SortFunc(keys, func(a, b requestKey) int {
		if a.method != b.method {
			if a.method < b.method {
				return -1
			}
			return 1
		}
		return a.code - b.code
	})
	metric := func(name, typ, help string) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	metric("bootfs_chunkstore_http_requests_total", "counter", "HTTP requests by method and status code.")
	for _, k := range keys {
		fmt.Fprintf(w, "bootfs_chunkstore_http_requests_total{method=%q,code=\"%d\"} %d\n", k.method, k.code, counts[k])
	}
	metric("bootfs_chunkstore_http_in_flight", "gauge", "HTTP requests being handled.")
	fmt.Fprintf(w, "bootfs_chunkstore_http_in_flight %d\n", h.inFlight.Load())
	metric("bootfs_chunkstore_http_sent_bytes_total", "counter", "Response body bytes sent.")
	fmt.Fprintf(w, "bootfs_chunkstore_http_sent_bytes_total %d\n", h.sentBytes.Load())
	metric("bootfs_chunkstore_http_received_bytes_total", "counter", "PUT body bytes received.")
	fmt.Fprintf(w, "bootfs_chunkstore_http_received_bytes_total %d\n", h.receivedBytes.Load())
	metric("bootfs_chunkstore_http_batch_chunks_total", "counter", "Chunks answered in batch reads (POST /batch).")
	fmt.Fprintf(w, "bootfs_chunkstore_http_batch_chunks_total %d\n", h.batchChunks.Load())
	metric("bootfs_chunkstore_http_corrupt_chunks_total", "counter", "Chunks refused because they failed verification.")
	fmt.Fprintf(w, "bootfs_chunkstore_http_corrupt_chunks_total %d\n", h.corrupt.Load())
	if sr, ok := h.store.(StatsReporter); ok {
		WriteStatsMetrics(w, "bootfs_chunkstore_store", sr.Stats())
	}
}

// WriteStatsMetrics writes st in Prometheus text format, each counter
// named prefix + "_" + its name + "_total".
func WriteStatsMetrics(w io.Writer, prefix string, st Stats) {
	for _, m := range []struct {
		name, help string
		v          uint64
	}{
		{"requests", "Store operations.", st.Requests},
		{"batches", "Batch reads (each of whose chunks is a request too).", st.Batches},
		{"hits", "Chunks found.", st.Hits},
		{"misses", "Chunks not found.", st.Misses},
		{"bytes", "Uncompressed chunk bytes read or written.", st.Bytes},
		{"wire_bytes", "Compressed frame bytes read or written.", st.WireBytes},
		{"errors", "Failed operations.", st.Errors},
		{"retries", "Retried attempts.", st.Retries},
		{"corrupt", "Chunks that failed verification.", st.Corrupt},
	} {
		name := prefix + "_" + m.name + "_total"
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n%s %d\n", name, m.help, name, name, m.v)
	}
}

// ServerOptions configure Serve and ListenAndServe.
type ServerOptions struct {
	HandlerOptions
	// TLSCert and TLSKey name PEM files; with both set the server speaks
	// HTTPS, and HTTP/2 over it.
	TLSCert, TLSKey string
	// MaxConns bounds the open connections, and MaxConnsPerClient those
	// from one client address; a connection over either is closed at
	// once (after a 503 over plain HTTP). Zero means DefaultMaxConns and
	// DefaultMaxConnsPerClient.
	MaxConns, MaxConnsPerClient int
}

// ListenAndServe listens on addr and serves store until ctx is done.
func ListenAndServe(ctx context.Context, addr string, store Store, opts ServerOptions) error {
	if (opts.TLSCert == "") != (opts.TLSKey == "") {
		return errors.New("serve chunk store: TLS needs both a certificate and a key")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("serve chunk store: %w", err)
	}
	return Serve(ctx, ln, store, opts)
}

// Serve serves store on ln until ctx is done, then shuts down gracefully,
// giving requests in flight up to 5 seconds. It closes ln.
//
// Besides the handler's limits (HandlerOptions), request headers must
// arrive within 10 seconds and an idle connection is closed after 2
// minutes. There is no overall deadline on a request: the handler's
// per-piece deadlines (MinRate) bound how slowly a body may move, so a
// large chunk over a slow but steady link still gets through.
func Serve(ctx context.Context, ln net.Listener, store Store, opts ServerOptions) error {
	log := logger(opts.Logger)
	tls := opts.TLSCert != "" || opts.TLSKey != ""
	srv := &http.Server{
		Handler:           NewHTTPHandler(store, opts.HandlerOptions),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// Each stream holds a frame while it is sent: bound them per
		// connection as HTTP/1.1 does with one request at a time.
		HTTP2:       &http.HTTP2Config{MaxConcurrentStreams: 16},
		ErrorLog:    slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	ln = newLimitListener(ln, opts.MaxConns, opts.MaxConnsPerClient, !tls, log)
	errc := make(chan error, 1)
	scheme := "http"
	go func() {
		if tls {
			errc <- srv.ServeTLS(ln, opts.TLSCert, opts.TLSKey)
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	if tls {
		scheme = "https"
	}
	log.Info("serving chunk store over HTTP", "url", scheme+"://"+ln.Addr().String(), "writable", opts.WriteToken != "")
	select {
	case err := <-errc:
		return fmt.Errorf("serve chunk store: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
		return fmt.Errorf("shut down chunk server: %w", err)
	}
	return nil
}

// limitListener closes the connections over its limits as it accepts
// them. x/net/netutil's LimitListener bounds only the total, and does it
// by not accepting, which leaves every new client waiting behind one
// host's connections.
type limitListener struct {
	net.Listener
	max, perClient int
	refuse         []byte // the answer to a refused connection, if any
	log            *slog.Logger

	mu      sync.Mutex
	total   int
	clients map[string]int
}

func newLimitListener(ln net.Listener, max, perClient int, plainHTTP bool, log *slog.Logger) *limitListener {
	if max <= 0 {
		max = DefaultMaxConns
	}
	if perClient <= 0 {
		perClient = DefaultMaxConnsPerClient
	}
	l := &limitListener{Listener: ln, max: max, perClient: min(perClient, max), log: log, clients: make(map[string]int)}
	if plainHTTP {
		const msg = "too many connections to this chunk server; retry later\n"
		l.refuse = fmt.Appendf(nil, "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"+
			"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s", len(msg), msg)
	}
	return l
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key := clientKey(c.RemoteAddr().String())
		l.mu.Lock()
		ok := l.total < l.max && l.clients[key] < l.perClient
		if ok {
			l.total++
			l.clients[key]++
		}
		l.mu.Unlock()
		if ok {
			return &limitConn{Conn: c, l: l, key: key}, nil
		}
		l.log.Debug("refusing connection over the limits", "remote", c.RemoteAddr().String(), "max", l.max, "per_client", l.perClient)
		if l.refuse != nil {
			c.SetWriteDeadline(time.Now().Add(time.Second))
			c.Write(l.refuse)
		}
		c.Close()
	}
}

type limitConn struct {
	net.Conn
	l    *limitListener
	key  string
	once sync.Once
}

// CloseWrite lets the server half-close as it does a TCP connection.
func (c *limitConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.total--
		if c.l.clients[c.key]--; c.l.clients[c.key] == 0 {
			delete(c.l.clients, c.key)
		}
		c.l.mu.Unlock()
	})
	return err
}
