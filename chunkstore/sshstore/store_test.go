package sshstore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

func TestGetChunk(t *testing.T) {
	chunks := randomChunks(1, 4, 20000)
	local := localStore(t, chunks)
	var ids []casync.ChunkID
	for id := range chunks {
		ids = append(ids, id)
	}
	// Alter two chunks on disk: one to garbage, one to a valid frame of
	// other data.
	garbage, swapped := ids[0], ids[1]
	if err := os.WriteFile(chunkPath(local.Dir(), garbage), []byte("not a zstd frame"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(chunkPath(local.Dir(), swapped), casync.CompressChunk(nil, []byte("other data")), 0o644); err != nil {
		t.Fatal(err)
	}
	unknown := casync.SHA512_256.Sum([]byte("never stored"))

	for _, backend := range []struct {
		name  string
		store chunkstore.Store
	}{
		{"local frames", local},
		{"plain store", struct{ chunkstore.Store }{local}}, // hides GetFrame
	} {
		t.Run(backend.name, func(t *testing.T) {
			f := startServer(t, backend.store, ServerOptions{})
			s := chunkstore.NewCounted(f.newClient(t, f.clientOptions()))
			tests := []struct {
				name    string
				id      casync.ChunkID
				want    []byte
				wantErr error
				has     bool
			}{
				{name: "present", id: ids[2], want: chunks[ids[2]], has: true},
				{name: "present again", id: ids[3], want: chunks[ids[3]], has: true},
				{name: "missing", id: unknown, wantErr: chunkstore.ErrNotFound},
				// HasChunk reports that a chunk file is there, as an
				// HTTP HEAD does; only reads verify it.
				{name: "garbage on disk", id: garbage, wantErr: chunkstore.ErrNotFound, has: true},
				{name: "wrong data on disk", id: swapped, wantErr: chunkstore.ErrNotFound, has: true},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					ctx := context.Background()
					got, err := s.GetChunk(ctx, tt.id)
					if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
						t.Fatalf("GetChunk(%s) = %v, want %v", tt.id, err, tt.wantErr)
					}
					if !bytes.Equal(got, tt.want) {
						t.Errorf("GetChunk(%s) = %d bytes, want %d", tt.id, len(got), len(tt.want))
					}
					has, err := s.HasChunk(ctx, tt.id)
					if err != nil || has != tt.has {
						t.Errorf("HasChunk(%s) = %v, %v, want %v", tt.id, has, err, tt.has)
					}
				})
			}
			logs := f.logs.String()
			for _, id := range []casync.ChunkID{garbage, swapped} {
				if !strings.Contains(logs, "corrupt chunk in store") || !strings.Contains(logs, id.String()) {
					t.Errorf("server log does not report corrupt chunk %s:\n%s", id, logs)
				}
			}
			if !hasLine(logs, "level=DEBUG", `msg="chunk request"`, "id="+ids[2].String(), "result=sent") {
				t.Errorf("server log has no debug line for request %s:\n%s", ids[2], logs)
			}
			st := s.Stats()
			if st.Requests != 10 || st.Hits != 6 || st.Misses != 4 || st.Errors != 0 {
				t.Errorf("Stats() = %+v, want 10 requests, 6 hits, 4 misses, 0 errors", st)
			}
		})
	}
}

// lyingStore hands the server frames without checking them, breaking the
// chunkstore.FrameStore contract, so that the client's own check shows.
type lyingStore struct {
	chunkstore.Store
	frame []byte
}

func (l *lyingStore) GetFrame(context.Context, casync.ChunkID) ([]byte, error) {
	return l.frame, nil
}

func TestClientVerifies(t *testing.T) {
	id := casync.SHA512_256.Sum([]byte("right"))
	tests := []struct {
		name  string
		frame []byte
	}{
		{"wrong data", casync.CompressChunk(nil, []byte("wrong"))},
		{"garbage", []byte("garbage")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startServer(t, &lyingStore{Store: chunkstore.NewMemory(chunkstore.MemoryOptions{}), frame: tt.frame}, ServerOptions{})
			s := counted(f.newClient(t, f.clientOptions()), 3)
			got, err := s.GetChunk(context.Background(), id)
			var ce *casync.ChecksumError
			if !errors.As(err, &ce) && !errors.Is(err, casync.ErrFormat) {
				t.Fatalf("GetChunk(%s) = %d bytes, %v, want a checksum or format error", id, len(got), err)
			}
			if got != nil {
				t.Errorf("GetChunk(%s) returned %d bytes with error %v", id, len(got), err)
			}
			if st := s.Stats(); st.Corrupt != 1 || st.Errors != 1 {
				t.Errorf("Stats() = %+v, want 1 corrupt, 1 error", st)
			}
		})
	}
}

func TestDecodeAnswer(t *testing.T) {
	right := []byte("right")
	id := casync.SHA512_256.Sum(right)
	tests := []struct {
		name    string
		m       message
		want    []byte
		wantErr bool
	}{
		{"compressed", message{flags: chunkCompressed, data: casync.CompressChunk(nil, right)}, right, false},
		{"uncompressed", message{data: right}, right, false},
		{"compressed wrong", message{flags: chunkCompressed, data: casync.CompressChunk(nil, []byte("wrong"))}, nil, true},
		{"compressed garbage", message{flags: chunkCompressed, data: []byte("garbage")}, nil, true},
		{"uncompressed wrong", message{data: []byte("wrong")}, nil, true},
		{"raw frame taken as uncompressed", message{data: casync.CompressChunk(nil, right)}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.m.typ, tt.m.id = msgChunk, id
			got, err := decodeAnswer(casync.SHA512_256, id, tt.m)
			if (err != nil) != tt.wantErr || !bytes.Equal(got, tt.want) {
				t.Errorf("decodeAnswer(%s) = %q, %v, want %q, error %v", tt.name, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestConcurrentGets(t *testing.T) {
	chunks := randomChunks(3, 64, 2000)
	f := startServer(t, memoryStore(t, chunks), ServerOptions{})
	opts := f.clientOptions()
	opts.Sessions = 3
	opts.InFlight = 4
	s := f.newClient(t, opts)
	var ids []casync.ChunkID
	for id := range chunks {
		ids = append(ids, id)
	}
	missing := casync.SHA512_256.Sum([]byte("missing"))
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2*len(ids); i++ {
				// Every goroutine asks for the same IDs in a shifted order,
				// so requests for one ID overlap.
				id := ids[(i+g)%len(ids)]
				got, err := s.GetChunk(context.Background(), id)
				if err != nil || !bytes.Equal(got, chunks[id]) {
					errs <- err
					return
				}
				if i%20 == 0 {
					if _, err := s.GetChunk(context.Background(), missing); !errors.Is(err, chunkstore.ErrNotFound) {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent GetChunk: %v", err)
	}
}

func TestAuthAndHostKeys(t *testing.T) {
	f := startServer(t, chunkstore.NewMemory(chunkstore.MemoryOptions{}), ServerOptions{})
	otherKey, otherPub := writeKey(t, f.dir, "other_key")
	changed := filepath.Join(f.dir, "known_hosts_changed")
	if err := os.WriteFile(changed, []byte(knownhosts.Line([]string{f.addr}, otherPub)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	unknown := filepath.Join(f.dir, "known_hosts_unknown")
	if err := os.WriteFile(unknown, []byte(knownhosts.Line([]string{"[127.0.0.1]:1"}, f.hostPub)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fp := ssh.FingerprintSHA256(f.hostPub)
	tests := []struct {
		name     string
		edit     func(*ClientOptions)
		wantErr  error
		wantText []string
	}{
		{name: "wrong client key", edit: func(o *ClientOptions) { o.IdentityFiles = []string{otherKey} },
			wantErr: ErrAuth, wantText: []string{"authorized_keys", otherKey, "tester"}},
		{name: "unknown host", edit: func(o *ClientOptions) { o.KnownHostsFile = unknown },
			wantErr: ErrHostKey, wantText: []string{"not a known host", f.addr, fp, unknown}},
		{name: "changed host key", edit: func(o *ClientOptions) { o.KnownHostsFile = changed },
			wantErr: ErrHostKey, wantText: []string{"HOST KEY CHANGED", f.addr, fp, changed + ":1", ssh.FingerprintSHA256(otherPub)}},
		{name: "no known_hosts file", edit: func(o *ClientOptions) { o.KnownHostsFile = filepath.Join(f.dir, "nope") },
			wantErr: ErrHostKey, wantText: []string{"nope"}},
		{name: "missing identity", edit: func(o *ClientOptions) { o.IdentityFiles = []string{filepath.Join(f.dir, "nokey")} },
			wantErr: ErrAuth, wantText: []string{"nokey"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := f.clientOptions()
			tt.edit(&opts)
			s, err := openURL(f.url("/store"), opts)
			if err == nil {
				s.Close()
				t.Fatalf("Open() succeeded, want %v", tt.wantErr)
			}
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Open() = %v, want %v", err, tt.wantErr)
			}
			for _, want := range tt.wantText {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("New() error %q does not mention %q", err, want)
				}
			}
		})
	}
}

// TestNoPasswords checks that the server offers public keys only.
func TestNoPasswords(t *testing.T) {
	f := startServer(t, chunkstore.NewMemory(chunkstore.MemoryOptions{}), ServerOptions{})
	for _, auth := range []ssh.AuthMethod{
		ssh.Password(""),
		ssh.Password("root"),
		ssh.KeyboardInteractive(func(string, string, []string, []bool) ([]string, error) { return nil, nil }),
	} {
		c, err := ssh.Dial("tcp", f.addr, &ssh.ClientConfig{
			User:            "root",
			Auth:            []ssh.AuthMethod{auth},
			HostKeyCallback: ssh.FixedHostKey(f.hostPub),
		})
		if err == nil {
			c.Close()
			t.Fatalf("ssh.Dial with %T succeeded, want refused", auth)
		}
		if !strings.Contains(err.Error(), "attempted methods [none]") {
			t.Errorf("ssh.Dial with %T = %v, want only the none method tried (no password offered)", auth, err)
		}
	}
}

// rawClient logs in to the fixture's server with x/crypto/ssh.
func rawClient(t *testing.T, f *fixture) *ssh.Client {
	t.Helper()
	b, err := os.ReadFile(f.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ssh.Dial("tcp", f.addr, &ssh.ClientConfig{
		User:            "tester",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(f.hostPub),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestCommandsRefused(t *testing.T) {
	f := startServer(t, chunkstore.NewMemory(chunkstore.MemoryOptions{}), ServerOptions{StorePath: "/srv/store/"})
	c := rawClient(t, f)
	tests := []struct {
		name    string
		cmd     string // "" runs a shell
		stderr  string
		status  int
		stdin   []byte
		wantOut []string // message types the server sends
	}{
		{name: "shell", stderr: "no shell here", status: 1},
		{name: "other program", cmd: "cat /etc/passwd", stderr: `"cat": command not found`, status: 1},
		{name: "injection", cmd: "casync pull - - - /srv/store; id", stderr: "shell syntax", status: 1},
		// A push with no index may be a query, which needs no write
		// access: the server refuses it after HELLO, once the client's
		// HELLO shows that it is not one.
		{name: "push", cmd: "casync push - - - /srv/store", stdin: appendHello(nil, featPushChunks),
			stderr: "read-only", status: 1, wantOut: []string{"HELLO", "ABORT"}},
		{name: "push, no hello", cmd: "casync push - - - /srv/store", stderr: "read-only", status: 1, wantOut: []string{"HELLO"}},
		{name: "push index", cmd: "casync push - - /srv/x.caidx /srv/store", stdin: appendHello(nil, featPushChunks|featPushIndex),
			stderr: "read-only", status: 1},
		{name: "index", cmd: "casync pull - - /srv/x.caidx /srv/store", stderr: "pulling a index", status: 1},
		{name: "wrong store", cmd: "casync pull - - - /srv/other", stderr: `no store at "/srv/other"`, status: 1},
		{name: "garbage protocol", cmd: "casync pull - - - /srv/store", stdin: []byte("GET / HTTP/1.0\r\n\r\n"),
			stderr: "casync protocol error", status: 1, wantOut: []string{"HELLO", "ABORT"}},
		{name: "push hello", cmd: "casync pull - - - /srv/store/", stdin: appendHello(nil, featPushChunks),
			stderr: "only serves chunks", status: 1, wantOut: []string{"HELLO", "ABORT"}},
		{name: "hello then close", cmd: "casync pull - - - /srv//store", stdin: appendHello(nil, featPullChunks),
			status: 0, wantOut: []string{"HELLO"}},
		// GOODBYE ends the session at once, as casync's own server
		// does, with the answers not yet sent.
		{name: "hello, goodbye", cmd: "casync pull - - - /srv/store",
			stdin:  append(appendHello(nil, featPullChunks), appendGoodbye(nil)...),
			status: 0, wantOut: []string{"HELLO"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sess, err := c.NewSession()
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()
			var stdout, stderr bytes.Buffer
			sess.Stdout, sess.Stderr = &stdout, &stderr
			sess.Stdin = bytes.NewReader(tt.stdin)
			if tt.cmd == "" {
				err = sess.Shell()
				if err == nil {
					err = sess.Wait()
				}
			} else {
				err = sess.Run(tt.cmd)
			}
			status := 0
			var ee *ssh.ExitError
			if errors.As(err, &ee) {
				status = ee.ExitStatus()
			} else if err != nil {
				t.Fatalf("Run(%q) = %v", tt.cmd, err)
			}
			if status != tt.status || !strings.Contains(stderr.String(), tt.stderr) {
				t.Errorf("Run(%q) = status %d, stderr %q; want %d, %q", tt.cmd, status, stderr.String(), tt.status, tt.stderr)
			}
			var got []string
			r := bytes.NewReader(stdout.Bytes())
			for {
				m, err := readMessage(r)
				if err != nil {
					if err != io.EOF {
						t.Errorf("server output: %v", err)
					}
					break
				}
				got = append(got, typeName(m.typ))
			}
			if strings.Join(got, " ") != strings.Join(tt.wantOut, " ") {
				t.Errorf("Run(%q) sent %v, want %v", tt.cmd, got, tt.wantOut)
			}
		})
	}
}

func TestTooManySessions(t *testing.T) {
	f := startServer(t, chunkstore.NewMemory(chunkstore.MemoryOptions{}), ServerOptions{MaxSessions: 1})
	c := rawClient(t, f)
	first, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, err := c.NewSession()
	var oce *ssh.OpenChannelError
	if !errors.As(err, &oce) || oce.Reason != ssh.ResourceShortage {
		if second != nil {
			second.Close()
		}
		t.Fatalf("second NewSession() = %v, want resource shortage", err)
	}
	first.Close()
	// The slot comes back once the first session ends.
	deadline := time.Now().Add(5 * time.Second)
	for {
		third, err := c.NewSession()
		if err == nil {
			third.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("NewSession() after the first closed = %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// blockingStore blocks every GetChunk until its context ends.
type blockingStore struct {
	chunkstore.Store
	started chan struct{}
	once    sync.Once
}

func (b *blockingStore) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	b.once.Do(func() { close(b.started) })
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestServerGoneMidRequest checks that a request in flight fails promptly
// when the server goes away, and that the retry on a new session does not
// hang either.
func TestServerGoneMidRequest(t *testing.T) {
	bs := &blockingStore{Store: chunkstore.NewMemory(chunkstore.MemoryOptions{}), started: make(chan struct{})}
	f := startServer(t, bs, ServerOptions{})
	opts := f.clientOptions()
	opts.Timeout = time.Minute // must not be what ends the request
	opts.DialTimeout = 5 * time.Second
	s := counted(f.newClient(t, opts), 1)
	go func() {
		<-bs.started
		f.srv.Close()
	}()
	start := time.Now()
	_, err := s.GetChunk(context.Background(), idOf(1))
	if err == nil || errors.Is(err, chunkstore.ErrNotFound) {
		t.Fatalf("GetChunk() with the server closed = %v, want a connection error", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("GetChunk() took %v after the server closed", d)
	}
	t.Logf("GetChunk() = %v after %v", err, time.Since(start))
	if st := s.Stats(); st.Retries != 1 || st.Errors != 1 {
		t.Errorf("Stats() = %+v, want 1 retry and 1 error", st)
	}
}

// TestHungServer checks the per-request timeout against a server that
// stops answering, and that the next request gets a new session.
func TestHungServer(t *testing.T) {
	chunks := randomChunks(4, 1, 1000)
	var id casync.ChunkID
	for id = range chunks {
	}
	mem := memoryStore(t, chunks)
	bs := &hangOnce{Store: mem, hang: idOf(9)}
	f := startServer(t, bs, ServerOptions{})
	opts := f.clientOptions()
	opts.Sessions = 1
	opts.Timeout = 300 * time.Millisecond
	s := f.newClient(t, opts)
	start := time.Now()
	_, err := s.GetChunk(context.Background(), idOf(9))
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrSession) {
		t.Fatalf("GetChunk(hanging) = %v, want a timeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("GetChunk(hanging) took %v with a %v timeout", d, opts.Timeout)
	}
	got, err := s.GetChunk(context.Background(), id)
	if err != nil || !bytes.Equal(got, chunks[id]) {
		t.Errorf("GetChunk() after a timeout = %v, want the chunk on a new session", err)
	}
}

// hangOnce blocks GetChunk of one ID until the context ends.
type hangOnce struct {
	chunkstore.Store
	hang casync.ChunkID
}

func (h *hangOnce) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	if id == h.hang {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return h.Store.GetChunk(ctx, id)
}

// TestReconnect restarts the server between two requests: the client's
// session is broken and the request is retried (by Retry, as the opener
// composes it) on a new one.
func TestReconnect(t *testing.T) {
	chunks := randomChunks(5, 2, 5000)
	mem := memoryStore(t, chunks)
	f := startServer(t, mem, ServerOptions{})
	s := counted(f.newClient(t, f.clientOptions()), 0)
	for id := range chunks {
		if _, err := s.GetChunk(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	f.srv.Close()
	l, err := net.Listen("tcp", f.addr)
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", f.addr, err)
	}
	f.serve(t, mem, ServerOptions{HostKeyFile: f.hostKey, AuthorizedKeysFile: f.authKeys}, l, nil)
	for id, want := range chunks {
		got, err := s.GetChunk(context.Background(), id)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("GetChunk(%s) after restart = %v", id, err)
		}
	}
}

func TestClosedStore(t *testing.T) {
	f := startServer(t, chunkstore.NewMemory(chunkstore.MemoryOptions{}), ServerOptions{})
	s := f.newClient(t, f.clientOptions())
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetChunk(context.Background(), idOf(1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("GetChunk() after Close = %v, want %v", err, net.ErrClosed)
	}
}

func TestContextCanceled(t *testing.T) {
	bs := &blockingStore{Store: chunkstore.NewMemory(chunkstore.MemoryOptions{}), started: make(chan struct{})}
	f := startServer(t, bs, ServerOptions{})
	s := f.newClient(t, f.clientOptions())
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-bs.started
		cancel()
	}()
	if _, err := s.GetChunk(ctx, idOf(1)); !errors.Is(err, context.Canceled) {
		t.Errorf("GetChunk(canceled) = %v, want %v", err, context.Canceled)
	}
}

func TestNewServerErrors(t *testing.T) {
	dir := t.TempDir()
	hostKey, pub := writeKey(t, dir, "host")
	good := filepath.Join(dir, "authorized_keys")
	os.WriteFile(good, append([]byte("# comment\n\n"), ssh.MarshalAuthorizedKey(pub)...), 0o600)
	bad := filepath.Join(dir, "bad_keys")
	os.WriteFile(bad, []byte("ssh-ed25519 AAAAnotbase64\n"), 0o600)
	empty := filepath.Join(dir, "empty_keys")
	os.WriteFile(empty, []byte("# nobody\n"), 0o600)
	tests := []struct {
		name    string
		opts    ServerOptions
		wantErr string
	}{
		{"ok", ServerOptions{HostKeyFile: hostKey, AuthorizedKeysFile: good}, ""},
		{"no host key", ServerOptions{AuthorizedKeysFile: good}, "host key"},
		{"no authorized keys", ServerOptions{HostKeyFile: hostKey}, "authorized_keys"},
		{"missing host key", ServerOptions{HostKeyFile: filepath.Join(dir, "nope"), AuthorizedKeysFile: good}, "nope"},
		{"host key not a key", ServerOptions{HostKeyFile: good, AuthorizedKeysFile: good}, "host key"},
		{"bad authorized line", ServerOptions{HostKeyFile: hostKey, AuthorizedKeysFile: bad}, "bad_keys:1"},
		{"no authorized keys in file", ServerOptions{HostKeyFile: hostKey, AuthorizedKeysFile: empty}, "nobody could log in"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, err := NewServer(chunkstore.NewMemory(chunkstore.MemoryOptions{}), tt.opts)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("NewServer() = %v", err)
				}
				srv.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("NewServer() = %v, want error mentioning %q", err, tt.wantErr)
			}
		})
	}
}

// hasLine reports whether some line of logs contains every one of parts.
func hasLine(logs string, parts ...string) bool {
	for _, line := range strings.Split(logs, "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			return true
		}
	}
	return false
}

// TestGetFrame: a frame comes as the server's store holds it, verified,
// so a Cache stores it without recompressing it; a missing chunk is
// ErrNotFound and a bad frame a ChecksumError.
func TestGetFrame(t *testing.T) {
	chunks := randomChunks(8, 3, 30000)
	local := localStore(t, chunks)
	f := startServer(t, local, ServerOptions{})
	s := f.newClient(t, f.clientOptions())
	for id := range chunks {
		got, err := s.GetFrame(context.Background(), id)
		if want, _ := os.ReadFile(chunkPath(local.Dir(), id)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("GetFrame(%s) = %d bytes, %v; want the %d bytes of the stored frame", id, len(got), err, len(want))
		}
	}
	if _, err := s.GetFrame(context.Background(), casync.SHA512_256.Sum([]byte("never stored"))); !errors.Is(err, chunkstore.ErrNotFound) {
		t.Errorf("GetFrame(missing) = %v, want ErrNotFound", err)
	}
	id := casync.SHA512_256.Sum([]byte("right"))
	lying := startServer(t, &lyingStore{Store: chunkstore.NewMemory(chunkstore.MemoryOptions{}), frame: casync.CompressChunk(nil, []byte("wrong"))}, ServerOptions{})
	var ce *casync.ChecksumError
	if _, err := lying.newClient(t, lying.clientOptions()).GetFrame(context.Background(), id); !errors.As(err, &ce) {
		t.Errorf("GetFrame(wrong frame) = %v, want a ChecksumError", err)
	}
}
