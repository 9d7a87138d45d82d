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

	"github.com/bootfs/bootfs/casync"
)

// HandlerOptions configure the HTTP chunk-store handler. The zero value
// serves reads only.
type HandlerOptions struct {
	// WriteToken enables PUT for requests that carry
	// "Authorization: Bearer <WriteToken>". Without it, PUT answers 403.
	WriteToken string
	// MaxConcurrent bounds the chunk requests handled at once; the rest
	// wait. Zero means 16 per CPU.
	MaxConcurrent int
	// Logger receives a debug line per request and an error line for each
	// corrupt chunk; nil discards them.
	Logger *slog.Logger
}

// Handler serves a store over HTTP in casync's layout:
//
//	GET  /<4 hex>/<64 hex>.cacnk   200 with the zstd frame, 404, or 400
//	HEAD /<4 hex>/<64 hex>.cacnk   200, 404, or 400
//	PUT  /<4 hex>/<64 hex>.cacnk   201; 400 for a frame that is not the id;
//	                               401 without the write token
//	GET  /metrics                  counters in Prometheus text format
//
// Any other path is a 400: the handler maps a request to a chunk ID and
// never to a file name, so nothing outside the store can be reached.
// Every chunk is verified before it is served (a corrupt one is a 500 and
// an error in the log, never its bytes) and before it is stored. Frames
// are served as stored, not recompressed, when the store is a FrameStore.
type Handler struct {
	store Store
	opts  HandlerOptions
	log   *slog.Logger
	sem   chan struct{}

	inFlight                 atomic.Int64
	sentBytes, receivedBytes atomic.Uint64
	corrupt                  atomic.Uint64
	mu                       sync.Mutex
	requests                 map[requestKey]uint64
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
	return &Handler{
		store:    store,
		opts:     opts,
		log:      logger(opts.Logger),
		sem:      make(chan struct{}, n),
		requests: make(map[requestKey]uint64),
	}
}

// statusWriter records what a handler answered, for the log and metrics.
type statusWriter struct {
	http.ResponseWriter
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
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	start := time.Now()
	w := &statusWriter{ResponseWriter: rw}
	h.inFlight.Add(1)
	h.serve(w, r)
	h.inFlight.Add(-1)
	if w.status == 0 {
		w.status = http.StatusOK
	}
	h.sentBytes.Add(uint64(w.bytes))
	method := r.Method
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPut:
	default:
		method = "other"
	}
	h.mu.Lock()
	h.requests[requestKey{method, w.status}]++
	h.mu.Unlock()
	h.log.Debug("http request", "method", r.Method, "path", r.URL.EscapedPath(), "status", w.status,
		"bytes", w.bytes, "duration", time.Since(start), "remote", r.RemoteAddr)
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request) {
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
	case http.MethodGet, http.MethodHead, http.MethodPut:
	default:
		w.Header().Set("Allow", "GET, HEAD, PUT")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if r.Method == http.MethodPut && !h.authorized(w, r) {
		return
	}
	select {
	case h.sem <- struct{}{}:
		defer func() { <-h.sem }()
	case <-r.Context().Done():
		http.Error(w, "server busy", http.StatusServiceUnavailable)
		return
	}
	switch r.Method {
	case http.MethodGet:
		h.get(w, r, id)
	case http.MethodHead:
		h.head(w, r, id)
	case http.MethodPut:
		h.put(w, r, id)
	}
}

func (h *Handler) get(w http.ResponseWriter, r *http.Request, id casync.ChunkID) {
	var frame []byte
	var err error
	if fs, ok := h.store.(FrameStore); ok {
		frame, err = fs.GetFrame(r.Context(), id)
	} else {
		var data []byte
		if data, err = h.store.GetChunk(r.Context(), id); err == nil {
			frame = casync.CompressChunk(nil, data)
		}
	}
	if err != nil {
		h.fail(w, r, id, err)
		return
	}
	chunkHeaders(w.Header(), id)
	w.Header().Set("Content-Length", strconv.Itoa(len(frame)))
	w.WriteHeader(http.StatusOK)
	w.Write(frame)
}

func (h *Handler) head(w http.ResponseWriter, r *http.Request, id casync.ChunkID) {
	ok, err := h.store.HasChunk(r.Context(), id)
	switch {
	case err != nil:
		h.fail(w, r, id, err)
	case ok:
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

func (h *Handler) put(w http.ResponseWriter, r *http.Request, id casync.ChunkID) {
	ws, ok := h.store.(WriteStore)
	if !ok {
		http.Error(w, "this chunk store is read-only", http.StatusForbidden)
		return
	}
	if r.ContentLength > maxFrameSize {
		http.Error(w, "chunk frame too large", http.StatusRequestEntityTooLarge)
		return
	}
	frame, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxFrameSize))
	h.receivedBytes.Add(uint64(len(frame)))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			http.Error(w, "chunk frame too large", http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "read request body: "+err.Error(), http.StatusBadRequest)
		return
	}
	err = StoreFrame(r.Context(), ws, casync.SHA512_256, id, frame)
	switch {
	case err == nil:
		w.WriteHeader(http.StatusCreated)
	case isCorrupt(err):
		http.Error(w, "chunk frame does not match its id "+id.String(), http.StatusBadRequest)
	case errors.Is(err, syscall.EROFS), errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, fs.ErrPermission):
		// The writer can do nothing about it, but should know.
		h.log.Error("cannot store chunk", "id", id, "err", err)
		http.Error(w, "the server cannot write to its store: "+errnoText(err), http.StatusInsufficientStorage)
	default:
		h.fail(w, r, id, err)
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
func Serve(ctx context.Context, ln net.Listener, store Store, opts ServerOptions) error {
	log := logger(opts.Logger)
	srv := &http.Server{
		Handler:           NewHTTPHandler(store, opts.HandlerOptions),
		ReadHeaderTimeout: 10 * time.Second,
		// A chunk is at most 16 MiB: minutes are plenty, and they keep
		// a stalled client from holding a slot for ever.
		ReadTimeout:  5 * time.Minute,
		WriteTimeout: 5 * time.Minute,
		IdleTimeout:  2 * time.Minute,
		ErrorLog:     slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		BaseContext:  func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	errc := make(chan error, 1)
	scheme := "http"
	go func() {
		if opts.TLSCert != "" || opts.TLSKey != "" {
			errc <- srv.ServeTLS(ln, opts.TLSCert, opts.TLSKey)
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	if opts.TLSCert != "" {
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
