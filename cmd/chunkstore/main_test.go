package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/opener"
	"github.com/bootfs/bootfs/internal/testenv"
)

func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsage(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		args    []string
		want    int
		wantOut string
	}{
		{"no args", nil, 2, "usage: chunkstore COMMAND"},
		{"help", []string{"help"}, 0, "usage: chunkstore COMMAND"},
		{"unknown", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"bad flag", []string{"verify", "--nope"}, 2, "flag provided but not defined"},
		{"no dir", []string{"verify"}, 2, "--dir is required"},
		{"bad digest", []string{"verify", "--dir", dir, "--digest", "md5"}, 2, "unknown digest"},
		{"bad log level", []string{"verify", "--dir", dir, "--log-level", "loud"}, 2, "bad --log-level"},
		{"serve nothing", []string{"serve", "--dir", dir}, 2, "nothing to serve"},
		{"serve half tls", []string{"serve", "--dir", dir, "--http", ":0", "--tls-cert", "x"}, 2, "go together"},
		{"write keys without ssh", []string{"serve", "--dir", dir, "--http", ":0", "--write-authorized-keys", "k"}, 2, "are for --ssh"},
		{"index dir without writers", []string{"serve", "--dir", dir, "--ssh", ":0", "--host-key", "h", "--authorized-keys", "a", "--index-dir", dir}, 2, "--index-dir needs --write-authorized-keys"},
		{"prune no index", []string{"prune", "--dir", dir}, 2, "at least one INDEX"},
		{"verify missing dir", []string{"verify", "--dir", filepath.Join(dir, "nope")}, 1, "no such file"},
		{"flag help", []string{"verify", "-h"}, 0, "usage: chunkstore verify"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := runCmd(t, tt.args...)
			if code != tt.want || !strings.Contains(out+errs, tt.wantOut) {
				t.Errorf("chunkstore %q = %d, %q; want %d and %q", tt.args, code, out+errs, tt.want, tt.wantOut)
			}
		})
	}
}

func storeWith(t *testing.T, n int) (*chunkstore.Local, []casync.ChunkID) {
	t.Helper()
	l, err := chunkstore.NewLocal(t.TempDir(), chunkstore.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []casync.ChunkID
	for i := range n {
		data := bytes.Repeat([]byte{byte(i)}, 100+i)
		id := casync.SHA512_256.Sum(data)
		if err := l.StoreChunk(context.Background(), id, data); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return l, ids
}

// storeSHA256Chunk adds a chunk with a SHA-256 ID to the store in dir, as
// mkimage --digest sha256 does, and returns its ID.
func storeSHA256Chunk(t *testing.T, dir string) casync.ChunkID {
	t.Helper()
	l, err := chunkstore.NewLocal(dir, chunkstore.LocalOptions{Digest: casync.SHA256})
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("a chunk of an image made with --digest sha256")
	id := casync.SHA256.Sum(data)
	if err := l.StoreChunk(context.Background(), id, data); err != nil {
		t.Fatal(err)
	}
	return id
}

func TestVerifyCommand(t *testing.T) {
	l, ids := storeWith(t, 5)
	// A store shared by images made with either digest holds chunks of
	// both: by default, verify takes each as good, and --repair keeps it.
	id256 := storeSHA256Chunk(t, l.Dir())
	for _, args := range [][]string{{"verify", "--dir", l.Dir()}, {"verify", "--dir", l.Dir(), "--repair"}} {
		if code, out, errs := runCmd(t, args...); code != 0 || !strings.Contains(out, "verified 6 chunks") || !strings.Contains(out, "0 bad") {
			t.Fatalf("%v on a store with chunks of both digests = %d, %q %q", args, code, out, errs)
		}
	}
	if ok, _ := l.HasChunk(context.Background(), id256); !ok {
		t.Fatal("verify --repair removed a good SHA-256 chunk")
	}
	// A missing store is an error, with no summary of nothing verified.
	if code, out, errs := runCmd(t, "verify", "--dir", filepath.Join(l.Dir(), "missing")); code != 1 || out != "" || !strings.Contains(errs, "no such file") {
		t.Errorf("verify of a missing dir = %d, %q %q; want 1, no summary, and the cause", code, out, errs)
	}
	// A named digest is strict.
	if code, out, _ := runCmd(t, "verify", "--dir", l.Dir(), "--digest", "sha512-256"); code != 1 || !strings.Contains(out, "1 bad") {
		t.Errorf("verify --digest sha512-256 = %d, %q; want the SHA-256 chunk bad", code, out)
	}
	if err := os.Remove(filepath.Join(l.Dir(), chunkstore.ChunkPath(id256))); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(l.Dir(), chunkstore.ChunkPath(ids[0])), []byte("bad"), 0o644)
	code, out, errs := runCmd(t, "verify", "--dir", l.Dir())
	if code != 1 || !strings.Contains(out, "1 bad") || !strings.Contains(errs, "--repair") {
		t.Errorf("verify(corrupt) = %d, %q %q; want 1 and a hint", code, out, errs)
	}
	code, out, _ = runCmd(t, "verify", "--dir", l.Dir(), "--repair")
	if code != 0 || !strings.Contains(out, "1 removed") || !strings.Contains(out, "removed\t") {
		t.Errorf("verify --repair = %d, %q", code, out)
	}
}

// TestVerifyCommandNonRegular is issue 16 item 7: a FIFO named like a
// chunk, where verify once said "verified 0 chunks" and exited 0, is a
// bad chunk; --repair removes it.
func TestVerifyCommandNonRegular(t *testing.T) {
	l, _ := storeWith(t, 0)
	id := casync.SHA512_256.Sum([]byte("fifo"))
	name := filepath.Join(l.Dir(), chunkstore.ChunkPath(id))
	os.MkdirAll(filepath.Dir(name), 0o755)
	if err := syscall.Mkfifo(name, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCmd(t, "verify", "--dir", l.Dir())
	if code != 1 || !strings.Contains(out, "1 bad") || !strings.Contains(out, "is a FIFO") {
		t.Errorf("verify of a FIFO chunk = %d, %q %q; want 1 and the FIFO named", code, out, errs)
	}
	code, out, _ = runCmd(t, "verify", "--dir", l.Dir(), "--repair")
	if code != 0 || !strings.Contains(out, "1 removed") {
		t.Errorf("verify --repair of a FIFO chunk = %d, %q", code, out)
	}
	if _, err := os.Lstat(name); err == nil {
		t.Error("verify --repair left the FIFO")
	}
}

func TestPruneCommand(t *testing.T) {
	bin := testenv.LookPath(t, "casync")
	tree := t.TempDir()
	os.WriteFile(filepath.Join(tree, "f"), bytes.Repeat([]byte("prune me not "), 100000), 0o644)
	l, extra := storeWith(t, 4)
	index := filepath.Join(t.TempDir(), "x.caidx")
	if b, err := exec.Command(bin, "make", "--store="+l.Dir(), index, tree).CombinedOutput(); err != nil {
		t.Fatalf("casync make: %v\n%s", err, b)
	}
	old := time.Now().Add(-time.Hour)
	for _, id := range extra {
		os.Chtimes(filepath.Join(l.Dir(), chunkstore.ChunkPath(id)), old, old)
	}
	code, out, errs := runCmd(t, "prune", "--dir", l.Dir(), index)
	if code != 0 || !strings.Contains(out, "dry run: would remove 4 of") || strings.Count(out, "would remove\t") != 4 {
		t.Fatalf("prune (dry run) = %d, %q %q", code, out, errs)
	}
	if ok, _ := l.HasChunk(context.Background(), extra[0]); !ok {
		t.Fatal("dry run removed a chunk")
	}
	code, out, errs = runCmd(t, "prune", "--dir", l.Dir(), "--yes", index)
	if code != 0 || !strings.Contains(out, "pruned 4 of") {
		t.Fatalf("prune --yes = %d, %q %q", code, out, errs)
	}
	if ok, _ := l.HasChunk(context.Background(), extra[0]); ok {
		t.Error("prune --yes kept an unreferenced chunk")
	}
	tmp := t.TempDir()
	out2 := filepath.Join(tmp, "out")
	if b, err := exec.Command(bin, "extract", "--store="+l.Dir(), index, out2).CombinedOutput(); err != nil {
		t.Errorf("casync extract after prune: %v\n%s", err, b)
	}
}

// syncWriter lets the test read the log while the server writes it.
type pipeLog struct{ lines chan string }

func (p *pipeLog) Write(b []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		select {
		case p.lines <- l:
		default:
		}
	}
	return len(b), nil
}

func TestServeCommand(t *testing.T) {
	l, ids := storeWith(t, 2)
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("tok\n"), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	log := &pipeLog{lines: make(chan string, 100)}
	done := make(chan int)
	go func() {
		done <- run(ctx, []string{"serve", "--dir", l.Dir(), "--http", "127.0.0.1:0", "--write-token-file", tokenFile, "--log-level", "debug"}, io.Discard, log)
	}()
	var url string
	re := regexp.MustCompile(`url=(http://\S+)`)
	for url == "" {
		select {
		case line := <-log.lines:
			if m := re.FindStringSubmatch(line); m != nil {
				url = m[1]
			}
		case code := <-done:
			t.Fatalf("serve exited with %d", code)
		case <-time.After(10 * time.Second):
			t.Fatal("serve did not log its address")
		}
	}
	client, err := chunkstore.NewHTTP(url, chunkstore.HTTPOptions{Token: "tok"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.GetChunk(ctx, ids[0]); err != nil {
		t.Errorf("GetChunk from chunkstore serve = %v", err)
	}
	data := []byte("new chunk")
	if err := client.StoreChunk(ctx, casync.SHA512_256.Sum(data), data); err != nil {
		t.Errorf("StoreChunk with the token = %v", err)
	}
	// Chunks of images made with --digest sha256 are served and taken
	// too: the server cannot know an ID's digest, and accepts either.
	client256, err := chunkstore.NewHTTP(url, chunkstore.HTTPOptions{Token: "tok", Digest: casync.SHA256})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client256.GetChunk(ctx, storeSHA256Chunk(t, l.Dir())); err != nil {
		t.Errorf("GetChunk of a SHA-256 chunk from chunkstore serve = %v", err)
	}
	data = []byte("new chunk of a sha256 image")
	if err := client256.StoreChunk(ctx, casync.SHA256.Sum(data), data); err != nil {
		t.Errorf("StoreChunk of a SHA-256 chunk with the token = %v", err)
	}
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	sc := bufio.NewScanner(resp.Body)
	found := false
	for sc.Scan() {
		found = found || strings.HasPrefix(sc.Text(), `bootfs_chunkstore_http_requests_total{method="PUT",code="201"} 2`)
	}
	resp.Body.Close()
	if !found {
		t.Error("/metrics does not count the two PUTs")
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("serve after cancel exited %d, want 0", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop on cancel")
	}
}

// TestServeSSHWrite runs `chunkstore serve --ssh` with a reader key and a
// writer key: the writer stores a chunk through our SSH client, the
// reader may not.
func TestServeSSHWrite(t *testing.T) {
	l, _ := storeWith(t, 1)
	dir := t.TempDir()
	hostKey, hostPub := testenv.WriteSSHKey(t, dir, "host_key")
	readerKey, readerPub := testenv.WriteSSHKey(t, dir, "reader")
	writerKey, writerPub := testenv.WriteSSHKey(t, dir, "writer")
	readers := filepath.Join(dir, "authorized_keys")
	writers := filepath.Join(dir, "write_authorized_keys")
	os.WriteFile(readers, ssh.MarshalAuthorizedKey(readerPub), 0o600)
	os.WriteFile(writers, ssh.MarshalAuthorizedKey(writerPub), 0o600)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := &pipeLog{lines: make(chan string, 100)}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--dir", l.Dir(), "--ssh", "127.0.0.1:0", "--host-key", hostKey,
			"--authorized-keys", readers, "--write-authorized-keys", writers, "--index-dir", dir}, io.Discard, log)
	}()
	var addr string
	re := regexp.MustCompile(`addr=(127\.0\.0\.1:\d+).*writable=true`)
	for addr == "" {
		select {
		case line := <-log.lines:
			if m := re.FindStringSubmatch(line); m != nil {
				addr = m[1]
			}
		case code := <-done:
			t.Fatalf("serve exited with %d", code)
		case <-time.After(10 * time.Second):
			t.Fatal("serve did not log its SSH address as writable")
		}
	}
	knownHosts := filepath.Join(dir, "known_hosts")
	os.WriteFile(knownHosts, []byte(knownhosts.Line([]string{knownhosts.Normalize(addr)}, hostPub)+"\n"), 0o600)

	data := bytes.Repeat([]byte("written over ssh\n"), 500)
	id := casync.SHA512_256.Sum(data)
	for _, tt := range []struct {
		name    string
		key     string
		wantErr string
	}{
		{name: "reader", key: readerKey, wantErr: "may read but not write"},
		{name: "writer", key: writerKey},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o, err := opener.Open(ctx, "ssh://root@"+addr+l.Dir(), opener.Options{Credentials: opener.Credentials{
				SSHKeys:       []string{tt.key},
				SSHKnownHosts: knownHosts,
			}})
			if err != nil {
				t.Fatal(err)
			}
			defer o.Close()
			client := o.Store
			err = client.StoreChunk(ctx, id, data)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("StoreChunk as %s = %v, want an error saying %q", tt.name, err, tt.wantErr)
				}
				if has, _ := l.HasChunk(ctx, id); has {
					t.Fatalf("StoreChunk as %s stored the chunk", tt.name)
				}
				return
			}
			if err != nil {
				t.Fatalf("StoreChunk as %s = %v", tt.name, err)
			}
			if got, err := l.GetChunk(ctx, id); err != nil || !bytes.Equal(got, data) {
				t.Errorf("chunk in the served directory = %d bytes, %v; want the %d stored", len(got), err, len(data))
			}
		})
	}

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("serve after cancel exited %d, want 0", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop on cancel")
	}
}
