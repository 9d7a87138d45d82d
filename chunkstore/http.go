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
	"time"

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
}

var _ FrameWriteStore = (*HTTP)(nil)

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
