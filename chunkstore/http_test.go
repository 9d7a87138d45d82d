package chunkstore_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/opener"
	"github.com/bootfs/bootfs/chunkstore/storetest"
)

// faultServer answers each request with the handler for its attempt
// number (from 0), or the last handler once they run out.
func faultServer(t *testing.T, handlers ...http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := int(n.Add(1) - 1)
		handlers[min(i, len(handlers)-1)](w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

func status(code int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { http.Error(w, http.StatusText(code), code) }
}

func serveFrame(frame []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { w.Write(frame) }
}

// hangUpMidBody sends the headers and half the body, then drops the
// connection, as a server that is killed mid-transfer does.
func hangUpMidBody(frame []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err)
		}
		fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(frame))
		buf.Write(frame[:len(frame)/2])
		buf.Flush()
		conn.Close()
	}
}

func fastRetries(o chunkstore.RetryOptions) chunkstore.RetryOptions {
	o.Backoff = 5 * time.Millisecond
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Second
	}
	return o
}

// retrying opens the store at url as boot and mkimage do: one HTTP
// request per attempt, retried as ro says, counted.
func retrying(t *testing.T, url string, ro chunkstore.RetryOptions) *chunkstore.Counted {
	t.Helper()
	o, err := opener.Open(context.Background(), url, opener.Options{Retry: ro})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o.Remote
}

func TestHTTPRetries(t *testing.T) {
	c := storetest.Chunks(20, 1)[0]
	frame := casync.CompressChunk(nil, c.Data)
	other := casync.CompressChunk(nil, []byte("some other chunk"))
	tests := []struct {
		name      string
		handlers  []http.HandlerFunc
		retries   int
		wantReqs  int64
		wantErr   error // nil: success
		wantInErr string
	}{
		{"ok", []http.HandlerFunc{serveFrame(frame)}, 3, 1, nil, ""},
		{"503 then ok", []http.HandlerFunc{status(503), status(500), serveFrame(frame)}, 3, 3, nil, ""},
		{"429 then ok", []http.HandlerFunc{status(429), serveFrame(frame)}, 3, 2, nil, ""},
		{"cut body then ok", []http.HandlerFunc{hangUpMidBody(frame), serveFrame(frame)}, 3, 2, nil, ""},
		{"500 forever", []http.HandlerFunc{status(500)}, 3, 4, nil, "500"},
		{"404 not retried", []http.HandlerFunc{status(404)}, 3, 1, chunkstore.ErrNotFound, "is the chunk store the one mkimage wrote to?"},
		{"400 not retried", []http.HandlerFunc{status(400)}, 3, 1, nil, "400"},
		{"401 not retried", []http.HandlerFunc{status(401)}, 3, 1, nil, "401"},
		{"bad chunk not retried", []http.HandlerFunc{serveFrame(other)}, 3, 1, &casync.ChecksumError{}, "verify --repair"},
		{"garbage not retried", []http.HandlerFunc{serveFrame([]byte("garbage"))}, 3, 1, &casync.ChecksumError{}, ""},
		{"no retries", []http.HandlerFunc{status(503), serveFrame(frame)}, -1, 1, nil, "503"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, reqs := faultServer(t, tt.handlers...)
			client := retrying(t, srv.URL, fastRetries(chunkstore.RetryOptions{Retries: tt.retries}))
			data, err := client.GetChunk(context.Background(), c.ID)
			switch {
			case tt.wantErr == nil && tt.wantInErr == "":
				if err != nil || string(data) != string(c.Data) {
					t.Errorf("GetChunk = %d bytes, %v; want the chunk", len(data), err)
				}
			case err == nil:
				t.Errorf("GetChunk = nil error, want %v", tt.wantErr)
			default:
				if ce := (*casync.ChecksumError)(nil); errors.As(tt.wantErr, &ce) {
					if !errors.As(err, &ce) {
						t.Errorf("GetChunk = %v, want a ChecksumError", err)
					}
				} else if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
					t.Errorf("GetChunk = %v, want %v", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantInErr) || !strings.Contains(err.Error(), srv.URL) {
					t.Errorf("GetChunk error %q does not contain %q and the URL", err, tt.wantInErr)
				}
			}
			if got := reqs.Load(); got != tt.wantReqs {
				t.Errorf("server saw %d requests, want %d", got, tt.wantReqs)
			}
			if got := client.Stats().Retries; got != uint64(tt.wantReqs-1) {
				t.Errorf("Stats().Retries = %d, want %d", got, tt.wantReqs-1)
			}
		})
	}
}

// TestHTTPServerKilled kills the server mid-transfer and then closes its
// listener: the client retries, then fails with a clear error, in bounded
// time.
func TestHTTPServerKilled(t *testing.T) {
	c := storetest.Chunks(21, 1)[0]
	frame := casync.CompressChunk(nil, c.Data)
	var srv *httptest.Server
	srv, reqs := faultServer(t, func(w http.ResponseWriter, r *http.Request) {
		hangUpMidBody(frame)(w, r)
		go srv.Listener.Close() // the server is gone for good
	})
	client := retrying(t, srv.URL, chunkstore.RetryOptions{Retries: 3, Backoff: 20 * time.Millisecond, Timeout: time.Second})
	start := time.Now()
	_, err := client.GetChunk(context.Background(), c.ID)
	took := time.Since(start)
	if err == nil {
		t.Fatal("GetChunk from a killed server = nil error")
	}
	// The chunk, the store and the attempt count, each once.
	msg := err.Error()
	if strings.Count(msg, srv.URL) != 1 || strings.Count(msg, c.ID.String()) != 1 || strings.Count(msg, "attempt") != 1 ||
		!strings.Contains(msg, "gave up after 4 attempts") || !strings.Contains(msg, "reachable") || chunkstore.Attempts(err) != 4 {
		t.Errorf("GetChunk error = %q, want the URL, the chunk and the 4 attempts once each, and a hint", err)
	}
	// 4 attempts of at most 1s plus backoff (at most 20+40+80ms).
	if took > 3*time.Second {
		t.Errorf("GetChunk took %v, want well under the 4 x 1s bound", took)
	}
	if got := reqs.Load(); got != 1 {
		t.Errorf("server handled %d requests, want 1 before it died", got)
	}
	if got := client.Stats().Retries; got != 3 {
		t.Errorf("Stats().Retries = %d, want 3", got)
	}
}

func TestHTTPTimeout(t *testing.T) {
	c := storetest.Chunks(22, 1)[0]
	release := make(chan struct{})
	srv, reqs := faultServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	client := retrying(t, srv.URL, chunkstore.RetryOptions{Retries: 1, Backoff: time.Millisecond, Timeout: 100 * time.Millisecond})
	start := time.Now()
	_, err := client.GetChunk(context.Background(), c.ID)
	if err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Errorf("GetChunk from a hung server = %v, want a timeout error", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("GetChunk took %v with a 2 x 100ms bound", took)
	}
	if got := reqs.Load(); got != 2 {
		t.Errorf("server saw %d requests, want 2", got)
	}
	// The caller's cancellation ends the wait at once, without retries.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	client2 := retrying(t, srv.URL, chunkstore.RetryOptions{Timeout: time.Minute})
	start = time.Now()
	_, err = client2.GetChunk(ctx, c.ID)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("GetChunk(ctx with deadline) = %v, want context.DeadlineExceeded", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("GetChunk with a 50ms ctx took %v", took)
	}
}

func TestNewHTTPBadURL(t *testing.T) {
	for _, u := range []string{"", "ftp://x/", "http://", "http://x/?a=b", "/local/path", "htp://x"} {
		if _, err := chunkstore.NewHTTP(u, chunkstore.HTTPOptions{}); !errors.Is(err, chunkstore.ErrBadURL) {
			t.Errorf("NewHTTP(%q) = %v, want ErrBadURL", u, err)
		}
	}
}
