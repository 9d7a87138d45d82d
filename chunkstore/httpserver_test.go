package chunkstore_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/storetest"
)

// rawRequest sends request line and headers as written, bypassing the
// client's path cleaning, and returns the status code and body.
func rawRequest(t *testing.T, addr, method, target string, hdr ...string) (int, string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n", method, target)
	for _, h := range hdr {
		fmt.Fprintf(conn, "%s\r\n", h)
	}
	fmt.Fprintf(conn, "\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestHandlerPaths(t *testing.T) {
	l := newLocal(t)
	c := storetest.Chunks(10, 1)[0]
	if err := l.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
		t.Fatal(err)
	}
	// A file outside the store that traversal would reach.
	secret := filepath.Join(filepath.Dir(l.Dir()), "secret")
	os.WriteFile(secret, []byte("secret"), 0o644)
	_, srv := serve(t, l, chunkstore.HandlerOptions{}, chunkstore.HTTPOptions{})
	addr := srv.Listener.Addr().String()
	good := "/" + chunkstore.ChunkPath(c.ID)
	missing := "/" + chunkstore.ChunkPath(casync.SHA512_256.Sum([]byte("missing")))
	id := c.ID.String()
	tests := []struct {
		name, method, target string
		want                 int
	}{
		{"get", "GET", good, 200},
		{"head", "HEAD", good, 200},
		{"get missing", "GET", missing, 404},
		{"head missing", "HEAD", missing, 404},
		{"traversal", "GET", "/../../etc/passwd", 400},
		{"traversal to secret", "GET", "/../secret", 400},
		{"escaped traversal", "GET", "/%2e%2e/%2e%2e/etc/passwd", 400},
		{"escaped slash", "GET", "/" + id[:4] + "%2f" + id + ".cacnk", 400},
		{"escaped hex", "GET", "/" + id[:4] + "/%" + fmt.Sprintf("%02x", id[0]) + id[1:] + ".cacnk", 400},
		{"dot segment", "GET", "/" + id[:4] + "/../" + id[:4] + "/" + id + ".cacnk", 400},
		{"wrong prefix", "GET", "/0000/" + id + ".cacnk", 400},
		{"bad hex", "GET", "/" + id[:4] + "/" + id[:63] + "g.cacnk", 400},
		{"upper case", "GET", "/" + strings.ToUpper(id[:4]) + "/" + strings.ToUpper(id) + ".cacnk", 400},
		{"short id", "GET", "/" + id[:4] + "/" + id[:62] + ".cacnk", 400},
		{"no extension", "GET", "/" + id[:4] + "/" + id, 400},
		{"other extension", "GET", "/" + id[:4] + "/" + id + ".cacnk.tmp", 400},
		{"double slash", "GET", "//" + id[:4] + "/" + id + ".cacnk", 400},
		{"root", "GET", "/", 400},
		{"absolute URI", "GET", "http://x/../etc/passwd", 400},
		{"method", "DELETE", good, 405},
		{"metrics", "GET", "/metrics", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := rawRequest(t, addr, tt.method, tt.target)
			if code != tt.want {
				t.Errorf("%s %s = %d %q, want %d", tt.method, tt.target, code, body, tt.want)
			}
			if strings.Contains(body, "secret") && tt.want != 200 {
				t.Errorf("%s %s leaked a file outside the store", tt.method, tt.target)
			}
		})
	}
}

// HEAD of a chunk answers GET's headers: the same type, ETag and cache
// lifetime.
func TestHandlerHeadHeaders(t *testing.T) {
	l := newLocal(t)
	c := storetest.Chunks(12, 1)[0]
	if err := l.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
		t.Fatal(err)
	}
	_, srv := serve(t, l, chunkstore.HandlerOptions{}, chunkstore.HTTPOptions{})
	url := srv.URL + "/" + chunkstore.ChunkPath(c.ID)
	get, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	get.Body.Close()
	head, err := http.Head(url)
	if err != nil {
		t.Fatal(err)
	}
	head.Body.Close()
	for _, h := range []string{"Content-Type", "ETag", "Cache-Control"} {
		if g, hd := get.Header.Get(h), head.Header.Get(h); g == "" || g != hd {
			t.Errorf("%s: GET %q, HEAD %q; want the same, set", h, g, hd)
		}
	}
}

// unwritableStore fails every write as a store on a read-only volume does.
type unwritableStore struct{ *chunkstore.Memory }

func (unwritableStore) StoreChunk(ctx context.Context, id casync.ChunkID, data []byte) error {
	return &fs.PathError{Op: "open", Path: "/srv/store/tmp", Err: syscall.EROFS}
}

// A PUT that the server cannot write says why, without the server's
// paths, instead of a bare "internal server error".
func TestHandlerPutUnwritable(t *testing.T) {
	client, _ := serve(t, unwritableStore{chunkstore.NewMemory(chunkstore.MemoryOptions{})},
		chunkstore.HandlerOptions{WriteToken: "tok"}, chunkstore.HTTPOptions{Token: "tok"})
	data := []byte("a chunk for a read-only store")
	err := client.StoreChunk(context.Background(), casync.SHA512_256.Sum(data), data)
	if err == nil || !strings.Contains(err.Error(), "read-only file system") || !strings.Contains(err.Error(), "507") || strings.Contains(err.Error(), "/srv/store") {
		t.Errorf("StoreChunk on a read-only store = %v, want a 507 naming the read-only file system and no server path", err)
	}
}

func TestHandlerServesFrameAsStored(t *testing.T) {
	l := newLocal(t)
	c := storetest.Chunks(11, 2)[1]
	// A frame as another zstd encoder (best level, with a checksum) writes it,
	// which differs from ours: the server must pass it through, not
	// recompress it.
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderCRC(true))
	frame := enc.EncodeAll(c.Data, nil)
	if bytes.Equal(frame, casync.CompressChunk(nil, c.Data)) {
		t.Fatal("test frame is the same as ours")
	}
	if err := l.StoreFrame(context.Background(), c.ID, frame); err != nil {
		t.Fatal(err)
	}
	onDisk, err := os.ReadFile(filepath.Join(l.Dir(), chunkstore.ChunkPath(c.ID)))
	if err != nil {
		t.Fatal(err)
	}
	_, srv := serve(t, l, chunkstore.HandlerOptions{}, chunkstore.HTTPOptions{})
	resp, err := http.Get(srv.URL + "/" + chunkstore.ChunkPath(c.ID))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(onDisk, frame) || !bytes.Equal(got, frame) {
		t.Errorf("GET body = %d bytes, want the %d bytes on disk", len(got), len(onDisk))
	}
}

func TestHandlerCorruptChunk(t *testing.T) {
	l := newLocal(t)
	cs := storetest.Chunks(12, 3)
	for _, c := range cs {
		if err := l.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
			t.Fatal(err)
		}
	}
	// Chunk 0: another chunk's valid frame under its name. Chunk 1:
	// garbage.
	name0 := filepath.Join(l.Dir(), chunkstore.ChunkPath(cs[0].ID))
	name1 := filepath.Join(l.Dir(), chunkstore.ChunkPath(cs[1].ID))
	other, _ := os.ReadFile(filepath.Join(l.Dir(), chunkstore.ChunkPath(cs[2].ID)))
	os.Chmod(name0, 0o644)
	if err := os.WriteFile(name0, other, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name1, []byte("not a zstd frame"), 0o644); err != nil {
		t.Fatal(err)
	}
	client, srv := serve(t, l, chunkstore.HandlerOptions{}, chunkstore.HTTPOptions{})
	for _, c := range cs[:2] {
		resp, err := http.Get(srv.URL + "/" + chunkstore.ChunkPath(c.ID))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusInternalServerError {
			t.Errorf("GET corrupt %s = %d, want 500", c.ID, resp.StatusCode)
		}
		if bytes.Contains(body, other) || bytes.Contains(body, []byte("not a zstd")) {
			t.Errorf("GET corrupt %s served the corrupt bytes", c.ID)
		}
		if _, err := client.GetChunk(context.Background(), c.ID); err == nil || errors.Is(err, chunkstore.ErrNotFound) {
			t.Errorf("client GetChunk(corrupt) = %v, want a server error", err)
		}
	}
}

func TestHandlerPut(t *testing.T) {
	mem := chunkstore.NewMemory(chunkstore.MemoryOptions{})
	_, srv := serve(t, mem, chunkstore.HandlerOptions{WriteToken: "s3cret"}, chunkstore.HTTPOptions{})
	cs := storetest.Chunks(13, 2)
	frame := casync.CompressChunk(nil, cs[0].Data)
	tests := []struct {
		name  string
		id    casync.ChunkID
		body  []byte
		token string
		want  int
	}{
		{"no token", cs[0].ID, frame, "", 401},
		{"wrong token", cs[0].ID, frame, "Bearer s3cre", 401},
		{"basic auth", cs[0].ID, frame, "Basic czNjcmV0", 401},
		{"wrong id", cs[1].ID, frame, "Bearer s3cret", 400},
		{"not a frame", cs[0].ID, []byte("garbage"), "Bearer s3cret", 400},
		{"good", cs[0].ID, frame, "Bearer s3cret", 201},
		{"again", cs[0].ID, frame, "Bearer s3cret", 201},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("PUT", srv.URL+"/"+chunkstore.ChunkPath(tt.id), bytes.NewReader(tt.body))
			if tt.token != "" {
				req.Header.Set("Authorization", tt.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("PUT %s = %d, want %d", tt.name, resp.StatusCode, tt.want)
			}
		})
	}
	if mem.Len() != 1 {
		t.Errorf("store holds %d chunks after the PUTs, want 1", mem.Len())
	}
	// Read-only server: 403.
	_, ro := serve(t, mem, chunkstore.HandlerOptions{}, chunkstore.HTTPOptions{})
	req, _ := http.NewRequest("PUT", ro.URL+"/"+chunkstore.ChunkPath(cs[1].ID), bytes.NewReader(casync.CompressChunk(nil, cs[1].Data)))
	req.Header.Set("Authorization", "Bearer s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("PUT to a server without a write token = %d, want 403", resp.StatusCode)
	}
	// Our client without the token gets a clear error.
	c, err := chunkstore.NewHTTP(srv.URL, chunkstore.HTTPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	err = c.StoreChunk(context.Background(), cs[1].ID, cs[1].Data)
	if err == nil || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "token") {
		t.Errorf("StoreChunk without token = %v, want a 401 error mentioning the token", err)
	}
}

func TestHandlerMetrics(t *testing.T) {
	l := newLocal(t)
	c := storetest.Chunks(14, 1)[0]
	l.StoreChunk(context.Background(), c.ID, c.Data)
	// Counted, as chunkstore serve counts its store.
	client, srv := serve(t, chunkstore.NewCounted(l), chunkstore.HandlerOptions{}, chunkstore.HTTPOptions{})
	for range 3 {
		if _, err := client.GetChunk(context.Background(), c.ID); err != nil {
			t.Fatal(err)
		}
	}
	client.GetChunk(context.Background(), casync.SHA512_256.Sum(nil))
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`bootfs_chunkstore_http_requests_total{method="GET",code="200"} 3`,
		`bootfs_chunkstore_http_requests_total{method="GET",code="404"} 1`,
		"# TYPE bootfs_chunkstore_http_requests_total counter",
		"bootfs_chunkstore_store_hits_total 3",
		"bootfs_chunkstore_store_misses_total 1",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q:\n%s", want, b)
		}
	}
}

// FuzzHandlerPath sends arbitrary request targets to the handler: it
// answers 200 only for the canonical path of a chunk it has, 400 for
// anything that is not a chunk path, and never panics.
func FuzzHandlerPath(f *testing.F) {
	mem := chunkstore.NewMemory(chunkstore.MemoryOptions{})
	data := []byte("fuzz chunk")
	id := casync.SHA512_256.Sum(data)
	mem.StoreChunk(context.Background(), id, data)
	h := chunkstore.NewHTTPHandler(mem, chunkstore.HandlerOptions{})
	good := "/" + chunkstore.ChunkPath(id)
	for _, s := range []string{good, "/../../etc/passwd", "/%2e%2e/x", "/metrics", "//" + good, good + "?x=1", strings.ToUpper(good)} {
		f.Add("GET", s)
	}
	f.Add("HEAD", good)
	f.Fuzz(func(t *testing.T, method, target string) {
		if method != "GET" && method != "HEAD" {
			method = "GET"
		}
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(method + " " + target + " HTTP/1.1\r\nHost: x\r\n\r\n")))
		if err != nil {
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch {
		case req.URL.Path == "/metrics" && req.URL.RawPath == "":
		case rec.Code == http.StatusOK && (req.URL.Path != good || req.URL.RawPath != ""):
			t.Fatalf("%s %q = 200 for path %q", method, target, req.URL.Path)
		case rec.Code != http.StatusOK && rec.Code != http.StatusBadRequest && rec.Code != http.StatusNotFound:
			t.Fatalf("%s %q = %d", method, target, rec.Code)
		}
	})
}
