package mkimage

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/sshstore"
	"github.com/bootfs/bootfs/internal/testenv"
)

// sshStore is a local store served over SSH on loopback by
// sshStoreServer.
type sshStore struct {
	url, dir             string
	writerKey, readerKey string
	// reads counts the chunks the server read from the store to send
	// them; sent the bytes it wrote to its connections.
	reads, sent *atomic.Int64
}

// servedStore counts the chunks read from a Local store (to be sent).
type servedStore struct {
	*chunkstore.Local
	reads *atomic.Int64
}

func (s servedStore) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	b, err := s.Local.GetChunk(ctx, id)
	if err == nil {
		s.reads.Add(1)
	}
	return b, err
}

func (s servedStore) GetFrame(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	b, err := s.Local.GetFrame(ctx, id)
	if err == nil {
		s.reads.Add(1)
	}
	return b, err
}

// sentListener counts the bytes written to its connections.
type sentListener struct {
	net.Listener
	sent *atomic.Int64
}

func (l sentListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return sentConn{Conn: c, sent: l.sent}, nil
}

type sentConn struct {
	net.Conn
	sent *atomic.Int64
}

func (c sentConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.sent.Add(int64(n))
	return n, err
}

// sshStoreServer serves a new local store over SSH on loopback, with one
// key that may write and one that may only read. It sets
// BOOTFS_SSH_KNOWN_HOSTS to trust the server.
func sshStoreServer(t *testing.T) sshStore {
	t.Helper()
	tmp := t.TempDir()
	st := sshStore{dir: filepath.Join(tmp, "store"), reads: new(atomic.Int64), sent: new(atomic.Int64)}
	local, err := chunkstore.NewLocal(st.dir, chunkstore.LocalOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	hostKey, hostPub := testenv.WriteSSHKey(t, tmp, "host_key")
	writerKey, writerPub := testenv.WriteSSHKey(t, tmp, "writer")
	readerKey, readerPub := testenv.WriteSSHKey(t, tmp, "reader")
	st.writerKey, st.readerKey = writerKey, readerKey
	readers := filepath.Join(tmp, "authorized_keys")
	writers := filepath.Join(tmp, "write_authorized_keys")
	if err := os.WriteFile(readers, ssh.MarshalAuthorizedKey(readerPub), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(writers, ssh.MarshalAuthorizedKey(writerPub), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := sshstore.NewServer(servedStore{Local: local, reads: st.reads}, sshstore.ServerOptions{
		HostKeyFile:             hostKey,
		AuthorizedKeysFile:      readers,
		WriteAuthorizedKeysFile: writers,
		StorePath:               st.dir,
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(sentListener{Listener: l, sent: st.sent})
	t.Cleanup(func() { srv.Close() })
	addr := l.Addr().String()
	known := filepath.Join(tmp, "known_hosts")
	if err := os.WriteFile(known, []byte(knownhosts.Line([]string{addr}, hostPub)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(sshstore.EnvKnownHosts, known)
	st.url = "ssh://mkimage@" + addr + st.dir
	return st
}

// TestConvertToSSHStore converts a tree into a store behind our SSH
// server and checks that the server's directory ends up holding exactly
// what a conversion into a local directory writes, verified, and that a
// second conversion writes nothing new and downloads no chunk: the
// uploader asks the server in query sessions, which move no chunk data.
func TestConvertToSSHStore(t *testing.T) {
	st := sshStoreServer(t)
	t.Setenv(sshstore.EnvKeys, st.writerKey)
	tmp := t.TempDir()
	root := filepath.Join(tmp, "root")
	writeTree(t, root)

	index := filepath.Join(tmp, "ssh.caidx")
	sum := convert(t, Source{Kind: "dir", Path: root}, st.url, Options{IndexOut: index, Jobs: 2})
	if sum.NewChunks != sum.UniqueChunks || sum.BytesWritten == 0 {
		t.Errorf("Convert into an empty SSH store: %d new chunks (%d bytes written), want %d", sum.NewChunks, sum.BytesWritten, sum.UniqueChunks)
	}
	if n := st.reads.Load(); n != 0 {
		t.Errorf("Convert into an empty SSH store read %d chunks from it, want 0", n)
	}
	vs, err := chunkstore.Verify(context.Background(), st.dir, false, chunkstore.MaintenanceOptions{})
	if err != nil || vs.Bad != 0 || vs.Chunks != int64(sum.UniqueChunks) {
		t.Errorf("Verify(%s) = %v, %v; want %d chunks, none bad", st.dir, vs, err, sum.UniqueChunks)
	}

	localDir := filepath.Join(tmp, "local")
	localIndex := filepath.Join(tmp, "local.caidx")
	convert(t, Source{Kind: "dir", Path: root}, localDir, Options{IndexOut: localIndex, Jobs: 2})
	if a, b := readAll(t, index), readAll(t, localIndex); !bytes.Equal(a, b) {
		t.Errorf("index written with an SSH store differs from the one with a local store")
	}
	if got, want := chunkFiles(t, st.dir), chunkFiles(t, localDir); !reflect.DeepEqual(got, want) {
		t.Errorf("SSH store holds %d chunk files, local store %d; want the same ones", len(got), len(want))
	}

	stored := storeBytes(t, st.dir)
	sent := st.sent.Load()
	again := convert(t, Source{Kind: "dir", Path: root}, st.url, Options{Jobs: 2})
	sent = st.sent.Load() - sent
	if again.NewChunks != 0 || again.BytesWritten != 0 {
		t.Errorf("second conversion into the SSH store wrote %d chunks (%d bytes), want 0", again.NewChunks, again.BytesWritten)
	}
	// The server sends SSH handshakes, HELLOs, REQUESTs and GOODBYEs:
	// a few kilobytes, where the chunks are megabytes.
	if n := st.reads.Load(); n != 0 || sent > stored/50 {
		t.Errorf("second conversion: the server read %d chunks and sent %d bytes, want none and at most %d (its chunks are %d bytes)", n, sent, stored/50, stored)
	}
	t.Logf("second conversion of %d chunks: server sent %d bytes; the store holds %d bytes of chunks", again.UniqueChunks, sent, stored)
}

// TestConvertToSSHStoreReadOnlyKey checks that a key the server lets only
// read makes Convert fail with a message that says so when chunks are
// new, and converts a tree whose chunks are all in the store: asking
// which chunks the store has needs no right to write.
func TestConvertToSSHStoreReadOnlyKey(t *testing.T) {
	st := sshStoreServer(t)
	t.Setenv(sshstore.EnvKeys, st.readerKey)
	root := filepath.Join(t.TempDir(), "root")
	writeTree(t, root)
	_, err := convertTo(context.Background(), Source{Kind: "dir", Path: root}, st.url, Options{Jobs: 2})
	if err == nil || !strings.Contains(err.Error(), "may read but not write") {
		t.Fatalf("Convert with a read-only key = %v, want an error saying the key may not write", err)
	}
	if files := chunkFiles(t, st.dir); len(files) != 0 {
		t.Errorf("refused conversion left %d chunks in the store", len(files))
	}

	t.Setenv(sshstore.EnvKeys, st.writerKey)
	convert(t, Source{Kind: "dir", Path: root}, st.url, Options{Jobs: 2})
	t.Setenv(sshstore.EnvKeys, st.readerKey)
	sum, err := convertTo(context.Background(), Source{Kind: "dir", Path: root}, st.url, Options{Jobs: 2})
	if err != nil || sum.NewChunks != 0 {
		t.Fatalf("Convert with a read-only key of a tree already in the store = %v; want success with no new chunks", err)
	}
	if n := st.reads.Load(); n != 0 {
		t.Errorf("conversions read %d chunks from the store, want 0", n)
	}
}

// storeBytes is the size of the chunk files of a store directory.
func storeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	for _, f := range chunkFiles(t, dir) {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Size()
	}
	return n
}

func readAll(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// chunkFiles lists the chunk files of a store directory, relative to it.
func chunkFiles(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*", "*.cacnk"))
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range files {
		files[i] = strings.TrimPrefix(f, dir+"/")
	}
	slices.Sort(files)
	return files
}
