package sshstore

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

// countingListener counts the bytes that cross its connections.
type countingListener struct {
	net.Listener
	in, out atomic.Int64 // read from and written to clients
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, l: l}, nil
}

type countingConn struct {
	net.Conn
	l *countingListener
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.l.in.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	// Counted before they go: a client that got them, and the test that
	// then reads the count, must find them counted.
	c.l.out.Add(int64(len(p)))
	n, err := c.Conn.Write(p)
	c.l.out.Add(int64(n - len(p)))
	return n, err
}

// countingStore counts the chunks read from a Local store (to be sent).
type countingStore struct {
	*chunkstore.Local
	reads atomic.Int64
}

func (c *countingStore) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	b, err := c.Local.GetChunk(ctx, id)
	if err == nil {
		c.reads.Add(1)
	}
	return b, err
}

func (c *countingStore) GetFrame(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	b, err := c.Local.GetFrame(ctx, id)
	if err == nil {
		c.reads.Add(1)
	}
	return b, err
}

// writersWithout returns an authorized_keys file with a fresh key that is
// not the fixture's client key.
func writersWithout(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	_, pub := writeKey(t, dir, "writer")
	file := filepath.Join(dir, "writers")
	if err := os.WriteFile(file, ssh.MarshalAuthorizedKey(pub), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// queryServer is how a test serves a store: which server, which rights.
type queryServer struct {
	name string
	// start serves store on l's listener.
	start func(t *testing.T, store chunkstore.Store, wrap func(net.Listener) net.Listener) *fixture
	// query: the client asks in query sessions rather than pulling.
	query bool
}

var queryServers = []queryServer{
	{name: "writer key", query: true, start: func(t *testing.T, s chunkstore.Store, wrap func(net.Listener) net.Listener) *fixture {
		return startServerWrapped(t, s, ServerOptions{}, true, nil, wrap)
	}},
	{name: "reader key", query: true, start: func(t *testing.T, s chunkstore.Store, wrap func(net.Listener) net.Listener) *fixture {
		return startServerWrapped(t, s, ServerOptions{WriteAuthorizedKeysFile: writersWithout(t)}, false, nil, wrap)
	}},
	{name: "read-only server", query: true, start: func(t *testing.T, s chunkstore.Store, wrap func(net.Listener) net.Listener) *fixture {
		return startServerWrapped(t, s, ServerOptions{}, false, nil, wrap)
	}},
	// Another server (casync's over OpenSSH) is asked chunk by chunk.
	{name: "not a bootfs server", start: func(t *testing.T, s chunkstore.Store, wrap func(net.Listener) net.Listener) *fixture {
		return startServerWrapped(t, s, ServerOptions{}, true, func(srv *Server) {
			srv.config.ServerVersion = "SSH-2.0-OpenSSH_9.2p1"
		}, wrap)
	}},
}

// TestHasChunks asks about a batch of chunks, some in the store, some
// not, some twice, and checks the answers, the client's counters and
// what crossed the network: with our server, no chunk data.
func TestHasChunks(t *testing.T) {
	chunks := randomChunks(31, 40, 20000)
	var ids []casync.ChunkID
	for id := range chunks {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b casync.ChunkID) int { return strings.Compare(a.String(), b.String()) })
	present := map[casync.ChunkID][]byte{}
	var frameBytes int64 // of the present chunks
	for _, id := range ids[:25] {
		present[id] = chunks[id]
		frameBytes += int64(len(casync.CompressChunk(nil, chunks[id])))
	}
	unknown := casync.SHA512_256.Sum([]byte("never stored"))
	// Absent and present ones interleaved, one present one twice.
	ask := []casync.ChunkID{unknown}
	for i := range 20 {
		ask = append(ask, ids[i], ids[39-i])
	}
	ask = append(ask, ids[0])
	want := make([]bool, len(ask))
	wantHits := 0
	for i, id := range ask {
		_, want[i] = present[id]
		if want[i] {
			wantHits++
		}
	}

	for _, srv := range queryServers {
		t.Run(srv.name, func(t *testing.T) {
			store := &countingStore{Local: localStore(t, present)}
			var cl *countingListener
			f := srv.start(t, store, func(l net.Listener) net.Listener {
				cl = &countingListener{Listener: l}
				return cl
			})
			s := chunkstore.NewCounted(f.newClient(t, f.clientOptions()))
			ctx := context.Background()

			out := cl.out.Load()
			got, err := s.HasChunks(ctx, ask)
			if err != nil {
				t.Fatalf("HasChunks(%d ids) = %v", len(ask), err)
			}
			if !slices.Equal(got, want) {
				t.Errorf("HasChunks(%d ids) = %v, want %v", len(ask), got, want)
			}
			sent := cl.out.Load() - out
			st := s.Stats()
			if st.Requests != uint64(len(ask)) || st.Hits != uint64(wantHits) || st.Misses != uint64(len(ask)-wantHits) || st.Errors != 0 {
				t.Errorf("Stats() = %+v, want %d requests, %d hits, %d misses, no errors", st, len(ask), wantHits, len(ask)-wantHits)
			}
			if !srv.query {
				// The fallback downloads the present chunks: that this
				// is measured at all shows the checks below can fail.
				if store.reads.Load() == 0 || sent < frameBytes {
					t.Errorf("per-chunk HasChunks read %d chunks and sent %d bytes, want the %d bytes of the present chunks", store.reads.Load(), sent, frameBytes)
				}
				return
			}
			// A query session costs about a kilobyte of SSH and protocol
			// framing, and 32 bytes per REQUESTed ID: far below the
			// present chunks' frames.
			if reads := store.reads.Load(); reads != 0 || st.WireBytes != 0 {
				t.Errorf("HasChunks read %d chunks from the store and received %d chunk bytes, want none", reads, st.WireBytes)
			}
			if limit := int64(4096 + 64*len(ask)); sent > limit {
				t.Errorf("HasChunks: the server sent %d bytes, want at most %d (the present chunks are %d bytes)", sent, limit, frameBytes)
			}
			t.Logf("HasChunks(%d ids): server sent %d bytes, received %d; present chunks are %d bytes compressed", len(ask), sent, cl.in.Load(), frameBytes)
			if !hasLine(f.logs.String(), "chunk query answered", "chunks=42", "lacking=16") {
				t.Errorf("server log has no line for the query:\n%s", f.logs.String())
			}

			// HasChunk takes the same way, one ID at a time.
			for _, tt := range []struct {
				name string
				id   casync.ChunkID
				want bool
			}{
				{name: "present", id: ids[3], want: true},
				{name: "absent", id: ids[30], want: false},
				{name: "unknown", id: unknown, want: false},
			} {
				has, err := s.HasChunk(ctx, tt.id)
				if err != nil || has != tt.want {
					t.Errorf("HasChunk(%s: %s) = %v, %v, want %v", tt.name, tt.id, has, err, tt.want)
				}
			}
			if reads := store.reads.Load(); reads != 0 {
				t.Errorf("HasChunk read %d chunks from the store, want none", reads)
			}
			// Nothing was stored: no query leaves anything behind.
			if n := countChunks(t, store.Dir()); n != len(present) {
				t.Errorf("store holds %d chunks after queries, want %d", n, len(present))
			}
			if got, err := s.HasChunks(ctx, nil); err != nil || len(got) != 0 {
				t.Errorf("HasChunks(nil) = %v, %v; want nothing", got, err)
			}
		})
	}
}

// TestHasChunksLarge asks about more IDs than one query session takes.
func TestHasChunksLarge(t *testing.T) {
	chunks := randomChunks(32, 3, 1000)
	store := localStore(t, chunks)
	f := startServer(t, store, ServerOptions{})
	s := f.newClient(t, f.clientOptions())
	n := 2*maxQueryChunks + 5
	ask := make([]casync.ChunkID, 0, n)
	want := make([]bool, 0, n)
	for i := range n {
		id := casync.SHA512_256.Sum([]byte{byte(i), byte(i >> 8), byte(i >> 16)})
		ask = append(ask, id)
		want = append(want, false)
	}
	at := []int{0, maxQueryChunks, n - 1} // one in each session
	i := 0
	for id := range chunks {
		ask[at[i]], want[at[i]] = id, true
		i++
	}
	got, err := s.HasChunks(context.Background(), ask)
	if err != nil {
		t.Fatalf("HasChunks(%d ids) = %v", n, err)
	}
	if !slices.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("HasChunks(%d ids)[%d] = %v, want %v", n, i, got[i], want[i])
			}
		}
	}
	if c := strings.Count(f.logs.String(), "chunk query answered"); c != 3 {
		t.Errorf("server answered %d queries, want 3 of at most %d IDs", c, maxQueryChunks)
	}
}

// TestHasChunksErrors checks a cancelled query, a query to a store path
// the server does not serve, and a query after the server restarted.
func TestHasChunksErrors(t *testing.T) {
	chunks := randomChunks(33, 2, 3000)
	var ids []casync.ChunkID
	for id := range chunks {
		ids = append(ids, id)
	}
	store := localStore(t, chunks)

	t.Run("canceled", func(t *testing.T) {
		f := startServer(t, store, ServerOptions{})
		s := f.newClient(t, f.clientOptions())
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := s.HasChunks(ctx, ids); !errors.Is(err, context.Canceled) {
			t.Errorf("HasChunks(canceled) = %v, want %v", err, context.Canceled)
		}
		if _, err := s.HasChunk(ctx, ids[0]); !errors.Is(err, context.Canceled) {
			t.Errorf("HasChunk(canceled) = %v, want %v", err, context.Canceled)
		}
	})

	t.Run("restart", func(t *testing.T) {
		f := startServer(t, store, ServerOptions{})
		opts := f.clientOptions()
		opts.Sessions = 1
		s := counted(f.newClient(t, opts), 0) // retried, as the opener composes it
		if got, err := s.HasChunks(context.Background(), ids); err != nil || !slices.Equal(got, []bool{true, true}) {
			t.Fatalf("HasChunks = %v, %v", got, err)
		}
		f.srv.Close()
		l, err := net.Listen("tcp", f.addr)
		if err != nil {
			t.Skipf("cannot listen on %s again: %v", f.addr, err)
		}
		f.serve(t, store, ServerOptions{HostKeyFile: f.hostKey, AuthorizedKeysFile: f.authKeys}, l, nil)
		if got, err := s.HasChunks(context.Background(), ids); err != nil || !slices.Equal(got, []bool{true, true}) {
			t.Fatalf("HasChunks after restart = %v, %v", got, err)
		}
	})

	t.Run("store refused", func(t *testing.T) {
		f := startServer(t, store, ServerOptions{StorePath: "/srv/store"})
		ss, err := openURL(f.url("/srv/store"), f.clientOptions())
		if err != nil {
			t.Fatal(err)
		}
		defer ss.Close()
		// The pull session named the right path; make the push command
		// name another.
		ss.pushCmd = "casync push - - - /srv/other"
		s := counted(ss, 1)
		_, err = s.HasChunks(context.Background(), ids)
		if err == nil || !strings.Contains(err.Error(), `no store at "/srv/other"`) || errors.Is(err, ErrSession) {
			t.Errorf("HasChunks on a refused path = %v, want the server's refusal, not retried", err)
		}
		if st := s.Stats(); st.Retries != 0 || st.Errors != 1 {
			t.Errorf("Stats() = %+v, want no retries and 1 error", st)
		}
	})
}

// TestHasChunksConcurrent mixes queries, reads and writes on one client.
func TestHasChunksConcurrent(t *testing.T) {
	chunks := randomChunks(34, 60, 4000)
	var ids []casync.ChunkID
	for id := range chunks {
		ids = append(ids, id)
	}
	store := localStore(t, nil)
	for _, id := range ids[:20] {
		if err := store.StoreChunk(context.Background(), id, chunks[id]); err != nil {
			t.Fatal(err)
		}
	}
	f := startWriteServer(t, store, ServerOptions{})
	s := f.newClient(t, f.clientOptions())
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range 5 {
				switch (w + round) % 3 {
				case 0:
					// The first 20 are there from the start.
					has, err := s.HasChunks(ctx, ids[:20])
					if err != nil || slices.Contains(has, false) {
						errs <- errors.Join(err, errors.New("HasChunks of stored chunks said some are absent"))
					}
				case 1:
					id := ids[20+w*5+round]
					if err := s.StoreChunk(ctx, id, chunks[id]); err != nil {
						errs <- err
						continue
					}
					if has, err := s.HasChunk(ctx, id); err != nil || !has {
						errs <- errors.Join(err, errors.New("HasChunk after StoreChunk = false"))
					}
				case 2:
					id := ids[w]
					if _, err := s.GetChunk(ctx, id); err != nil {
						errs <- err
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestQuerySession drives the server's side of a query by hand: a push
// session that names no index and whose HELLO pushes an index but no
// chunks.
func TestQuerySession(t *testing.T) {
	chunks := randomChunks(35, 5, 3000)
	var ids []casync.ChunkID
	for id := range chunks {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b casync.ChunkID) int { return strings.Compare(a.String(), b.String()) })
	index, err := queryIndex(casync.SHA512_256, ids)
	if err != nil {
		t.Fatal(err)
	}
	hello := appendHello(nil, featPushIndex|featPushIndexChunks)
	queryMsgs := append(appendIndex(append([]byte(nil), hello...), index), appendIndexEOF(nil)...)
	missing := func(m message) []byte {
		var out []byte
		if m.typ == msgRequest {
			for _, id := range m.ids {
				out = appendMissing(out, id)
			}
		}
		return out
	}
	silent := func(message) []byte { return nil }
	tests := []struct {
		name       string
		reader     bool // the client key may only read
		stored     int  // chunks of ids in the store before
		first      []byte
		script     func(m message) []byte
		cmd        string
		wantOut    string
		wantReq    int
		wantStatus int
		wantStderr string
	}{
		{name: "some lacking", stored: 2, first: queryMsgs, script: missing, wantOut: "HELLO REQUEST GOODBYE", wantReq: 3},
		{name: "none lacking", stored: 5, first: queryMsgs, script: missing, wantOut: "HELLO GOODBYE"},
		{name: "all lacking, reader key", reader: true, first: queryMsgs, script: missing, wantOut: "HELLO REQUEST GOODBYE", wantReq: 5},
		{name: "answered with a chunk", stored: 2, first: queryMsgs, script: func(m message) []byte {
			if m.typ != msgRequest {
				return nil
			}
			frame := casync.CompressChunk(nil, chunks[m.ids[0]])
			return append(appendChunkHeader(nil, chunkCompressed, m.ids[0], len(frame)), frame...)
		}, wantOut: "HELLO REQUEST ABORT", wantReq: 3, wantStatus: 1, wantStderr: "in a query session"},
		{name: "missing not requested", stored: 2, first: append(append([]byte(nil), queryMsgs...), appendMissing(nil, ids[0])...),
			script: silent, wantOut: "HELLO REQUEST ABORT", wantReq: 3, wantStatus: 1, wantStderr: "was not requested"},
		{name: "goodbye before answers", stored: 2, first: append(append([]byte(nil), queryMsgs...), appendGoodbye(nil)...),
			script: silent, wantOut: "HELLO REQUEST ABORT", wantReq: 3, wantStatus: 1, wantStderr: "before its query was answered"},
		{name: "closed before answers", stored: 2, first: queryMsgs, script: silent, cmd: "close",
			wantOut: "HELLO REQUEST", wantReq: 3, wantStatus: 1, wantStderr: "before its query was answered"},
		{name: "malformed index", first: append(appendIndex(append([]byte(nil), hello...), index[:len(index)-8]), appendIndexEOF(nil)...),
			script: silent, wantOut: "HELLO ABORT", wantStatus: 1, wantStderr: "query index"},
		{name: "index too large", first: append(append([]byte(nil), hello...), oversizedIndex()...),
			script: silent, wantOut: "HELLO ABORT", wantStatus: 1, wantStderr: "larger than"},
		{name: "no PUSH_INDEX_CHUNKS", first: append(appendIndex(appendHello(nil, featPushIndex), index), appendIndexEOF(nil)...),
			script: silent, wantOut: "HELLO ABORT", wantStatus: 1, wantStderr: "names none"},
		{name: "reader pushes chunks", reader: true, first: appendHello(nil, featPushChunks),
			script: silent, wantOut: "HELLO ABORT", wantStatus: 1, wantStderr: "may read but not write"},
		{name: "reader pushes an index", reader: true, cmd: "casync push - - x.caidx /store", first: queryMsgs,
			script: silent, wantOut: "", wantStatus: 1, wantStderr: "may read but not write"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			have := map[casync.ChunkID][]byte{}
			for _, id := range ids[:tt.stored] {
				have[id] = chunks[id]
			}
			store := localStore(t, have)
			idx := t.TempDir()
			opts := ServerOptions{IndexDir: idx}
			write := true
			if tt.reader {
				opts.WriteAuthorizedKeysFile = writersWithout(t)
				write = false
			}
			f := startServerWith(t, store, opts, write, nil)
			cmd := tt.cmd
			if cmd == "" || cmd == "close" {
				cmd = "casync push - - - /store"
			}
			c := rawClient(t, f)
			var requested []casync.ChunkID
			var got []string
			var status int
			var stderr string
			if tt.cmd == "close" {
				got, status, stderr = closingSession(t, c, cmd, tt.first, &requested)
			} else {
				got, status, stderr = pushSession(t, c, cmd, tt.first, func(m message) []byte {
					requested = append(requested, m.ids...)
					return tt.script(m)
				})
			}
			if strings.Join(got, " ") != tt.wantOut || status != tt.wantStatus || !strings.Contains(stderr, tt.wantStderr) {
				t.Errorf("query session = %v, status %d, stderr %q; want %q, %d, %q", got, status, stderr, tt.wantOut, tt.wantStatus, tt.wantStderr)
			}
			if len(requested) != tt.wantReq {
				t.Errorf("server requested %d chunks, want %d", len(requested), tt.wantReq)
			}
			for _, id := range requested {
				if _, ok := have[id]; ok {
					t.Errorf("server requested chunk %s, which it has", id)
				}
			}
			if n := countChunks(t, store.Dir()); n != tt.stored {
				t.Errorf("store holds %d chunks after the session, want the %d it had", n, tt.stored)
			}
			if files, _ := os.ReadDir(idx); len(files) != 0 {
				t.Errorf("query left %d files in the index directory", len(files))
			}
		})
	}
}

// oversizedIndex returns INDEX messages of more than maxQueryIndex bytes
// and INDEX_EOF.
func oversizedIndex() []byte {
	part := make([]byte, 1<<20)
	var b []byte
	for range maxQueryIndex/len(part) + 1 {
		b = appendIndex(b, part)
	}
	return appendIndexEOF(b)
}

// closingSession runs cmd on c, sends first, and closes its end as soon
// as the server sends a REQUEST, recording the IDs requested. It returns
// what pushSession does.
func closingSession(t *testing.T, c *ssh.Client, cmd string, first []byte, requested *[]casync.ChunkID) ([]string, int, string) {
	t.Helper()
	r := startRaw(t, c, cmd, first)
	var got []string
	for {
		m, err := readMessage(r.stdout)
		if err != nil {
			break
		}
		got = append(got, typeName(m.typ))
		if m.typ == msgRequest {
			*requested = append(*requested, m.ids...)
			r.stdin.Close()
		}
	}
	status, stderr := r.wait(t)
	return got, status, stderr
}
