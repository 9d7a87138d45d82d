package chunkstore_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

// put PUTs frame under id with the token and returns the answer.
func put(t testing.TB, base string, id casync.ChunkID, frame []byte) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest("PUT", base+"/"+chunkstore.ChunkPath(id), bytes.NewReader(frame))
	req.Header.Set("Authorization", "Bearer s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// TestHTTPChunkSizeLimit is issue 16 item 2: a store takes chunks up to
// its maximum (256 KiB, casync's default, for chunkstore serve), and a
// PUT of a larger one, such as a 2 KB frame of 16 MiB of zeros, is
// refused with 413 and a message that names the limit.
func TestHTTPChunkSizeLimit(t *testing.T) {
	l, err := chunkstore.NewLocal(t.TempDir(), chunkstore.LocalOptions{MaxChunkSize: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	_, srv := serve(t, l, chunkstore.HandlerOptions{WriteToken: "s3cret"}, chunkstore.HTTPOptions{})
	zeros := make([]byte, 16<<20)
	bomb := casync.CompressChunk(nil, zeros)
	bombID := casync.SHA512_256.Sum(zeros)
	code, body, _ := put(t, srv.URL, bombID, bomb)
	if code != http.StatusRequestEntityTooLarge || !strings.Contains(body, "262144") {
		t.Errorf("PUT of a %d-byte frame of 16 MiB = %d %q, want 413 naming the 262144-byte limit", len(bomb), code, body)
	}
	if ok, _ := l.HasChunk(context.Background(), bombID); ok {
		t.Error("the store kept the chunk above its maximum")
	}
	// Frames that do not declare their size (casync's do not always)
	// are refused once decoded.
	bigData := bytes.Repeat([]byte("x"), 256<<10+1)
	bigID := casync.SHA512_256.Sum(bigData)
	frame := stripContentSize(t, casync.CompressChunk(nil, bigData))
	if code, body, _ := put(t, srv.URL, bigID, frame); code != http.StatusRequestEntityTooLarge {
		t.Errorf("PUT of 256 KiB + 1 without a declared size = %d %q, want 413", code, body)
	}
	okData := bytes.Repeat([]byte("y"), 256<<10)
	if code, body, _ := put(t, srv.URL, casync.SHA512_256.Sum(okData), casync.CompressChunk(nil, okData)); code != http.StatusCreated {
		t.Errorf("PUT of exactly 256 KiB = %d %q, want 201", code, body)
	}
	// A store made for larger chunks takes the 16 MiB one.
	big, _ := chunkstore.NewLocal(t.TempDir(), chunkstore.LocalOptions{MaxChunkSize: 16 << 20})
	_, bigSrv := serve(t, big, chunkstore.HandlerOptions{WriteToken: "s3cret"}, chunkstore.HTTPOptions{})
	if code, body, _ := put(t, bigSrv.URL, bombID, bomb); code != http.StatusCreated {
		t.Errorf("PUT of 16 MiB to a store of 16 MiB chunks = %d %q, want 201", code, body)
	}
}

// stripContentSize rewrites a zstd frame made by CompressChunk so that
// its header does not declare the content size: the single-segment
// frame header's FCS field goes, and a window descriptor takes its place.
func stripContentSize(t *testing.T, frame []byte) []byte {
	t.Helper()
	fhd := frame[4]
	if fhd&0xc0 == 0 && fhd&0x20 == 0 {
		return frame // declares no size already
	}
	fcsLen := map[byte]int{0: 0, 1: 2, 2: 4, 3: 8}[fhd>>6]
	if fhd>>6 == 0 && fhd&0x20 != 0 {
		fcsLen = 1
	}
	hdr := 5
	if fhd&0x20 == 0 {
		hdr++ // window descriptor
	}
	hdr += []int{0, 1, 2, 4}[fhd&3]
	out := append([]byte{}, frame[:4]...)
	// No FCS, no single segment, keep checksum and dict id flags; a
	// window of 8 MiB (exponent 13).
	out = append(out, fhd&0x07, 13<<3)
	out = append(out, frame[5+boolInt(fhd&0x20 == 0):hdr]...)
	out = append(out, frame[hdr+fcsLen:]...)
	if _, err := casync.DecompressChunk(nil, out); err != nil {
		t.Fatalf("stripped frame does not decode: %v", err)
	}
	return out
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestLocalVerifiesChunkOnce is issue 16 item 2: with RememberVerified, a
// chunk file is decompressed and hashed once, not on every GET, and a
// file changed after verification is verified again.
func TestLocalVerifiesChunkOnce(t *testing.T) {
	l, err := chunkstore.NewLocal(t.TempDir(), chunkstore.LocalOptions{RememberVerified: 100})
	if err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, 16<<20)
	id := casync.SHA512_256.Sum(zeros)
	if err := l.StoreChunk(context.Background(), id, zeros); err != nil {
		t.Fatal(err)
	}
	client, srv := serve(t, l, chunkstore.HandlerOptions{}, chunkstore.HTTPOptions{})
	for range 20 {
		if err := wantStatus(http.DefaultClient, "GET", srv.URL+"/"+chunkstore.ChunkPath(id), 200); err != nil {
			t.Fatal(err)
		}
	}
	if n := l.Verifications(); n != 1 {
		t.Errorf("20 GETs of one chunk file verified it %d times, want 1", n)
	}
	// Rewrite the file in place with the same size and mtime: another
	// ctime, so it is verified again and refused.
	name := filepath.Join(l.Dir(), chunkstore.ChunkPath(id))
	fi, _ := os.Stat(name)
	good, _ := os.ReadFile(name)
	bad := bytes.Clone(good)
	bad[len(bad)-1] ^= 0xff
	os.Chmod(name, 0o644)
	if err := os.WriteFile(name, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(name, fi.ModTime(), fi.ModTime())
	if _, err := client.GetChunk(context.Background(), id); err == nil {
		t.Error("GET of a chunk file corrupted after its verification succeeded")
	}
	// Put back by rename, as writers do: a new inode, verified again.
	tmp := name + ".tmp"
	os.WriteFile(tmp, good, 0o644)
	os.Rename(tmp, name)
	if _, err := client.GetChunk(context.Background(), id); err != nil {
		t.Errorf("GET of the repaired chunk: %v", err)
	}
	if n := l.Verifications(); n != 3 {
		t.Errorf("verifications = %d, want 3 (once per version of the file)", n)
	}
}

// TestHTTPMetricsCountCorruptPut is issue 16 item 4: a PUT refused as
// corrupt counts in http_corrupt as it does in store_corrupt (the
// server's store is Counted, as chunkstore serve's is: backends count
// nothing).
func TestHTTPMetricsCountCorruptPut(t *testing.T) {
	l := chunkstore.NewCounted(newLocal(t))
	_, srv := serve(t, l, chunkstore.HandlerOptions{WriteToken: "s3cret"}, chunkstore.HTTPOptions{})
	data := []byte("some chunk")
	if code, _, _ := put(t, srv.URL, casync.SHA512_256.Sum([]byte("another")), casync.CompressChunk(nil, data)); code != 400 {
		t.Fatalf("PUT under the wrong id = %d, want 400", code)
	}
	if code, _, _ := put(t, srv.URL, casync.SHA512_256.Sum(data), []byte("not a frame")); code != 400 {
		t.Fatalf("PUT of garbage = %d, want 400", code)
	}
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"bootfs_chunkstore_http_corrupt_chunks_total 2\n", "bootfs_chunkstore_store_corrupt_total 2\n"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q:\n%s", want, b)
		}
	}
}

// TestHTTPPutBytesBounded is issue 16 item 3: the PUT bodies held at once
// are bounded across requests. While one PUT holds the whole budget, the
// next waits PutWait and gets 503 with Retry-After; then it goes through.
func TestHTTPPutBytesBounded(t *testing.T) {
	l := newLocal(t)
	base := serveReal(t, l, chunkstore.ServerOptions{HandlerOptions: chunkstore.HandlerOptions{
		WriteToken: "s3cret", MaxPutBytes: 1 << 20, PutWait: 300 * time.Millisecond,
	}})
	r := rand.New(rand.NewPCG(1, 2))
	random := func(n int) ([]byte, casync.ChunkID) {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b, casync.SHA512_256.Sum(b)
	}
	aData, aID := random(1 << 20)
	aFrame := casync.CompressChunk(nil, aData)
	bData, bID := random(200 << 10)
	bFrame := casync.CompressChunk(nil, bData)
	// A sends its headers and half its body, then stalls.
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "PUT /%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Length: %d\r\n\r\n", chunkstore.ChunkPath(aID), len(aFrame))
	conn.Write(aFrame[:len(aFrame)/2])
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	code, body, hdr := put(t, base, bID, bFrame)
	if code != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" {
		t.Errorf("PUT while another holds every PUT byte = %d %q (Retry-After %q), want 503 with Retry-After", code, body, hdr.Get("Retry-After"))
	} else if d := time.Since(start); d > 5*time.Second {
		t.Errorf("503 came after %v, want it after PutWait", d)
	}
	conn.Write(aFrame[len(aFrame)/2:])
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("stalled PUT, completed = %v, %v; want 201", resp, err)
	}
	if code, body, _ := put(t, base, bID, bFrame); code != http.StatusCreated {
		t.Errorf("PUT once the budget is free = %d %q, want 201", code, body)
	}
}

// TestHTTPConcurrentLargePuts is issue 16 item 3's load test: 40 parallel
// PUTs of a 16 MiB chunk all get through (retrying on 503 as clients do)
// while the server holds at most MaxPutBytes of bodies.
func TestHTTPConcurrentLargePuts(t *testing.T) {
	if testing.Short() {
		t.Skip("load test")
	}
	l, err := chunkstore.NewLocal(t.TempDir(), chunkstore.LocalOptions{MaxChunkSize: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	base := serveReal(t, l, chunkstore.ServerOptions{HandlerOptions: chunkstore.HandlerOptions{WriteToken: "s3cret"}})
	r := rand.New(rand.NewPCG(3, 4))
	data := make([]byte, 16<<20)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	id := casync.SHA512_256.Sum(data)
	frame := casync.CompressChunk(nil, data)
	data = nil
	var wg sync.WaitGroup
	errc := make(chan error, 40)
	start := time.Now()
	for range 40 {
		wg.Go(func() {
			for attempt := 0; ; attempt++ {
				req, _ := http.NewRequest("PUT", base+"/"+chunkstore.ChunkPath(id), bytes.NewReader(frame))
				req.Header.Set("Authorization", "Bearer s3cret")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					errc <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch {
				case resp.StatusCode == http.StatusCreated:
					return
				case resp.StatusCode == http.StatusServiceUnavailable && attempt < 20:
					time.Sleep(time.Second)
				default:
					errc <- fmt.Errorf("PUT = %s after %d attempts", resp.Status, attempt+1)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	t.Logf("40 parallel PUTs of a 16 MiB chunk: %v; test process VmHWM %s", time.Since(start).Round(time.Millisecond), procStatus("VmHWM"))
}
