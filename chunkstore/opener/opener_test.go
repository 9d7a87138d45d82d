package opener

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/sshstore"
	"github.com/bootfs/bootfs/chunkstore/storetest"
)

// fakeSSH makes ssh:// locations open as open says, and restores the real
// backend after the test.
func fakeSSH(t *testing.T, open func(loc chunkstore.Location, opts sshstore.ClientOptions) (chunkstore.Store, error)) {
	old := openSSH
	openSSH = func(_ context.Context, loc chunkstore.Location, opts sshstore.ClientOptions) (chunkstore.Store, error) {
		return open(loc, opts)
	}
	t.Cleanup(func() { openSSH = old })
}

func TestOpen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	o, err := Open(ctx, dir, Options{})
	if err != nil || chunkstore.Name(o.Store) != dir || o.Cache != nil {
		t.Fatalf("Open(%q) = %v, %v; want the directory, no cache", dir, o, err)
	}
	o, err = Open(ctx, "http://127.0.0.1:1/,"+dir, Options{})
	if err != nil || chunkstore.Name(o.Store) != "http://127.0.0.1:1,"+dir {
		t.Errorf("Open(list) = %v, %v; want a failover of both", o, err)
	}
	var dialed chunkstore.Location
	var got sshstore.ClientOptions
	fakeSSH(t, func(loc chunkstore.Location, opts sshstore.ClientOptions) (chunkstore.Store, error) {
		dialed, got = loc, opts
		return chunkstore.NewMemory(chunkstore.MemoryOptions{}), nil
	})
	creds := Credentials{SSHKeys: []string{"/k"}, SSHKnownHosts: "/kh"}
	if _, err := Open(ctx, "ssh://u@h:2/srv", Options{Credentials: creds, Write: true}); err != nil || dialed.Host != "h" || dialed.Path != "/srv" ||
		len(got.IdentityFiles) != 1 || got.IdentityFiles[0] != "/k" || got.KnownHostsFile != "/kh" || !got.TrustWrites {
		t.Errorf("Open(ssh) = %v, dialed %+v with %+v", err, dialed, got)
	}
	if _, err := Open(ctx, "htp://x", Options{}); !errors.Is(err, chunkstore.ErrBadURL) {
		t.Errorf("Open(bad) = %v, want ErrBadURL", err)
	}
	if _, err := Open(ctx, dir, Options{Credentials: Credentials{TokenFile: filepath.Join(dir, "missing")}}); err == nil || !strings.Contains(err.Error(), "token") {
		t.Errorf("Open(missing token file) = %v, want an error about the token", err)
	}
}

// TestOpenListWithMemberDown: a store list opens although one member
// cannot be opened now (an ssh server that is down); that member is opened
// again when the failover turns to it. Only a list none of whose members
// opens is an error.
func TestOpenListWithMemberDown(t *testing.T) {
	ctx := context.Background()
	want := []byte("a chunk only the ssh store has")
	id := casync.SHA512_256.Sum(want)
	mem := chunkstore.NewMemory(chunkstore.MemoryOptions{})
	if err := mem.StoreChunk(ctx, id, want); err != nil {
		t.Fatal(err)
	}
	var up atomic.Bool
	var dials atomic.Int64
	fakeSSH(t, func(chunkstore.Location, sshstore.ClientOptions) (chunkstore.Store, error) {
		dials.Add(1)
		if !up.Load() {
			return nil, errors.New("connection refused")
		}
		return mem, nil
	})
	o, err := Open(ctx, t.TempDir()+",ssh://h/srv", Options{Retry: chunkstore.RetryOptions{Retries: -1}})
	if err != nil {
		t.Fatalf("Open(a list whose ssh member is down) = %v, want the list", err)
	}
	defer o.Close()
	s := o.Store
	if _, err := s.GetChunk(ctx, id); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("GetChunk while the ssh store is down = %v, want its error", err)
	}
	up.Store(true)
	if got, err := s.GetChunk(ctx, id); err != nil || !bytes.Equal(got, want) {
		t.Errorf("GetChunk once the ssh store is up = %q, %v; want the chunk", got, err)
	}
	n := dials.Load()
	if _, err := s.GetChunk(ctx, id); err != nil || dials.Load() != n {
		t.Errorf("GetChunk again = %v after %d more dials; want the open store reused", err, dials.Load()-n)
	}
	up.Store(false)
	if _, err := Open(ctx, "ssh://h/a,ssh://h/b", Options{}); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Open(a list of stores that are all down) = %v, want their error", err)
	}
}

// TestConformance runs the store suite against what Open composes: with
// and without a cache, over one store and over a failover list, and
// against a list member that is opened late.
func TestConformance(t *testing.T) {
	open := func(t *testing.T, spec string, opts Options) chunkstore.WriteStore {
		o, err := Open(context.Background(), spec, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { o.Close() })
		return o.Store
	}
	dir := func(t *testing.T) string {
		d := t.TempDir()
		if err := os.Mkdir(filepath.Join(d, "store"), 0o755); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(d, "store")
	}
	t.Run("Local", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) chunkstore.WriteStore { return open(t, dir(t), Options{}) })
	})
	t.Run("LocalWrite", func(t *testing.T) {
		// Write trusts the writer's IDs: only the reading half applies.
		storetest.RunReadOnly(t, func(t *testing.T, chunks []storetest.Chunk) chunkstore.Store {
			s := open(t, filepath.Join(t.TempDir(), "new"), Options{Write: true})
			for _, c := range chunks {
				if err := s.StoreChunk(context.Background(), c.ID, c.Data); err != nil {
					t.Fatal(err)
				}
			}
			if err := chunkstore.Sync(context.Background(), s); !chunkstore.IsLocal(s) || err != nil {
				t.Fatalf("Sync = %v, local %v; want a synced local store", err, chunkstore.IsLocal(s))
			}
			return s
		})
	})
	t.Run("Cached", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) chunkstore.WriteStore {
			return open(t, dir(t), Options{Cache: t.TempDir()})
		})
	})
	t.Run("Failover", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) chunkstore.WriteStore {
			return open(t, dir(t)+","+dir(t), Options{})
		})
	})
	t.Run("Reopened", func(t *testing.T) {
		var up atomic.Bool
		fakeSSH(t, func(chunkstore.Location, sshstore.ClientOptions) (chunkstore.Store, error) {
			if !up.Load() {
				return nil, errors.New("connection refused")
			}
			return chunkstore.NewMemory(chunkstore.MemoryOptions{}), nil
		})
		storetest.Run(t, func(t *testing.T) chunkstore.WriteStore {
			up.Store(false)
			s := open(t, "ssh://h/srv,"+dir(t), Options{})
			up.Store(true)
			return s
		})
	})
}

func TestWithSSHFromEnv(t *testing.T) {
	tests := []struct {
		name      string
		env       map[string]string
		wantKeys  []string
		wantHosts string
	}{
		{name: "defaults", env: nil},
		{name: "one key", env: map[string]string{sshstore.EnvKeys: "/k/id"}, wantKeys: []string{"/k/id"}},
		{name: "list", env: map[string]string{sshstore.EnvKeys: "/k/a, /k/b,", sshstore.EnvKnownHosts: "/k/known"},
			wantKeys: []string{"/k/a", "/k/b"}, wantHosts: "/k/known"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Credentials{}.WithSSHFromEnv(func(k string) string { return tt.env[k] })
			if !slices.Equal(c.SSHKeys, tt.wantKeys) || c.SSHKnownHosts != tt.wantHosts {
				t.Errorf("WithSSHFromEnv(%v) = keys %q, known_hosts %q; want %q, %q",
					tt.env, c.SSHKeys, c.SSHKnownHosts, tt.wantKeys, tt.wantHosts)
			}
		})
	}
}

// batchCounter is a BatchGetter backend that counts its batch reads.
type batchCounter struct {
	chunkstore.Store
	batches atomic.Int64
	chunks  atomic.Int64
}

func (b *batchCounter) GetChunks(ctx context.Context, ids []casync.ChunkID, fn func(chunkstore.Got)) {
	b.batches.Add(1)
	b.chunks.Add(int64(len(ids)))
	for i, id := range ids {
		data, err := b.Store.GetChunk(ctx, id)
		fn(chunkstore.Got{Index: i, Data: data, Err: err})
	}
}

// TestOpenPassesBatches: a batch read of the store Open composes (cache,
// counting, retry, failover) reaches a backend that reads in batches as
// one batch, for a single store and for a list whose first member lacks
// nothing.
func TestOpenPassesBatches(t *testing.T) {
	ctx := context.Background()
	cs := storetest.Chunks(130, 20)
	for _, spec := range []string{"ssh://a/store", "ssh://a/store,ssh://b/store"} {
		t.Run(spec, func(t *testing.T) {
			var backs []*batchCounter
			fakeSSH(t, func(chunkstore.Location, sshstore.ClientOptions) (chunkstore.Store, error) {
				mem := chunkstore.NewMemory(chunkstore.MemoryOptions{})
				for _, c := range cs {
					if err := mem.StoreChunk(ctx, c.ID, c.Data); err != nil {
						return nil, err
					}
				}
				b := &batchCounter{Store: mem}
				backs = append(backs, b)
				return b, nil
			})
			o, err := Open(ctx, spec, Options{Cache: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			defer o.Close()
			ids := make([]casync.ChunkID, len(cs))
			for i, c := range cs {
				ids[i] = c.ID
			}
			n := 0
			chunkstore.GetChunks(ctx, o.Store, ids, 4, func(g chunkstore.Got) {
				n++
				if g.Err != nil || !bytes.Equal(g.Data, cs[g.Index].Data) {
					t.Errorf("chunk %d: %v", g.Index, g.Err)
				}
			})
			if n != len(cs) {
				t.Errorf("%d answers, want %d", n, len(cs))
			}
			if b, c := backs[0].batches.Load(), backs[0].chunks.Load(); b != 1 || c != int64(len(cs)) {
				t.Errorf("backend got %d batches of %d chunks in all, want 1 of %d", b, c, len(cs))
			}
			if st := o.Remote.Stats(); st.Batches != 1 || st.Requests != uint64(len(cs)) {
				t.Errorf("Remote.Stats() = %+v, want 1 batch, %d requests", st, len(cs))
			}
		})
	}
}
