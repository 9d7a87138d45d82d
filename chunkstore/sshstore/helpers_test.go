package sshstore

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/internal/testenv"
)

// writeKey makes an ed25519 key pair in dir (see testenv.WriteSSHKey).
func writeKey(t testing.TB, dir, name string) (string, ssh.PublicKey) {
	t.Helper()
	return testenv.WriteSSHKey(t, dir, name)
}

// fixture is a running server with a client key, an authorized_keys file
// and a known_hosts file that trusts the server.
type fixture struct {
	dir        string
	srv        *Server
	addr       string // 127.0.0.1:port
	port       string
	hostKey    string // file
	hostPub    ssh.PublicKey
	clientKey  string // file
	knownHosts string // file
	authKeys   string // file
	logs       *testenv.SyncBuffer
}

// startServer serves store on a fresh loopback port.
func startServer(t testing.TB, store chunkstore.Store, opts ServerOptions) *fixture {
	t.Helper()
	return startServerWith(t, store, opts, false, nil)
}

// startWriteServer serves store on a fresh loopback port, and lets the
// fixture's client key write.
func startWriteServer(t testing.TB, store chunkstore.Store, opts ServerOptions) *fixture {
	t.Helper()
	return startServerWith(t, store, opts, true, nil)
}

// startServerWith serves store, letting the client key write if write is
// set, and calls tweak, if not nil, on the server before it serves.
func startServerWith(t testing.TB, store chunkstore.Store, opts ServerOptions, write bool, tweak func(*Server)) *fixture {
	t.Helper()
	return startServerWrapped(t, store, opts, write, tweak, nil)
}

// startServerWrapped is startServerWith with the server's listener
// wrapped by wrap, if not nil.
func startServerWrapped(t testing.TB, store chunkstore.Store, opts ServerOptions, write bool, tweak func(*Server), wrap func(net.Listener) net.Listener) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), logs: &testenv.SyncBuffer{}}
	f.hostKey, f.hostPub = writeKey(t, f.dir, "host_key")
	var clientPub ssh.PublicKey
	f.clientKey, clientPub = writeKey(t, f.dir, "id_ed25519")
	f.authKeys = filepath.Join(f.dir, "authorized_keys")
	if err := os.WriteFile(f.authKeys, ssh.MarshalAuthorizedKey(clientPub), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = l.Addr().String()
	_, f.port, _ = net.SplitHostPort(f.addr)
	f.knownHosts = filepath.Join(f.dir, "known_hosts")
	line := knownhosts.Line([]string{f.addr}, f.hostPub) + "\n"
	if err := os.WriteFile(f.knownHosts, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	opts.HostKeyFile = f.hostKey
	opts.AuthorizedKeysFile = f.authKeys
	if write {
		opts.WriteAuthorizedKeysFile = f.authKeys
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if wrap != nil {
		l = wrap(l)
	}
	f.serve(t, store, opts, l, tweak)
	return f
}

// serve starts a server for store on l, closed at the end of the test.
func (f *fixture) serve(t testing.TB, store chunkstore.Store, opts ServerOptions, l net.Listener, tweak func(*Server)) {
	t.Helper()
	srv, err := NewServer(store, opts)
	if err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(srv)
	}
	f.srv = srv
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; err != ErrServerClosed {
			t.Errorf("Serve() = %v, want %v", err, ErrServerClosed)
		}
	})
}

// url returns the ssh:// URL of the store path p on the fixture's server.
func (f *fixture) url(p string) string {
	return "ssh://127.0.0.1:" + f.port + p
}

// clientOptions returns options that log in with the fixture's key and
// trust its host key.
func (f *fixture) clientOptions() ClientOptions {
	return ClientOptions{
		IdentityFiles:  []string{f.clientKey},
		KnownHostsFile: f.knownHosts,
		User:           "tester",
		Timeout:        10 * time.Second,
		DialTimeout:    10 * time.Second,
	}
}

// newClient opens a Store on the fixture's server, closed at the end of
// the test.
func (f *fixture) newClient(t testing.TB, opts ClientOptions) *Store {
	t.Helper()
	return dialURL(t, f.url("/store"), opts)
}

// dialURL opens the Store at the ssh:// URL u, closed at the end of the
// test.
func dialURL(t testing.TB, u string, opts ClientOptions) *Store {
	t.Helper()
	s, err := openURL(u, opts)
	if err != nil {
		t.Fatalf("Open(%q) = %v", u, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// openURL opens the Store at the ssh:// URL u.
func openURL(u string, opts ClientOptions) (*Store, error) {
	loc, err := chunkstore.ParseURL(u)
	if err != nil {
		return nil, err
	}
	return Open(context.Background(), loc, opts)
}

// counted returns s counted and retried as the opener composes it, with
// quick retries.
func counted(s *Store, retries int) *chunkstore.Counted {
	return chunkstore.NewCountedRetry(s, chunkstore.RetryOptions{Retries: retries, Backoff: time.Millisecond})
}

// randomChunks returns n chunks of size bytes each, from seed.
func randomChunks(seed uint64, n, size int) map[casync.ChunkID][]byte {
	r := rand.New(rand.NewPCG(seed, 1))
	m := make(map[casync.ChunkID][]byte, n)
	for i := 0; i < n; i++ {
		b := make([]byte, size)
		for j := range b {
			// Half random, half runs: compressible like real files.
			if j%512 < 256 {
				b[j] = byte(r.Uint32())
			} else {
				b[j] = byte(i)
			}
		}
		m[casync.SHA512_256.Sum(b)] = b
	}
	return m
}

// memoryStore returns a Memory store holding chunks.
func memoryStore(t testing.TB, chunks map[casync.ChunkID][]byte) *chunkstore.Memory {
	t.Helper()
	s := chunkstore.NewMemory(chunkstore.MemoryOptions{})
	for id, b := range chunks {
		if err := s.StoreChunk(context.Background(), id, b); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// localStore returns a Local store in a new directory holding chunks.
func localStore(t testing.TB, chunks map[casync.ChunkID][]byte) *chunkstore.Local {
	t.Helper()
	s, err := chunkstore.NewLocal(filepath.Join(t.TempDir(), "store"), chunkstore.LocalOptions{Create: true, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	for id, b := range chunks {
		if err := s.StoreChunk(context.Background(), id, b); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// chunkPath is where casync's layout keeps id under dir.
func chunkPath(dir string, id casync.ChunkID) string {
	h := id.String()
	return filepath.Join(dir, h[:4], h+".cacnk")
}
