package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore/opener"
	"github.com/bootfs/bootfs/internal/mountinfo"
	"github.com/bootfs/bootfs/internal/testenv"
)

// TestReadInRoot: a container's files are read inside its root only, as
// regular files of bounded size.
func TestReadInRoot(t *testing.T) {
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret")
	if err := os.WriteFile(secret, []byte("host secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	writeTree(t, root, map[string]string{".bootfs/config.json": "{}", "etc/passwd": "inside\n", "big": strings.Repeat("x", 2000)})
	rel, err := filepath.Rel(filepath.Join(root, ".bootfs"), secret)
	if err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{
		"abs":     secret,        // the host's path, from the agent's root
		"dotdot":  rel,           // ../../.. out of the root
		"tohost":  "/etc/passwd", // resolves to the container's own
		"magic":   "/proc/self/root/" + secret[1:],
		"dirlink": "/etc",
	} {
		if err := os.Symlink(target, filepath.Join(root, ".bootfs", name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mkfifo(filepath.Join(root, ".bootfs/fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A container has a /proc, whose magic links lead anywhere.
	magicErr := "no such file"
	if os.Geteuid() == 0 {
		proc := filepath.Join(root, "proc")
		os.Mkdir(proc, 0o755)
		if err := unix.Mount("/proc", proc, "", unix.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
		defer unix.Unmount(proc, unix.MNT_DETACH)
		magicErr = "symbolic links"
	}
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	tests := []struct {
		name    string
		path    string
		limit   int64
		want    string
		wantErr string
	}{
		{name: "regular", path: "/.bootfs/config.json", limit: 100, want: "{}"},
		{name: "absolute symlink stays inside", path: "/.bootfs/abs", limit: 100, wantErr: "no such file"},
		{name: "dotdot symlink stays inside", path: "/.bootfs/dotdot", limit: 100, wantErr: "no such file"},
		{name: "dotdot path stays inside", path: "/../../../../" + secret, limit: 100, wantErr: "no such file"},
		{name: "symlink to the container's own file", path: "/.bootfs/tohost", limit: 100, want: "inside\n"},
		{name: "magic link refused", path: "/.bootfs/magic", limit: 100, wantErr: magicErr},
		{name: "directory", path: "/.bootfs/dirlink", limit: 100, wantErr: "not a regular file"},
		{name: "fifo", path: "/.bootfs/fifo", limit: 100, wantErr: "not a regular file"},
		{name: "too big", path: "/big", limit: 1000, wantErr: "more than the agent reads"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readInRoot(fd, tt.path, tt.limit)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("readInRoot(%q) = %q, %v; want an error with %q", tt.path, got, err, tt.wantErr)
				}
				if strings.Contains(string(got), "host secret") {
					t.Errorf("readInRoot(%q) read the host's file", tt.path)
				}
				return
			}
			if err != nil || string(got) != tt.want {
				t.Errorf("readInRoot(%q) = %q, %v; want %q", tt.path, got, err, tt.want)
			}
		})
	}
}

// TestContainerBinds: the caller's mounts its new root gets, parents
// first, with neither its image files nor the agent's socket.
func TestContainerBinds(t *testing.T) {
	var ms []mountinfo.Mount
	for _, p := range []string{"/", "/proc", "/proc/sys", "/dev", "/dev/pts", "/sys", "/.bootfs/cache", "/run/bootfs",
		"/etc/hosts", "/data/sub", "/data", "/etc/resolv.conf", "/run/bootfsx"} {
		ms = append(ms, mountinfo.Mount{Point: p})
	}
	var got []string
	for _, b := range containerBinds(ms) {
		got = append(got, b.point)
	}
	want := []string{"/proc", "/dev", "/sys", "/data", "/etc/hosts", "/etc/resolv.conf", "/run/bootfsx"}
	if !slices.Equal(got, want) {
		t.Errorf("containerBinds = %q, want %q", got, want)
	}
}

// TestAllowed: an image's store counts as the agent's only if every URL
// of it is on the agent's list.
func TestAllowed(t *testing.T) {
	a := &Agent{opts: Options{Stores: []string{"http://a:1", "/srv/store"}}}
	for url, want := range map[string]bool{
		"http://a:1": true, "http://a:1,/srv/store": true, "http://evil:1": false, "http://a:1,http://evil:1": false,
	} {
		if got := a.allowed(url); got != want {
			t.Errorf("allowed(%q) = %v, want %v", url, got, want)
		}
	}
}

// startAgent serves an agent on a socket in a new directory.
func startAgent(t *testing.T, opened *int) (*Agent, string) {
	t.Helper()
	dir := t.TempDir()
	a, err := New(Options{
		SocketDir: dir,
		Cache:     filepath.Join(dir, "cache"),
		Open: func(ctx context.Context, d casync.Digest) (*opener.Opened, error) {
			*opened++
			// Write creates the store directory, as the test's
			// chunks go in later.
			return opener.Open(ctx, filepath.Join(dir, "store"), opener.Options{Digest: d, Write: true, Cache: filepath.Join(dir, "cache")})
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		a.Close()
	})
	sock := SocketPath(dir)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
	}
	return a, sock
}

// TestRefusesOwnNamespace: a caller in the agent's own mount namespace
// (a process on the host) is refused before anything is read or opened:
// the agent never pivots its own namespace.
func TestRefusesOwnNamespace(t *testing.T) {
	testenv.RequireRoot(t)
	opened := 0
	a, sock := startAgent(t, &opened)
	_, err := MountRoot(sock, Request{}, 10*time.Second)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "mount namespace") {
		t.Errorf("MountRoot from the agent's namespace = %v; want a refusal naming the mount namespace", err)
	}
	if opened != 0 || a.Mounts() != 0 {
		t.Errorf("after the refusal: %d stores opened, %d mounts; want none", opened, a.Mounts())
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, %v; want 0600", fi.Mode(), err)
	}
}

// TestBadRequest: a request of another protocol version, or not JSON,
// gets a clear answer, and the agent goes on serving.
func TestBadRequest(t *testing.T) {
	opened := 0
	_, sock := startAgent(t, &opened)
	for _, msg := range []string{`{"version": 2}`, `not json`} {
		c, err := dialPacket(sock)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(msg))
		buf := make([]byte, 4096)
		n, err := c.Read(buf)
		c.Close()
		if err != nil || !strings.Contains(string(buf[:n]), "bad request") {
			t.Errorf("answer to %q = %q, %v; want a bad request error", msg, buf[:n], err)
		}
	}
}
