package chunkstore

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/bootfs/bootfs/casync"
)

// HTTPOptions configure an HTTP store client. The zero value works.
type HTTPOptions struct {
	// Digest is the hash that chunk IDs are checked against.
	Digest casync.Digest
	// MaxConns is how many idle connections to the server are kept for
	// reuse; it should match the number of parallel requests. Zero means 32.
	MaxConns int
	// Token, if set, is sent as "Authorization: Bearer <token>". The
	// chunkstore server needs it for PUT.
	Token string
	// CAFile names a PEM file of CA certificates trusted for https, in
	// addition to the system's.
	CAFile string
	// Transport replaces the tuned transport NewHTTP builds. Tests use it;
	// CAFile and MaxConns then have no effect.
	Transport http.RoundTripper
	// TrustWrites skips the client-side check that a chunk hashes to its
	// ID before it is sent; see LocalOptions.TrustWrites. The server
	// still verifies what it receives.
	TrustWrites bool
}

const defaultHTTPMaxConns = 32

// HTTP is a client of an HTTP chunk store: GET, HEAD and PUT of
// <base>/<first 4 hex>/<64 hex>.cacnk, the layout that casync, desync and
// the chunkstore server use. Every chunk it returns has been verified.
//
// Each call is one request. Retry repeats the ones that may succeed when
// tried again (a transport error, a truncated body, a 5xx or 429 answer)
// and bounds each with a timeout; the others (a 404, any other 4xx, a
// corrupt chunk, an untrusted certificate) are marked Permanent.
type HTTP struct {
	base   string // no trailing slash
	opts   HTTPOptions
	client *http.Client
	// batch is what the server's last reply said of batch reads:
	// batchUnknown before the first, then batchYes or batchNo.
	batch atomic.Int32
}

// What an HTTP client knows of its server's batch reads.
const (
	batchUnknown = iota
	batchYes
	batchNo
)

var (
	_ FrameWriteStore = (*HTTP)(nil)
	_ BatchGetter     = (*HTTP)(nil)
)

// NewHTTP returns a client of the store at baseURL, an http:// or https://
// URL.
func NewHTTP(baseURL string, opts HTTPOptions) (*HTTP, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadURL, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%w: %q: want http://host[:port][/path] or https://…", ErrBadURL, baseURL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%w: %q: a store URL has no query or fragment", ErrBadURL, baseURL)
	}
	s := &HTTP{base: strings.TrimRight(u.String(), "/"), opts: opts}
	rt := opts.Transport
	if rt == nil {
		t, err := newTransport(opts)
		if err != nil {
			return nil, err
		}
		rt = t
	}
	s.client = &http.Client{
		Transport: rt,
		// A chunk store never redirects; following one would hide a
		// misconfigured base URL.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return s, nil
}

func newTransport(opts HTTPOptions) (*http.Transport, error) {
	maxConns := opts.MaxConns
	if maxConns <= 0 {
		maxConns = defaultHTTPMaxConns
	}
	t := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          maxConns * 2,
		MaxIdleConnsPerHost:   maxConns,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		// Chunks are zstd frames already; asking for gzip would only
		// cost CPU.
		DisableCompression: true,
	}
	if opts.CAFile != "" {
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file for the HTTP chunk store: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("read CA file %s: no PEM certificates in it", opts.CAFile)
		}
		t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return t, nil
}

// URL returns the URL of id's chunk file.
func (s *HTTP) URL(id casync.ChunkID) string { return s.base + "/" + ChunkPath(id) }

// String returns the store's base URL.
func (s *HTTP) String() string { return s.base }

// GetChunk downloads, decompresses and verifies the chunk.
func (s *HTTP) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	frame, err := s.get(ctx, id)
	if err != nil {
		return nil, err
	}
	data, err := decodeFrame(nil, s.opts.Digest, id, frame)
	if err != nil {
		return nil, s.corrupt(id, err)
	}
	return data, nil
}

// GetFrame downloads and verifies the chunk's frame.
func (s *HTTP) GetFrame(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	frame, err := s.get(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := VerifyFrame(s.opts.Digest, id, frame); err != nil {
		return nil, s.corrupt(id, err)
	}
	return frame, nil
}

func (s *HTTP) corrupt(id casync.ChunkID, err error) error {
	return fmt.Errorf("fetch chunk from %s: %w (the server's copy is bad: run chunkstore verify --repair on it)", s.URL(id), err)
}

func (s *HTTP) get(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	res, err := s.do(ctx, http.MethodGet, id, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch chunk %s from %s: %w", id, s.base, err)
	}
	switch res.status {
	case http.StatusOK:
		return res.body, nil
	case http.StatusNotFound, http.StatusGone:
		return nil, fmt.Errorf("fetch chunk %s from %s: %s: %w (is the chunk store the one mkimage wrote to?)", id, s.base, res.statusText(), ErrNotFound)
	}
	return nil, res.err(fmt.Errorf("fetch chunk %s from %s: %s%s", id, s.base, res.statusText(), hint(res.status, false)))
}

// GetChunks gets the chunks in batch reads (POST /batch) from a server
// that said it has them (BatchHeader, in any earlier reply), and else with
// up to MaxConns GETs at once, which every casync or desync store
// answers; before the first reply it GETs the first chunk alone, and
// learns from the answer. Each chunk is verified against its ID, and
// passed on with its frame as the server sent it. A batch reply that
// breaks off or breaks the protocol fails the chunks it has not answered
// with an error that Retry retries; a frame that is not its chunk fails
// that chunk alone, as a GET of it would.
func (s *HTTP) GetChunks(ctx context.Context, ids []casync.ChunkID, fn func(Got)) {
	// Each ID is asked for once; every index of it gets the answer.
	var uniq []casync.ChunkID
	var at [][]int
	seen := make(map[casync.ChunkID]int, len(ids))
	for i, id := range ids {
		k, ok := seen[id]
		if !ok {
			k = len(uniq)
			seen[id] = k
			uniq = append(uniq, id)
			at = append(at, nil)
		}
		at[k] = append(at[k], i)
	}
	deliver := func(k int, g Got) {
		for _, i := range at[k] {
			g.Index = i
			fn(g)
		}
	}
	if err := ctx.Err(); err != nil {
		for k, id := range uniq {
			deliver(k, Got{Err: fmt.Errorf("fetch chunk %s from %s: %w", id, s.base, err)})
		}
		return
	}
	first := 0
	if s.batch.Load() == batchUnknown && len(uniq) > 0 {
		deliver(0, s.getGot(ctx, uniq[0]))
		first = 1
	}
	for start := first; start < len(uniq); start += BatchChunks {
		end := min(start+BatchChunks, len(uniq))
		s.getRun(ctx, uniq[start:end], func(k int, g Got) { deliver(start+k, g) })
	}
}

// getRun gets ids (at most BatchChunks, no repeats) in batch reads if the
// server has them, else one GET each.
func (s *HTTP) getRun(ctx context.Context, ids []casync.ChunkID, deliver func(int, Got)) {
	done := make([]bool, len(ids))
	mark := func(k int, g Got) {
		done[k] = true
		deliver(k, g)
	}
	for s.batch.Load() == batchYes {
		var ask []int // positions in ids not yet answered
		for k, ok := range done {
			if !ok {
				ask = append(ask, k)
			}
		}
		if len(ask) == 0 {
			return
		}
		sub := make([]casync.ChunkID, len(ask))
		for j, k := range ask {
			sub[j] = ids[k]
		}
		n, err := s.postBatch(ctx, sub, func(j int, g Got) { mark(ask[j], g) })
		if errors.Is(err, errNoBatch) {
			break // the server has no batch reads after all: GET the rest
		}
		if err == nil && n == 0 {
			err = fmt.Errorf("%w: the reply answered none of the %d chunks asked for", ErrBadBatch, len(sub))
		}
		if err != nil {
			for j, k := range ask {
				if !done[k] {
					mark(k, Got{Err: fmt.Errorf("fetch chunk %s from %s in a batch: %w", sub[j], s.base, err)})
				}
			}
			return
		}
		// A reply that stopped short (the server bounds a reply's bytes)
		// but answered some: ask for the rest.
	}
	var rest []int
	for k, ok := range done {
		if !ok {
			rest = append(rest, k)
		}
	}
	var mu sync.Mutex
	g := new(errgroup.Group)
	g.SetLimit(s.parallel())
	for _, k := range rest {
		g.Go(func() error {
			got := s.getGot(ctx, ids[k])
			mu.Lock()
			defer mu.Unlock()
			mark(k, got)
			return nil
		})
	}
	g.Wait()
}

// parallel is how many GETs a batch read has in flight at once.
func (s *HTTP) parallel() int {
	if s.opts.MaxConns > 0 {
		return s.opts.MaxConns
	}
	return defaultHTTPMaxConns
}

// getGot GETs one chunk as GetChunks passes it on.
func (s *HTTP) getGot(ctx context.Context, id casync.ChunkID) Got {
	frame, err := s.get(ctx, id)
	if err != nil {
		return Got{Err: err}
	}
	data, err := decodeFrame(nil, s.opts.Digest, id, frame)
	if err != nil {
		return Got{Err: s.corrupt(id, err)}
	}
	return Got{Data: data, Frame: frame}
}

// errNoBatch is postBatch's error when the server answers that it has no
// batch reads.
var errNoBatch = errors.New("the server has no batch reads")

// postBatch sends one batch read of ids and passes each chunk the reply
// answers to deliver, with its position in ids. It returns how many the
// reply answered and, if it broke off, why; the chunks it did not answer
// are the caller's.
func (s *HTTP) postBatch(ctx context.Context, ids []casync.ChunkID, deliver func(int, Got)) (int, error) {
	body := appendBatchRequest(make([]byte, 0, 32*len(ids)), ids)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.base+batchPath, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if s.opts.Token != "" {
		req.Header.Set("Authorization", "Bearer "+s.opts.Token)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		switch {
		case untrusted(err):
			return 0, Permanent(fmt.Errorf("POST: %w (the server's certificate is not trusted here; give its CA certificate with mkimage --ca-file, boot mount --ca-file or BOOTFS_CA_FILE)", err))
		case ctx.Err() != nil:
			return 0, ctx.Err()
		}
		return 0, fmt.Errorf("POST: %w (is the chunk server running and reachable?)", err)
	}
	defer resp.Body.Close()
	s.learn(resp.Header)
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		res := response{status: resp.StatusCode, msg: strings.TrimSpace(strings.ToValidUTF8(string(msg), "?"))}
		if i := strings.IndexByte(res.msg, '\n'); i >= 0 {
			res.msg = res.msg[:i]
		}
		switch resp.StatusCode {
		case http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusNotImplemented:
			s.batch.Store(batchNo)
			return 0, errNoBatch
		}
		return 0, res.err(fmt.Errorf("POST %s: %s%s", s.base+batchPath, res.statusText(), hint(res.status, false)))
	}
	n, err := readBatch(resp.Body, s.opts.Digest, ids, func(k int, data, frame []byte, err error) {
		id := ids[k]
		switch {
		case err == nil:
			deliver(k, Got{Data: data, Frame: frame})
		case errors.Is(err, ErrNotFound):
			deliver(k, Got{Err: fmt.Errorf("fetch chunk %s from %s: %w (is the chunk store the one mkimage wrote to?)", id, s.base, err)})
		case isCorrupt(err):
			deliver(k, Got{Err: s.corrupt(id, err)})
		default:
			deliver(k, Got{Err: fmt.Errorf("fetch chunk %s from %s: %w (see the server's log)", id, s.base, err)})
		}
	})
	if err != nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	if err == nil {
		// Let the connection be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 512))
	}
	return n, err
}

// learn notes what a reply of the server says of its batch reads.
func (s *HTTP) learn(h http.Header) {
	state := int32(batchNo)
	for _, v := range h.Values(BatchHeader) {
		for _, ext := range strings.Split(v, ",") {
			if strings.TrimSpace(ext) == "batch" {
				state = batchYes
			}
		}
	}
	if s.batch.Load() != state {
		s.batch.Store(state)
	}
}

// HasChunk asks the server with HEAD.
func (s *HTTP) HasChunk(ctx context.Context, id casync.ChunkID) (bool, error) {
	res, err := s.do(ctx, http.MethodHead, id, nil)
	if err != nil {
		return false, fmt.Errorf("look up chunk %s on %s: %w", id, s.base, err)
	}
	switch res.status {
	case http.StatusOK:
		return true, nil
	case http.StatusNotFound, http.StatusGone:
		return false, nil
	}
	return false, res.err(fmt.Errorf("look up chunk %s on %s: %s%s", id, s.base, res.statusText(), hint(res.status, false)))
}

// StoreChunk verifies data against id, compresses it and uploads it with
// PUT.
func (s *HTTP) StoreChunk(ctx context.Context, id casync.ChunkID, data []byte) error {
	if err := casync.VerifyChunk(s.opts.Digest, id, data); err != nil {
		return fmt.Errorf("store chunk on %s: %w", s.base, err)
	}
	return s.put(ctx, id, casync.CompressChunk(nil, data))
}

// StoreFrame verifies frame against id and uploads it as is.
func (s *HTTP) StoreFrame(ctx context.Context, id casync.ChunkID, frame []byte) error {
	if !s.opts.TrustWrites {
		if err := VerifyFrame(s.opts.Digest, id, frame); err != nil {
			return fmt.Errorf("store chunk on %s: %w", s.base, err)
		}
	}
	return s.put(ctx, id, frame)
}

func (s *HTTP) put(ctx context.Context, id casync.ChunkID, frame []byte) error {
	res, err := s.do(ctx, http.MethodPut, id, frame)
	if err != nil {
		return fmt.Errorf("store chunk %s on %s: %w", id, s.base, err)
	}
	switch res.status {
	case http.StatusOK, http.StatusCreated, http.StatusNoContent:
		return nil
	}
	return res.err(fmt.Errorf("store chunk %s on %s: %s%s", id, s.base, res.statusText(), hint(res.status, true)))
}

func hint(status int, write bool) string {
	switch {
	case status == http.StatusUnauthorized && write:
		return " (a write needs the server's write token: give mkimage --token-file the file that chunkstore serve --write-token-file reads)"
	case status == http.StatusForbidden && write:
		return " (the server does not accept writes: start it with --write-token-file)"
	case status == http.StatusUnauthorized, status == http.StatusForbidden:
		return " (check the store's credentials)"
	case status == http.StatusBadRequest && write:
		return " (the server refused the chunk)"
	case status == http.StatusBadRequest:
		return " (is the URL the root of a casync chunk store?)"
	case status >= 500:
		return " (the server failed; see its log)"
	}
	return ""
}

// response is the part of an HTTP answer the store looks at.
type response struct {
	status int
	msg    string // start of an error body, for messages
	body   []byte // a 200 GET's body
}

// err returns err, marked Permanent unless the status is one that may
// change when asked again: a 5xx, 429 (too many requests) or 408.
func (r response) err(err error) error {
	if r.status >= 500 || r.status == http.StatusTooManyRequests || r.status == http.StatusRequestTimeout {
		return err
	}
	return Permanent(err)
}

func (r response) statusText() string {
	s := fmt.Sprintf("%d %s", r.status, http.StatusText(r.status))
	if r.msg != "" {
		s += ": " + r.msg
	}
	return s
}

// do sends one request. It returns an error only when no answer was had;
// an HTTP status, even 500, is a response.
func (s *HTTP) do(ctx context.Context, method string, id casync.ChunkID, body []byte) (response, error) {
	u := s.URL(id)
	res, err := s.once(ctx, method, u, body)
	switch {
	case err == nil:
		return res, nil
	case untrusted(err):
		// Every attempt gets the same certificate.
		return response{}, Permanent(fmt.Errorf("%s: %w (the server's certificate is not trusted here; give its CA certificate with mkimage --ca-file, boot mount --ca-file or BOOTFS_CA_FILE)", method, err))
	case ctx.Err() != nil:
		return response{}, err
	}
	return response{}, fmt.Errorf("%s: %w (is the chunk server running and reachable?)", method, err)
}

// untrusted reports whether err is a TLS certificate that failed
// verification.
func untrusted(err error) bool {
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	return errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &ci)
}

// once sends one request.
func (s *HTTP) once(ctx context.Context, method, u string, body []byte) (response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return response{}, err
	}
	if s.opts.Token != "" {
		req.Header.Set("Authorization", "Bearer "+s.opts.Token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	resp, err := s.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the callers name the chunk and the store
		}
		return response{}, err
	}
	defer resp.Body.Close()
	s.learn(resp.Header)
	res := response{status: resp.StatusCode}
	if resp.StatusCode != http.StatusOK || method != http.MethodGet {
		// Read a little of the body for the message, and let the
		// connection be reused if the body is short.
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		res.msg = strings.TrimSpace(strings.ToValidUTF8(string(msg), "?"))
		if i := strings.IndexByte(res.msg, '\n'); i >= 0 {
			res.msg = res.msg[:i]
		}
		return res, nil
	}
	if resp.ContentLength > maxFrameSize {
		return response{}, fmt.Errorf("GET %s: body of %d bytes is larger than any chunk frame", u, resp.ContentLength)
	}
	buf := bytes.NewBuffer(make([]byte, 0, max(resp.ContentLength, 0)+bytes.MinRead))
	n, err := buf.ReadFrom(io.LimitReader(resp.Body, maxFrameSize+1))
	if err != nil {
		return response{}, fmt.Errorf("read body: %w", err)
	}
	if n > maxFrameSize {
		return response{}, fmt.Errorf("GET %s: body larger than any chunk frame", u)
	}
	res.body = buf.Bytes()
	return res, nil
}

// Close closes idle connections.
func (s *HTTP) Close() error {
	s.client.CloseIdleConnections()
	return nil
}

// ReadTokenFile returns the bearer token in the file name (for a client's
// HTTPOptions.Token or a server's write token), without surrounding
// white space. An empty one is an error.
func ReadTokenFile(name string) (string, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return "", fmt.Errorf("read token: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("token file %s is empty", name)
	}
	return token, nil
}
