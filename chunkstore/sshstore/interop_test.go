package sshstore

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/folbricht/desync"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/internal/testenv"
)

// casyncFixture is a tree made into a casync store and index by the real
// casync, served by our server, with an OpenSSH wrapper for
// CASYNC_SSH_PATH.
type casyncFixture struct {
	*fixture
	tree, store, index, wrapper string
}

func newCasyncFixture(t *testing.T) *casyncFixture {
	t.Helper()
	casyncBin := testenv.LookPath(t, "casync")
	testenv.LookPath(t, "ssh")
	dir := t.TempDir()
	cf := &casyncFixture{
		tree:  filepath.Join(dir, "tree"),
		store: filepath.Join(dir, "store"),
		index: filepath.Join(dir, "tree.caidx"),
	}
	r := rand.New(rand.NewPCG(11, 12))
	files := map[string][]byte{
		"small":         []byte("hello\n"),
		"sub/random":    randomBytes(r, 700<<10),
		"sub/zeros":     make([]byte, 300<<10),
		"sub/deeper/md": bytes.Repeat([]byte("chunk store over ssh\n"), 20000),
	}
	for name, b := range files {
		p := filepath.Join(cf.tree, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("sub/random", filepath.Join(cf.tree, "link")); err != nil {
		t.Fatal(err)
	}
	run(t, nil, casyncBin, "make", "--store="+cf.store, cf.index, cf.tree)

	local, err := chunkstore.NewLocal(cf.store, chunkstore.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cf.fixture = startServer(t, local, ServerOptions{StorePath: cf.store})
	cf.wrapper = filepath.Join(cf.dir, "ssh-wrapper")
	script := "#!/bin/sh\nexec ssh -F /dev/null -p " + cf.port + " -i " + cf.clientKey +
		" -o UserKnownHostsFile=" + cf.knownHosts +
		" -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes -o LogLevel=QUIET \"$@\"\n"
	if err := os.WriteFile(cf.wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return cf
}

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// run runs a command with extra environment and returns its combined
// output, failing the test if it fails.
func run(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	out, err := command(env, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func command(env []string, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// chunkIDs lists the chunks in a casync-layout store directory.
func chunkIDs(t *testing.T, store string) []casync.ChunkID {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(store, "*", "*.cacnk"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no chunks in %s: %v", store, err)
	}
	ids := make([]casync.ChunkID, len(files))
	for i, f := range files {
		if ids[i], err = casync.ParseChunkID(strings.TrimSuffix(filepath.Base(f), ".cacnk")); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// TestCasyncExtractOverSSH has the real casync extract an index through
// OpenSSH from our server, and compares the result with the tree.
func TestCasyncExtractOverSSH(t *testing.T) {
	cf := newCasyncFixture(t)
	env := []string{"CASYNC_SSH_PATH=" + cf.wrapper}
	// casync takes scp-style "host:path" for ssh; "ssh://" would make it
	// look for a casync-ssh protocol helper, which does not exist.
	for _, store := range []string{"127.0.0.1:" + cf.store, "tester@127.0.0.1:" + cf.store} {
		t.Run(store, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			run(t, env, "casync", "extract", "--store="+store, cf.index, out)
			want := run(t, nil, "casync", "digest", cf.tree)
			if got := run(t, nil, "casync", "digest", out); got != want {
				t.Errorf("casync digest of extracted tree = %s, want %s", got, want)
			}
			run(t, nil, "diff", "-r", "--no-dereference", cf.tree, out)
		})
	}
	if !hasLine(cf.logs.String(), "chunk request", "result=sent") {
		t.Errorf("server log shows no chunk sent:\n%s", cf.logs.String())
	}
}

// TestCasyncExtractDamagedStore checks that casync fails, rather than
// writing bad data, when a chunk is missing or altered on the server.
func TestCasyncExtractDamagedStore(t *testing.T) {
	cf := newCasyncFixture(t)
	env := []string{"CASYNC_SSH_PATH=" + cf.wrapper}
	ids := chunkIDs(t, cf.store)
	altered := chunkPath(cf.store, ids[0])
	if err := os.WriteFile(altered, casync.CompressChunk(nil, []byte("altered on disk")), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	b, err := command(env, "casync", "extract", "--store=127.0.0.1:"+cf.store, cf.index, out).CombinedOutput()
	if err == nil {
		t.Fatalf("casync extract with an altered chunk succeeded:\n%s", b)
	}
	if !hasLine(cf.logs.String(), "corrupt chunk in store", ids[0].String()) {
		t.Errorf("server log does not report altered chunk %s:\n%s", ids[0], cf.logs.String())
	}
	t.Logf("casync extract: %v: %s", err, bytes.TrimSpace(b))
}

// TestDesyncReadsOverSSH has desync's SSH store read every chunk from our
// server through OpenSSH.
func TestDesyncReadsOverSSH(t *testing.T) {
	cf := newCasyncFixture(t)
	t.Setenv("CASYNC_SSH_PATH", cf.wrapper)
	u, err := url.Parse("ssh://127.0.0.1" + cf.store)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := desync.NewRemoteSSHStore(u, desync.StoreOptions{N: 2})
	if err != nil {
		t.Fatalf("desync.NewRemoteSSHStore(%s) = %v", u, err)
	}
	defer rs.Close()
	for _, id := range chunkIDs(t, cf.store) {
		want := readChunkFile(t, cf.store, id)
		did, err := desync.ChunkIDFromString(id.String())
		if err != nil {
			t.Fatal(err)
		}
		c, err := rs.GetChunk(did)
		if err != nil {
			t.Fatalf("desync GetChunk(%s) = %v", id, err)
		}
		got, err := c.Data()
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("desync GetChunk(%s).Data() = %d bytes, %v, want %d bytes", id, len(got), err, len(want))
		}
	}
	missing, _ := desync.ChunkIDFromString(casync.SHA512_256.Sum([]byte("missing")).String())
	_, err = rs.GetChunk(missing)
	var cm desync.ChunkMissing
	if !errors.As(err, &cm) {
		t.Errorf("desync GetChunk(missing) = %v, want ChunkMissing", err)
	}
}

// TestClientReadsCasyncStore has our client read, through our server, a
// store that the real casync made.
func TestClientReadsCasyncStore(t *testing.T) {
	cf := newCasyncFixture(t)
	s, err := openURL("ssh://127.0.0.1:"+cf.port+cf.store, cf.clientOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, id := range chunkIDs(t, cf.store) {
		got, err := s.GetChunk(context.Background(), id)
		if want := readChunkFile(t, cf.store, id); err != nil || !bytes.Equal(got, want) {
			t.Errorf("GetChunk(%s) = %d bytes, %v, want %d bytes", id, len(got), err, len(want))
		}
	}
}

// readChunkFile decompresses a chunk file written by casync.
func readChunkFile(t *testing.T, store string, id casync.ChunkID) []byte {
	t.Helper()
	frame, err := os.ReadFile(chunkPath(store, id))
	if err != nil {
		t.Fatal(err)
	}
	data, err := casync.DecodeChunk(casync.SHA512_256, id, frame)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
