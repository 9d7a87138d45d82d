package sshstore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/internal/testenv"
)

// casyncTimeout bounds each casync run on a big tree: one that hangs
// fails the test instead of blocking it.
const casyncTimeout = 3 * time.Minute

// writeBigTree writes a tree of about 60 MB from seed into dir: large
// random files (incompressible, many chunks each), 1,500 small files, and
// files made of one random block repeated (the same chunks many times,
// within a file and across files).
func writeBigTree(t *testing.T, dir string, seed uint64) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, seed+1))
	write := func(name string, b []byte) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 4 {
		write(fmt.Sprintf("random/%d.bin", i), randomBytes(r, 8<<20+r.IntN(64<<10)))
	}
	words := []string{"chunk", "store", "casync", "over", "ssh", "boot", "image", "\n"}
	for i := range 1500 {
		var b strings.Builder
		for b.Len() < 1<<10+r.IntN(15<<10) {
			b.WriteString(words[r.IntN(len(words))])
			b.WriteByte(' ')
		}
		write(fmt.Sprintf("small/%02d/%04d.txt", i%30, i), []byte(b.String()))
	}
	block := randomBytes(r, 1<<20)
	for i := range 4 {
		var b []byte
		for range 4 {
			b = append(b, block...)
		}
		write(fmt.Sprintf("repeated/%d.bin", i), b)
	}
	if err := os.Symlink("random/0.bin", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
}

// runCasync runs casync with env and fails the test if it fails or takes
// longer than casyncTimeout.
func runCasync(t *testing.T, env []string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), casyncTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "casync", args...)
	cmd.Env = append(os.Environ(), env...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("casync %s did not finish in %v:\n%s", strings.Join(args, " "), casyncTimeout, out)
	}
	if err != nil {
		t.Fatalf("casync %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("casync %s: %v", args[0], time.Since(start).Round(time.Millisecond))
	return string(out)
}

// bigTreeFixture is a big tree that the real casync made into a store
// and index, served by our server.
type bigTreeFixture struct {
	*fixture
	tree, store, index string
	env                []string // CASYNC_SSH_PATH
}

func newBigTreeFixture(t *testing.T) *bigTreeFixture {
	t.Helper()
	testenv.LookPath(t, "casync")
	testenv.LookPath(t, "ssh")
	dir := t.TempDir()
	bf := &bigTreeFixture{
		tree:  filepath.Join(dir, "tree"),
		store: filepath.Join(dir, "store"),
		index: filepath.Join(dir, "tree.caidx"),
	}
	writeBigTree(t, bf.tree, 15)
	runCasync(t, nil, "make", "--store="+bf.store, bf.index, bf.tree)
	local, err := chunkstore.NewLocal(bf.store, chunkstore.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bf.fixture = startServer(t, local, ServerOptions{StorePath: bf.store})
	bf.env = []string{"CASYNC_SSH_PATH=" + sshWrapper(t, bf.fixture)}
	return bf
}

// TestCasyncExtractBigTreeOverSSH is issue 15's hang: the real casync
// asks for each chunk twice and closes its end with answers unread; the
// server must let it go.
func TestCasyncExtractBigTreeOverSSH(t *testing.T) {
	bf := newBigTreeFixture(t)
	out := filepath.Join(t.TempDir(), "out")
	runCasync(t, bf.env, "extract", "--store=127.0.0.1:"+bf.store, bf.index, out)
	want := runCasync(t, nil, "digest", bf.tree)
	if got := runCasync(t, nil, "digest", out); got != want {
		t.Errorf("casync digest of the extracted tree = %s, want %s", got, want)
	}
}

// TestCasyncMountBigTreeOverSSH mounts the index with the real casync
// through our server and reads the whole tree through FUSE.
func TestCasyncMountBigTreeOverSSH(t *testing.T) {
	testenv.RequireRoot(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		testenv.Skip(t, "no /dev/fuse: "+err.Error())
	}
	testenv.LookPath(t, "fusermount3")
	bf := newBigTreeFixture(t)
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("casync", "mount", "--store=127.0.0.1:"+bf.store, bf.index, mnt)
	cmd.Env = append(os.Environ(), bf.env...)
	logs := &testenv.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		exec.Command("fusermount3", "-u", "-z", mnt).Run()
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !mounted(mnt) {
		select {
		case err := <-exited:
			t.Fatalf("casync mount exited before mounting: %v\n%s", err, logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("casync mount did not mount %s in 30s:\n%s", mnt, logs.String())
		}
	}
	want := runCasync(t, nil, "digest", bf.tree)
	if got := runCasync(t, nil, "digest", mnt); got != want {
		t.Errorf("casync digest of the mounted tree = %s, want %s\n%s", got, want, logs.String())
	}
}

// mounted reports whether dir is a mount point.
func mounted(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// TestCasyncMakeBigTreeOverSSH pushes a big tree with the real casync
// make to our server and extracts it again from what the server stored.
func TestCasyncMakeBigTreeOverSSH(t *testing.T) {
	testenv.LookPath(t, "casync")
	testenv.LookPath(t, "ssh")
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	writeBigTree(t, tree, 16)
	store := filepath.Join(dir, "store")
	indexes := filepath.Join(dir, "indexes")
	for _, d := range []string{store, indexes} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	local, err := chunkstore.NewLocal(store, chunkstore.LocalOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	f := startWriteServer(t, local, ServerOptions{StorePath: store, IndexDir: indexes})
	env := []string{"CASYNC_SSH_PATH=" + sshWrapper(t, f)}
	index := filepath.Join(indexes, "tree.caidx")
	runCasync(t, env, "make", "--store=127.0.0.1:"+store, "127.0.0.1:"+index, tree)
	checkIndexChunks(t, index, store)

	out := filepath.Join(t.TempDir(), "out")
	runCasync(t, nil, "extract", "--store="+store, index, out)
	want := runCasync(t, nil, "digest", tree)
	if got := runCasync(t, nil, "digest", out); got != want {
		t.Errorf("casync digest of the tree pushed and extracted = %s, want %s", got, want)
	}
}
