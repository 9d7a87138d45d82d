package sshstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/internal/testenv"
)

// TestCasyncMakeOverSSH has the real casync make an index of a tree with
// its store and index on our server, as `casync make
// --store=HOST:STORE HOST:INDEX TREE`, then checks the store with
// chunkstore.Verify and extracts the tree again with casync, from the
// directory and over SSH.
func TestCasyncMakeOverSSH(t *testing.T) {
	testenv.LookPath(t, "casync")
	testenv.LookPath(t, "ssh")
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	r := rand.New(rand.NewPCG(21, 22))
	files := map[string][]byte{
		"small":      []byte("hello\n"),
		"sub/random": randomBytes(r, 900<<10),
		"sub/text":   bytes.Repeat([]byte("written over ssh by casync make\n"), 30000),
	}
	for name, b := range files {
		p := filepath.Join(tree, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	store := filepath.Join(dir, "store")
	indexes := filepath.Join(dir, "indexes")
	for _, d := range []string{store, indexes} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	local, err := chunkstore.NewLocal(store, chunkstore.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f := startWriteServer(t, local, ServerOptions{StorePath: store, IndexDir: indexes})
	env := []string{"CASYNC_SSH_PATH=" + sshWrapper(t, f)}
	index := filepath.Join(indexes, "tree.caidx")

	run(t, env, "casync", "make", "--store=127.0.0.1:"+store, "127.0.0.1:"+index, tree)
	if !hasLine(f.logs.String(), "chunk push", "result=stored") || !hasLine(f.logs.String(), "index stored", "tree.caidx") {
		t.Errorf("server log shows no chunk or index stored:\n%s", f.logs.String())
	}
	sum, err := chunkstore.Verify(context.Background(), store, false, chunkstore.MaintenanceOptions{})
	if err != nil || sum.Bad != 0 || sum.Chunks == 0 {
		t.Fatalf("Verify(%s) = %v, %v; want chunks and none bad", store, sum, err)
	}
	checkIndexChunks(t, index, store)
	checkNoTemps(t, indexes)

	// The tree comes back, from the directory and through our server.
	want := run(t, nil, "casync", "digest", tree)
	for _, st := range []string{store, "127.0.0.1:" + store} {
		out := filepath.Join(t.TempDir(), "out")
		run(t, env, "casync", "extract", "--store="+st, index, out)
		if got := run(t, nil, "casync", "digest", out); got != want {
			t.Errorf("casync digest after extract from %s = %s, want %s", st, got, want)
		}
	}

	// casync pushes chunks only together with an index: with a local
	// index it sends HELLO and leaves, and our server lets it go at once
	// (stock casync push would too) rather than wait for a GOODBYE.
	other := filepath.Join(dir, "other")
	if err := os.WriteFile(filepath.Join(tree, "new"), []byte("a new file"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := countChunks(t, store)
	run(t, env, "casync", "make", "--store=127.0.0.1:"+store, other+".caidx", tree)
	if after := countChunks(t, store); after != before {
		t.Errorf("casync make with a local index stored %d chunks on the server; casync pushes none then", after-before)
	}

	// Again, with a relative index name: the server requests only the
	// chunks of the new file.
	pushed := strings.Count(f.logs.String(), "result=stored")
	run(t, env, "casync", "make", "--store=127.0.0.1:"+store, "127.0.0.1:again.caidx", tree)
	if n := strings.Count(f.logs.String(), "result=stored") - pushed; n == 0 || n > 2 {
		t.Errorf("casync make after adding a small file pushed %d chunks, want 1 or 2", n)
	}
	checkIndexChunks(t, filepath.Join(indexes, "again.caidx"), store)
	out := filepath.Join(t.TempDir(), "out")
	run(t, env, "casync", "extract", "--store=127.0.0.1:"+store, filepath.Join(indexes, "again.caidx"), out)
	if got, want := run(t, nil, "casync", "digest", out), run(t, nil, "casync", "digest", tree); got != want {
		t.Errorf("casync digest after the second push = %s, want %s", got, want)
	}
}

// sshWrapper writes an OpenSSH wrapper for CASYNC_SSH_PATH that reaches
// f's server with its client key and known_hosts.
func sshWrapper(t *testing.T, f *fixture) string {
	t.Helper()
	w := filepath.Join(f.dir, "ssh-wrapper")
	script := "#!/bin/sh\nexec ssh -F /dev/null -p " + f.port + " -i " + f.clientKey +
		" -o UserKnownHostsFile=" + f.knownHosts +
		" -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes -o LogLevel=QUIET \"$@\"\n"
	if err := os.WriteFile(w, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return w
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkIndexChunks checks that every chunk index names is in store.
func checkIndexChunks(t *testing.T, index, store string) {
	t.Helper()
	x, err := casync.ReadIndex(bytes.NewReader(readFile(t, index)))
	if err != nil {
		t.Fatalf("ReadIndex(%s) = %v", index, err)
	}
	for _, c := range x.Chunks {
		if _, err := os.Stat(chunkPath(store, c.ID)); err != nil {
			t.Errorf("chunk %s of %s is not in the store: %v", c.ID, index, err)
		}
	}
}

// checkNoTemps fails if dir holds a temporary file of an index push.
func checkNoTemps(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".tmp") {
			t.Errorf("temporary file %s left behind", p)
		}
		return nil
	})
}

// testIndex returns a caidx of chunks and its bytes.
func testIndex(t *testing.T, chunks [][]byte) []byte {
	t.Helper()
	x := casync.NewIndex(0, casync.ChunkOptions{Size: casync.ChunkSize{Min: 1, Avg: 64 << 10, Max: 256 << 10}})
	var off uint64
	for _, c := range chunks {
		if err := x.Add(casync.Chunk{Start: off, Size: uint64(len(c)), ID: casync.SHA512_256.Sum(c)}); err != nil {
			t.Fatal(err)
		}
		off += uint64(len(c))
	}
	var b bytes.Buffer
	if _, err := x.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// rawSession is a command run on the server by hand, its protocol bytes
// written and read by the test.
type rawSession struct {
	sess   *ssh.Session
	stdin  io.WriteCloser
	stdout io.Reader
	stderr testenv.SyncBuffer
}

// startRaw starts cmd on c and sends first.
func startRaw(t *testing.T, c *ssh.Client, cmd string, first []byte) *rawSession {
	t.Helper()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	r := &rawSession{sess: sess}
	r.stdin, _ = sess.StdinPipe()
	r.stdout, _ = sess.StdoutPipe()
	sess.Stderr = &r.stderr
	if err := sess.Start(cmd); err != nil {
		t.Fatal(err)
	}
	r.stdin.Write(first)
	return r
}

// wait waits for the command to end and returns its exit status and
// stderr.
func (r *rawSession) wait(t *testing.T) (int, string) {
	t.Helper()
	status := 0
	var ee *ssh.ExitError
	if err := r.sess.Wait(); errors.As(err, &ee) {
		status = ee.ExitStatus()
	} else if err != nil {
		t.Fatalf("Wait() = %v", err)
	}
	return status, r.stderr.String()
}

// pushSession runs cmd on c, writes the messages from script as answers
// to what the server sends, and returns the types the server sent, its
// exit status and stderr. script is called with each server message and
// returns what to send next (nil: nothing).
func pushSession(t *testing.T, c *ssh.Client, cmd string, first []byte, script func(m message) []byte) ([]string, int, string) {
	t.Helper()
	r := startRaw(t, c, cmd, first)
	var got []string
	for {
		m, err := readMessage(r.stdout)
		if err != nil {
			if err != io.EOF {
				t.Errorf("server output: %v", err)
			}
			break
		}
		got = append(got, typeName(m.typ))
		if b := script(m); b != nil {
			r.stdin.Write(b)
		}
	}
	r.stdin.Close()
	status, stderr := r.wait(t)
	return got, status, stderr
}

// TestPushIndex drives the push side of the server by hand: an index
// whose chunks are partly in the store, then answers to its REQUESTs,
// and the ways such a session can go wrong.
func TestPushIndex(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var chunks [][]byte
	for i := range 6 {
		chunks = append(chunks, randomBytes(r, 1000+i*5000))
	}
	chunks = append(chunks, chunks[1]) // a repeated chunk is requested once
	ids := make([]casync.ChunkID, len(chunks))
	byID := map[casync.ChunkID][]byte{}
	for i, c := range chunks {
		ids[i] = casync.SHA512_256.Sum(c)
		byID[ids[i]] = c
	}
	index := testIndex(t, chunks)
	hello := appendHello(nil, featPushChunks|featPushIndex|featPushIndexChunks)
	indexMsgs := append(appendIndex(append([]byte(nil), hello...), index), appendIndexEOF(nil)...)
	// answer sends every requested chunk, altering want if told to.
	answer := func(bad casync.ChunkID, missing casync.ChunkID) func(m message) []byte {
		return func(m message) []byte {
			if m.typ != msgRequest {
				return nil
			}
			var out []byte
			for _, id := range m.ids {
				switch id {
				case missing:
					out = appendMissing(out, id)
				case bad:
					frame := casync.CompressChunk(nil, []byte("not the chunk"))
					out = append(appendChunkHeader(out, chunkCompressed, id, len(frame)), frame...)
				default:
					frame := casync.CompressChunk(nil, byID[id])
					out = append(appendChunkHeader(out, chunkCompressed, id, len(frame)), frame...)
				}
			}
			return out
		}
	}
	var none casync.ChunkID
	tests := []struct {
		name       string
		cmd        string
		first      []byte
		script     func(m message) []byte
		indexDir   bool
		wantOut    string
		wantStatus int
		wantStderr string
		wantIndex  string // file that must hold the index afterwards
		wantStored int    // chunks in the store afterwards
	}{
		{name: "index and chunks", cmd: "casync push - - /IDX/x.caidx /store", first: indexMsgs, script: answer(none, none), indexDir: true,
			wantOut: "HELLO REQUEST GOODBYE", wantIndex: "x.caidx", wantStored: 6},
		{name: "relative index in subdirectory", cmd: "casync push - - sub/y.caidx /store", first: indexMsgs, script: answer(none, none), indexDir: true,
			wantOut: "HELLO REQUEST GOODBYE", wantIndex: "sub/y.caidx", wantStored: 6},
		{name: "no index dir", cmd: "casync push - - /IDX/x.caidx /store", first: indexMsgs, script: answer(none, none),
			wantStatus: 1, wantStderr: "stores no indexes", wantStored: 2},
		{name: "index outside", cmd: "casync push - - /IDX/../x.caidx /store", first: indexMsgs, script: answer(none, none), indexDir: true,
			wantStatus: 1, wantStderr: "outside this server's index directory", wantStored: 2},
		{name: "index escapes", cmd: "casync push - - ../x.caidx /store", first: indexMsgs, script: answer(none, none), indexDir: true,
			wantStatus: 1, wantStderr: "not a file inside", wantStored: 2},
		{name: "client lacks a chunk", cmd: "casync push - - x.caidx /store", first: indexMsgs, script: answer(none, ids[4]), indexDir: true,
			wantOut: "HELLO REQUEST ABORT", wantStatus: 1, wantStderr: "client has no chunk " + ids[4].String()},
		{name: "corrupt chunk", cmd: "casync push - - x.caidx /store", first: indexMsgs, script: answer(ids[3], none), indexDir: true,
			wantOut: "HELLO REQUEST ABORT", wantStatus: 1, wantStderr: "corrupt or wrong digest"},
		{name: "goodbye too early", cmd: "casync push - - x.caidx /store", first: append(append([]byte(nil), indexMsgs...), appendGoodbye(nil)...),
			script: func(message) []byte { return nil }, indexDir: true,
			wantOut: "HELLO REQUEST ABORT", wantStatus: 1, wantStderr: "before the index", wantStored: 2},
		{name: "malformed index", cmd: "casync push - - x.caidx /store",
			first:  append(appendIndex(append([]byte(nil), hello...), index[:len(index)-8]), appendIndexEOF(nil)...),
			script: func(message) []byte { return nil }, indexDir: true,
			wantOut: "HELLO ABORT", wantStatus: 1, wantStderr: "truncated", wantStored: 2},
		{name: "index without index command", cmd: "casync push - - - /store", first: indexMsgs, script: answer(none, none), indexDir: true,
			wantOut: "HELLO ABORT", wantStatus: 1, wantStderr: "names none", wantStored: 2},
		{name: "pull in a push session", cmd: "casync push - - - /store", first: appendHello(nil, featPullChunks), script: answer(none, none),
			wantOut: "HELLO ABORT", wantStatus: 1, wantStderr: "only stores chunks", wantStored: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The store already has chunks 0 and 2.
			store := localStore(t, map[casync.ChunkID][]byte{ids[0]: chunks[0], ids[2]: chunks[2]})
			idx := t.TempDir()
			opts := ServerOptions{}
			if tt.indexDir {
				opts.IndexDir = idx
			}
			f := startWriteServer(t, store, opts)
			cmd := strings.ReplaceAll(tt.cmd, "/IDX", idx)
			if tt.wantIndex != "" {
				os.MkdirAll(filepath.Dir(filepath.Join(idx, tt.wantIndex)), 0o755)
			}
			var requested []casync.ChunkID
			script := func(m message) []byte {
				requested = append(requested, m.ids...)
				return tt.script(m)
			}
			got, status, stderr := pushSession(t, rawClient(t, f), cmd, tt.first, script)
			if strings.Join(got, " ") != tt.wantOut || status != tt.wantStatus || !strings.Contains(stderr, tt.wantStderr) {
				t.Errorf("push session = %v, status %d, stderr %q; want %q, %d, %q", got, status, stderr, tt.wantOut, tt.wantStatus, tt.wantStderr)
			}
			if tt.wantOut == "HELLO REQUEST GOODBYE" && len(requested) != 4 {
				t.Errorf("server requested %d chunks, want the 4 it lacks", len(requested))
			}
			if tt.wantIndex != "" {
				if b := readFile(t, filepath.Join(idx, tt.wantIndex)); !bytes.Equal(b, index) {
					t.Errorf("stored index differs from the one pushed")
				}
			} else if files, _ := filepath.Glob(filepath.Join(idx, "*.caidx")); len(files) > 0 {
				t.Errorf("failed push left index files %v", files)
			}
			checkNoTemps(t, idx)
			if tt.wantStored != 0 {
				if n := countChunks(t, store.Dir()); n != tt.wantStored {
					t.Errorf("store holds %d chunks, want %d", n, tt.wantStored)
				}
			}
			sum, err := chunkstore.Verify(context.Background(), store.Dir(), false, chunkstore.MaintenanceOptions{})
			if err != nil || sum.Bad != 0 {
				t.Errorf("Verify = %v, %v; want no bad chunks", sum, err)
			}
		})
	}
}

func countChunks(t *testing.T, dir string) int {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*", "*.cacnk"))
	if err != nil {
		t.Fatal(err)
	}
	return len(files)
}

// TestStoreChunkRefused checks the writes our client is refused, and that
// nothing is stored then.
func TestStoreChunkRefused(t *testing.T) {
	c := storetestChunk()
	tests := []struct {
		name    string
		start   func(t *testing.T, s chunkstore.WriteStore) *fixture
		wantErr string
		is      error
	}{
		{name: "read-only server", start: func(t *testing.T, s chunkstore.WriteStore) *fixture {
			return startServer(t, s, ServerOptions{})
		}, wantErr: "read-only over ssh"},
		{name: "key may only read", start: func(t *testing.T, s chunkstore.WriteStore) *fixture {
			// Writers that do not include the client key.
			dir := t.TempDir()
			writers := filepath.Join(dir, "writers")
			_, pub := writeKey(t, dir, "writer")
			if err := os.WriteFile(writers, ssh.MarshalAuthorizedKey(pub), 0o600); err != nil {
				t.Fatal(err)
			}
			return startServer(t, s, ServerOptions{WriteAuthorizedKeysFile: writers})
		}, wantErr: "may read but not write"},
		{name: "not a bootfs server", start: func(t *testing.T, s chunkstore.WriteStore) *fixture {
			return startServerWith(t, s, ServerOptions{}, true, func(srv *Server) {
				srv.config.ServerVersion = "SSH-2.0-OpenSSH_9.2p1"
			})
		}, wantErr: "not a bootfs chunk server", is: chunkstore.ErrReadOnly},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := chunkstore.NewMemory(chunkstore.MemoryOptions{})
			f := tt.start(t, store)
			s := f.newClient(t, f.clientOptions())
			err := s.StoreChunk(context.Background(), c.id, c.data)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || (tt.is != nil && !errors.Is(err, tt.is)) {
				t.Fatalf("StoreChunk = %v, want an error saying %q", err, tt.wantErr)
			}
			if has, _ := store.HasChunk(context.Background(), c.id); has {
				t.Errorf("refused chunk was stored")
			}
		})
	}
}

type testChunk struct {
	id   casync.ChunkID
	data []byte
}

func storetestChunk() testChunk {
	data := bytes.Repeat([]byte("a chunk to push\n"), 1000)
	return testChunk{casync.SHA512_256.Sum(data), data}
}

// TestStoreFrameCorrupt has a trusting client push a frame that does not
// match its ID: the server refuses it, the client says so, and the store
// keeps nothing.
func TestStoreFrameCorrupt(t *testing.T) {
	store := localStore(t, nil)
	f := startWriteServer(t, store, ServerOptions{})
	opts := f.clientOptions()
	opts.TrustWrites = true
	s := f.newClient(t, opts)
	good := storetestChunk()
	bad := casync.CompressChunk(nil, []byte("something else"))
	err := s.StoreFrame(context.Background(), good.id, bad)
	if err == nil || !strings.Contains(err.Error(), "server refused the chunks") {
		t.Fatalf("StoreFrame(wrong frame) = %v, want the server's refusal", err)
	}
	if n := countChunks(t, store.Dir()); n != 0 {
		t.Errorf("store holds %d chunks after a refused push, want 0", n)
	}
	// The same client still writes good chunks.
	if err := s.StoreFrame(context.Background(), good.id, casync.CompressChunk(nil, good.data)); err != nil {
		t.Fatalf("StoreFrame(good) = %v", err)
	}
	if got, err := s.GetChunk(context.Background(), good.id); err != nil || !bytes.Equal(got, good.data) {
		t.Errorf("GetChunk after StoreFrame = %d bytes, %v", len(got), err)
	}
	if !hasLine(f.logs.String(), "chunk push refused", good.id.String()) {
		t.Errorf("server log does not report the refused chunk:\n%s", f.logs.String())
	}
}

// TestReplayCasyncPush replays what the real `casync make` sent to a
// real `casync push` (testdata/README.md) against our server, and checks
// that our server answers as casync did: the same HELLO flags, a REQUEST
// for the same chunks, GOODBYE; and that it stored the chunk and the
// index.
func TestReplayCasyncPush(t *testing.T) {
	in := readFile(t, filepath.Join("testdata", "casync-push.in"))
	want := readFile(t, filepath.Join("testdata", "casync-push.out"))
	store := localStore(t, nil)
	idx := t.TempDir()
	f := startWriteServer(t, store, ServerOptions{IndexDir: idx})
	sess, err := rawClient(t, f).NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	var out, stderr bytes.Buffer
	sess.Stdin, sess.Stdout, sess.Stderr = bytes.NewReader(in), &out, &stderr
	if err := sess.Run("casync push - - " + idx + "/x.caidx /store"); err != nil {
		t.Fatalf("push session: %v: %s", err, stderr.String())
	}
	if got := describe(t, out.Bytes()); got != describe(t, want) {
		t.Errorf("our server answered %s\ncasync push answered %s", got, describe(t, want))
	}
	// The index stored is the one sent, and its chunks are all there.
	var index []byte
	r := bytes.NewReader(in)
	for {
		m, err := readMessage(r)
		if err != nil {
			break
		}
		if m.typ == msgIndex {
			index = append(index, m.data...)
		}
	}
	if got := readFile(t, filepath.Join(idx, "x.caidx")); !bytes.Equal(got, index) {
		t.Errorf("stored index (%d bytes) differs from the one pushed (%d bytes)", len(got), len(index))
	}
	checkIndexChunks(t, filepath.Join(idx, "x.caidx"), store.Dir())
}

// describe lists the messages in b with their flags and IDs.
func describe(t *testing.T, b []byte) string {
	t.Helper()
	var parts []string
	r := bytes.NewReader(b)
	for {
		m, err := readMessage(r)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("readMessage after %v: %v", parts, err)
		}
		d := typeName(m.typ)
		switch m.typ {
		case msgHello:
			d += fmt.Sprintf("(%#x)", m.flags)
		case msgRequest:
			d += fmt.Sprintf("(%#x %v)", m.flags, m.ids)
		}
		parts = append(parts, d)
	}
	return strings.Join(parts, " ")
}

// TestPushReconnect restarts the server between two writes: the second
// finds its connection dead and is retried once on a new one.
func TestPushReconnect(t *testing.T) {
	chunks := randomChunks(6, 2, 5000)
	store := localStore(t, nil)
	f := startWriteServer(t, store, ServerOptions{})
	opts := f.clientOptions()
	opts.Sessions = 1 // one pusher, so the second write finds the dead connection
	s := counted(f.newClient(t, opts), 1)
	var ids []casync.ChunkID
	for id := range chunks {
		ids = append(ids, id)
	}
	if err := s.StoreChunk(context.Background(), ids[0], chunks[ids[0]]); err != nil {
		t.Fatal(err)
	}
	f.srv.Close()
	l, err := net.Listen("tcp", f.addr)
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", f.addr, err)
	}
	f.serve(t, store, ServerOptions{HostKeyFile: f.hostKey, AuthorizedKeysFile: f.authKeys, WriteAuthorizedKeysFile: f.authKeys}, l, nil)
	if err := s.StoreChunk(context.Background(), ids[1], chunks[ids[1]]); err != nil {
		t.Fatalf("StoreChunk after restart = %v", err)
	}
	if st := s.Stats(); st.Retries == 0 {
		t.Errorf("Stats().Retries = 0 after a write on a dead connection, want > 0")
	}
	if n := countChunks(t, store.Dir()); n != 2 {
		t.Errorf("store holds %d chunks, want 2", n)
	}
}

// TestStoreClosed checks that writes after Close fail at once.
func TestStoreClosed(t *testing.T) {
	f := startWriteServer(t, chunkstore.NewMemory(chunkstore.MemoryOptions{}), ServerOptions{})
	s := f.newClient(t, f.clientOptions())
	c := storetestChunk()
	if err := s.StoreChunk(context.Background(), c.id, c.data); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := s.StoreChunk(context.Background(), c.id, c.data); !errors.Is(err, net.ErrClosed) {
		t.Errorf("StoreChunk after Close = %v, want %v", err, net.ErrClosed)
	}
}
