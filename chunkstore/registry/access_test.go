package registry_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore/registry"
	"github.com/bootfs/bootfs/chunkstore/storetest"
	"github.com/bootfs/bootfs/internal/registrytest"
)

// TestOpenErrors: what is not there, or not bootfs, fails at open with
// an error that says so.
func TestOpenErrors(t *testing.T) {
	r := registrytest.Start(t, registrytest.Config{})
	repo, pinned := commit(t, r, registry.Options{TempDir: t.TempDir()}, storetest.Chunks(20, 4))
	for _, tc := range []struct {
		name, url, want string
	}{
		{"no repository", "oci://" + r.Host + "/no/such/repo", "does not exist"},
		{"no map", repo + "@sha256:" + strings.Repeat("0", 64), "not in repository"},
		{"tag that does not exist", repo + ":nosuchtag", ":nosuchtag does not exist"},
		{"tag that is no boot image", repo + ":" + "bootfs-chunks-" + pinned[strings.LastIndex(pinned, ":")+1:], "is not a bootfs boot image"},
		{"bad digest", repo + "@sha256:abc", "bad digest"},
		{"no repository part", "oci://" + r.Host + "/", "missing host or repository"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := registry.New(context.Background(), tc.url, registry.Options{})
			if err == nil {
				s.Close()
				t.Fatalf("New(%s) = nil error, want one with %q", tc.url, tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New(%s) = %v, want %q", tc.url, err, tc.want)
			}
		})
	}
}

// TestPlainHTTPPolicy: plain HTTP goes to loopback addresses only,
// unless allowed.
func TestPlainHTTPPolicy(t *testing.T) {
	_, err := registry.New(context.Background(), "oci://192.0.2.1:5000/x", registry.Options{
		Transport: roundTripFunc(func(req *http.Request) (*http.Response, error) {
			if req.URL.Scheme == "https" {
				return nil, errors.New("no TLS here")
			}
			t.Errorf("a plain HTTP request reached the network: %s", req.URL)
			return nil, errors.New("unreachable")
		}),
	})
	if err == nil {
		t.Fatal("New of a non-loopback plain-HTTP registry = nil error")
	}
	// ggcr tries plain HTTP for private addresses only; 192.0.2.1 is
	// public, so allow-listing is checked with a private one.
	_, err = registry.New(context.Background(), "oci://10.0.0.1:5000/x", registry.Options{
		Transport: roundTripFunc(func(req *http.Request) (*http.Response, error) {
			if req.URL.Scheme == "https" {
				return nil, errors.New("no TLS here")
			}
			t.Errorf("a plain HTTP request to %s reached the network", req.URL)
			return nil, errors.New("unreachable")
		}),
	})
	if !errors.Is(err, registry.ErrPlainHTTP) || !strings.Contains(err.Error(), registry.EnvPlainHTTP) {
		t.Errorf("New(oci://10.0.0.1:5000/x) = %v, want ErrPlainHTTP naming %s", err, registry.EnvPlainHTTP)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestRangeIgnored: a registry (or proxy) that answers Range requests
// with the whole blob still gives the right chunks, with one warning.
func TestRangeIgnored(t *testing.T) {
	r := registrytest.Start(t, registrytest.Config{})
	cs := storetest.Chunks(21, 16)
	_, pinned := commit(t, r, registry.Options{TempDir: t.TempDir(), PackSize: 128 << 10}, cs)
	target, _ := url.Parse("http://" + r.Host)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var ranged int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Header.Get("Range") != "" {
			ranged++
			req.Header.Del("Range")
		}
		proxy.ServeHTTP(w, req)
	}))
	defer srv.Close()
	u := strings.Replace(pinned, r.Host, strings.TrimPrefix(srv.URL, "http://"), 1)
	var logs strings.Builder
	s := open(t, u, registry.Options{Logger: testLogger(&logs)})
	for _, c := range cs {
		got, err := s.GetChunk(context.Background(), c.ID)
		if err != nil || string(got) != string(c.Data) {
			t.Fatalf("GetChunk(%s) through a Range-ignoring proxy = %d bytes, %v", c.ID, len(got), err)
		}
	}
	if ranged == 0 {
		t.Fatal("no Range request reached the proxy")
	}
	if n := strings.Count(logs.String(), "ignores Range"); n != 1 {
		t.Errorf("logged the ignored Range %d times, want once:\n%s", n, logs.String())
	}
}

// TestBasicAuthTLS: a TLS registry with htpasswd users: credentials from
// a config.json file work; none, or a CA that is not the registry's,
// give errors that say what to give.
func TestBasicAuthTLS(t *testing.T) {
	r := registrytest.Start(t, registrytest.Config{TLS: true, Users: map[string]string{"alice": "s3cret"}})
	dir := t.TempDir()
	auth := r.WriteAuthFile(t, dir, "alice", "s3cret")
	o := registry.Options{TempDir: dir, AuthFile: auth, CAFile: r.CAFile}
	cs := storetest.Chunks(22, 6)
	repo, pinned := commit(t, r, o, cs)
	s := open(t, pinned, o)
	for _, c := range cs {
		if got, err := s.GetChunk(context.Background(), c.ID); err != nil || string(got) != string(c.Data) {
			t.Fatalf("GetChunk = %d bytes, %v", len(got), err)
		}
	}
	_, err := registry.New(context.Background(), repo, registry.Options{CAFile: r.CAFile})
	if !errors.Is(err, registry.ErrAuth) || !strings.Contains(err.Error(), registry.EnvAuth) {
		t.Errorf("New without credentials = %v, want ErrAuth naming %s", err, registry.EnvAuth)
	}
	bad := registrytest.Start(t, registrytest.Config{TLS: true}) // another CA
	_, err = registry.New(context.Background(), repo, registry.Options{AuthFile: auth, CAFile: bad.CAFile})
	if err == nil || !strings.Contains(err.Error(), "--ca-file") || !strings.Contains(err.Error(), "BOOTFS_CA_FILE") {
		t.Errorf("New with the wrong CA = %v, want an error naming --ca-file and BOOTFS_CA_FILE", err)
	}
	badAuth := r.WriteAuthFile(t, t.TempDir(), "alice", "wrong")
	_, err = registry.New(context.Background(), repo, registry.Options{AuthFile: badAuth, CAFile: r.CAFile})
	if !errors.Is(err, registry.ErrAuth) || !strings.Contains(err.Error(), badAuth) {
		t.Errorf("New with a wrong password = %v, want ErrAuth naming %s", err, badAuth)
	}
}

// TestTokenAuth: a registry behind distribution's token auth: pushing
// with credentials, pulling with them and anonymously, through the
// bearer challenge.
func TestTokenAuth(t *testing.T) {
	r := registrytest.Start(t, registrytest.Config{Token: true, Users: map[string]string{"bob": "pw"}})
	dir := t.TempDir()
	auth := r.WriteAuthFile(t, dir, "bob", "pw")
	cs := storetest.Chunks(23, 6)
	repo, pinned := commit(t, r, registry.Options{TempDir: dir, AuthFile: auth}, cs)
	for _, o := range []registry.Options{{AuthFile: auth}, {}} {
		for _, u := range []string{pinned, repo} {
			s := open(t, u, o)
			for _, c := range cs {
				if got, err := s.GetChunk(context.Background(), c.ID); err != nil || string(got) != string(c.Data) {
					t.Fatalf("GetChunk(%s) from %s (auth file %q) = %d bytes, %v", c.ID, u, o.AuthFile, len(got), err)
				}
			}
		}
	}
	// Anonymous callers may pull, not push.
	c := storetest.Chunks(24, 1)[0]
	w, err := registry.New(context.Background(), repo+"-anon", registry.Options{Write: true, TempDir: dir})
	if err == nil {
		defer w.Close()
		if err = w.StoreChunk(context.Background(), c.ID, c.Data); err == nil {
			_, err = w.Commit(context.Background(), []casync.ChunkID{c.ID})
		}
	}
	if !errors.Is(err, registry.ErrAuth) || !strings.Contains(err.Error(), registry.EnvAuth) {
		t.Errorf("anonymous push = %v, want ErrAuth naming %s", err, registry.EnvAuth)
	}
}

func testLogger(w *strings.Builder) *slog.Logger {
	return slog.New(slog.NewTextHandler(&lockedWriter{w: w}, nil))
}

type lockedWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestRedirect: a registry that redirects blob GETs (to object storage,
// as many do) is followed, Range and all.
func TestRedirect(t *testing.T) {
	r := registrytest.Start(t, registrytest.Config{})
	cs := storetest.Chunks(25, 12)
	_, pinned := commit(t, r, registry.Options{TempDir: t.TempDir(), PackSize: 128 << 10}, cs)
	target, _ := url.Parse("http://" + r.Host)
	var ranged atomic.Int64
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Header.Get("Range") != "" {
			ranged.Add(1)
		}
		httputil.NewSingleHostReverseProxy(target).ServeHTTP(w, req)
	}))
	defer storage.Close()
	var redirected atomic.Int64
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if strings.Contains(req.URL.Path, "/blobs/") && req.Method == http.MethodGet {
			redirected.Add(1)
			http.Redirect(w, req, storage.URL+req.URL.Path, http.StatusTemporaryRedirect)
			return
		}
		httputil.NewSingleHostReverseProxy(target).ServeHTTP(w, req)
	}))
	defer front.Close()
	s := open(t, strings.Replace(pinned, r.Host, strings.TrimPrefix(front.URL, "http://"), 1), registry.Options{})
	for _, c := range cs {
		if got, err := s.GetChunk(context.Background(), c.ID); err != nil || string(got) != string(c.Data) {
			t.Fatalf("GetChunk(%s) through a redirect = %d bytes, %v", c.ID, len(got), err)
		}
	}
	if redirected.Load() == 0 || ranged.Load() < int64(len(cs)) {
		t.Errorf("%d redirects, %d ranged GETs at the storage; want every chunk read there by range", redirected.Load(), ranged.Load())
	}
}

// TestOpenHang: a registry that accepts connections and never answers
// fails New within OpenTimeout.
func TestOpenHang(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	start := time.Now()
	_, err = registry.New(context.Background(), "oci://"+l.Addr().String()+"/x", registry.Options{OpenTimeout: time.Second})
	if err == nil || time.Since(start) > 30*time.Second {
		t.Errorf("New of a silent registry = %v after %v, want an error within about a second", err, time.Since(start))
	}
}
