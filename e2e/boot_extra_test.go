package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/internal/prefetchlist"
	"github.com/bootfs/bootfs/internal/testenv"
)

// TestNoBootfsInView: no file the workload can read names /.bootfs: not
// the root directory, not the mount table (overlayfs shows its
// lowerdir, upperdir and workdir options as given), with the default
// upper volume, a BOOTFS_UPPER volume and a named volume. (The process
// list does: boot is PID 1, as docker-init is with --init.)
func TestNoBootfsInView(t *testing.T) {
	e := setup(t)
	script := `ls -a /; cat /proc/mounts /proc/self/mountinfo; ls /proc`
	tests := []struct {
		name  string
		flags []string
	}{
		{name: "upper volume"},
		{name: "volume upper", flags: []string{"-v", e.volume(t, "upper") + ":/upper", "-e", "BOOTFS_UPPER=/upper"}},
		{name: "named volume", flags: []string{"-v", e.volume(t, "view") + ":/data"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := e.run(t, true, tt.flags, e.bbBoot, "sh", "-c", script)
			if got.code != 0 || !strings.Contains(got.stdout, " overlay ") {
				t.Fatalf("exit %d, no overlay in the mount table:\n%s\nstderr: %s", got.code, got.stdout, got.stderr)
			}
			for _, l := range strings.Split(got.stdout, "\n") {
				if strings.Contains(l, ".bootfs") {
					t.Errorf("the workload sees %q", l)
				}
			}
		})
	}
}

// TestDockerUser: docker run --user UID[:GID] on a converted image runs
// as the original does: boot is setuid root, mounts, and hands the
// workload Docker's ids plus what the image's passwd and group give.
func TestDockerUser(t *testing.T) {
	e := setup(t)
	script := `id; echo $HOME; pwd; echo w > /tmp/f && cat /tmp/f && ls -ln /tmp/f | cut -c1-10; touch /etc/x 2>/dev/null || echo no-etc; exit 3`
	for _, flags := range [][]string{
		{"--user", "1000"},
		{"--user", "1000:29"},
		{"--user", "4242"},
		{"--user", "65534:65534"},
		{"--user", "1000", "--group-add", "29"},
		{"--user", "4242", "--group-add", "10", "-w", "/data"},
	} {
		t.Run(strings.Join(flags, " "), func(t *testing.T) {
			want := e.run(t, false, flags, e.bb, "sh", "-c", script)
			got := e.run(t, true, flags, e.bbBoot, "sh", "-c", script)
			if got.stdout != want.stdout || got.code != want.code || got.code != 3 {
				t.Errorf("docker run %v: got (exit %d)\n%s\nwant (exit %d)\n%s\nstderr: %s", flags, got.code, got.stdout, want.code, want.stdout, got.stderr)
			}
		})
	}
	t.Run("UID:0 takes the passwd group", func(t *testing.T) {
		// Docker gives gid 0 for --user 1000 and --user 1000:0 alike;
		// boot takes alice's group for both (the documented ambiguity).
		got := e.run(t, true, []string{"--user", "1000:0"}, e.bbBoot, "id", "-g")
		if got.stdout != "1000\n" {
			t.Errorf("--user 1000:0: id -g = %q, want 1000; stderr: %s", got.stdout, got.stderr)
		}
	})
	t.Run("stats written with the user's rights", func(t *testing.T) {
		dir := t.TempDir()
		mine, roots := filepath.Join(dir, "mine"), filepath.Join(dir, "roots")
		for _, d := range []string{mine, roots} {
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		os.Chown(mine, 1000, 1000)
		for _, tc := range []struct {
			dir    string
			wantOK bool
		}{{mine, true}, {roots, false}} {
			got := e.run(t, true, []string{"--user", "1000", "-v", dir + ":/out", "-e", "BOOTFS_STATS=/out/" + filepath.Base(tc.dir) + "/s.json"}, e.bbBoot, "true")
			fi, err := os.Stat(filepath.Join(tc.dir, "s.json"))
			if got.code != 0 || (err == nil) != tc.wantOK {
				t.Errorf("BOOTFS_STATS into %s (owner uid 1000: %v): exit %d, stats file: %v; stderr: %s", tc.dir, tc.wantOK, got.code, err, got.stderr)
			}
			if err == nil && fi.Sys().(*syscall.Stat_t).Uid != 1000 {
				t.Errorf("stats file owned by uid %d, want 1000", fi.Sys().(*syscall.Stat_t).Uid)
			}
		}
	})
	secret := filepath.Join(t.TempDir(), "secret.pem")
	if err := os.WriteFile(secret, []byte("root only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	refusals := []struct {
		name, want string
		flags      []string
		args       []string
	}{
		{name: "boot mount", want: "only the init", flags: []string{"--user", "1000", "--entrypoint", "/.bootfs/boot"},
			args: []string{"mount", "--store", "/", "/.bootfs/rootfs.caidx", "/tmp"}},
		{name: "workload command", want: "only the init", flags: []string{"--user", "1000", "--entrypoint", "/.bootfs/boot"},
			args: []string{"__bootfs_workload"}},
		{name: "BOOTFS_USER", want: "BOOTFS_USER is not allowed", flags: []string{"--user", "1000", "-e", "BOOTFS_USER=0"}, args: []string{"id"}},
		{name: "BOOTFS_UPPER", want: "BOOTFS_UPPER is not allowed", flags: []string{"--user", "1000", "-e", "BOOTFS_UPPER=/"}, args: []string{"id"}},
		{name: "BOOTFS_CACHE", want: "BOOTFS_CACHE is not allowed", flags: []string{"--user", "1000", "-e", "BOOTFS_CACHE=/etc"}, args: []string{"id"}},
		{name: "unreadable CA file", want: "permission denied", flags: []string{"--user", "1000", "-v", secret + ":/secret.pem", "-e", "BOOTFS_CA_FILE=/secret.pem"}, args: []string{"id"}},
	}
	for _, tt := range refusals {
		t.Run("refuses "+tt.name, func(t *testing.T) {
			got := e.run(t, true, tt.flags, e.bbBoot, tt.args...)
			if got.code == 0 || !strings.Contains(got.stderr, tt.want) || strings.Contains(got.stdout, "uid=") {
				t.Errorf("docker run %v %v: exit %d, stdout %q, stderr %q; want a failure saying %q", tt.flags, tt.args, got.code, got.stdout, got.stderr, tt.want)
			}
		})
	}
}

// bgImage makes an image of the busybox tree plus 6 MiB of random
// files that a workload that only sleeps never reads, converted with its
// index written to the returned path.
func bgImage(t *testing.T, e *env) (orig, boot, index string) {
	t.Helper()
	tree := filepath.Join(e.tmp, "bb-bg")
	if err := os.CopyFS(tree, os.DirFS(filepath.Join(e.tmp, "bb"))); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(tree, "blobs"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i, size := range []int{1 << 20, 2 << 20, 3 << 20} {
		b := make([]byte, size)
		rand.Read(b)
		writeFile(t, filepath.Join(tree, "blobs", fmt.Sprintf("b%d", i)), b)
	}
	orig, boot = e.prefix+"/bbbg:orig", e.prefix+"/bbbg:boot"
	if err := dockerImport(tree, orig, `CMD ["/bin/sh"]`); err != nil {
		t.Fatal(err)
	}
	index = filepath.Join(e.tmp, "bg.caidx")
	if _, err := e.convert(orig, boot, e.store, "--index-out", index); err != nil {
		t.Fatal(err)
	}
	return orig, boot, index
}

// TestBackgroundFill: with BOOTFS_BACKGROUND=1 every chunk of the image
// is in the cache after the workload ran a while, though it read none
// of the big files; a second container with the store gone reads every
// file of the image from that cache, with the original's content.
func TestBackgroundFill(t *testing.T) {
	e := setup(t)
	orig, boot, index := bgImage(t, e)
	f, err := os.Open(index)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := casync.ReadIndex(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	cache, out := t.TempDir(), t.TempDir()
	flags := []string{"-v", cache + ":/.bootfs/cache", "-v", out + ":/out", "-e", "BOOTFS_STATS=/out/s.json"}

	got := e.run(t, true, append(flags, "-e", "BOOTFS_BACKGROUND=1", "-e", "BOOTFS_LOG=debug"), boot, "sh", "-c", "sleep 3; echo slept")
	if got.code != 0 || got.stdout != "slept\n" || !strings.Contains(got.stderr, "background fill done") {
		t.Fatalf("background run: exit %d, stdout %q; want slept and a finished fill; stderr:\n%s", got.code, got.stdout, got.stderr)
	}
	first := readStats(t, filepath.Join(out, "s.json"))
	unique := make(map[casync.ChunkID]bool)
	for _, c := range idx.Chunks {
		unique[c.ID] = true
	}
	missing := 0
	for id := range unique {
		s := id.String()
		if _, err := os.Stat(filepath.Join(cache, s[:4], s+".cacnk")); err != nil {
			missing++
		}
	}
	var stray []string
	filepath.WalkDir(cache, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasSuffix(p, ".cacnk") {
			stray = append(stray, p)
		}
		return nil
	})
	if missing > 0 || len(stray) > 0 || first.ChunksFetched != uint64(len(unique)) {
		t.Errorf("after the background fill: %d of %d chunks missing from the cache, stray files %q, stats %+v (want every chunk fetched once)",
			missing, len(unique), stray, first)
	}

	// The store is gone: everything must come from the cache.
	script := `find / -xdev -type f | grep -v -e '^/etc/host' -e '^/etc/resolv.conf' | sort | xargs md5sum`
	want := e.run(t, false, nil, orig, "sh", "-c", script)
	dead := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	got = e.run(t, true, append(flags, "-e", "BOOTFS_STORE="+dead, "-e", "BOOTFS_TIMEOUT=2s"), boot, "sh", "-c", script)
	second := readStats(t, filepath.Join(out, "s.json"))
	if got.code != 0 || got.stdout != want.stdout || !strings.Contains(got.stdout, "/blobs/b2") {
		t.Errorf("md5sum of every file, store stopped: exit %d\n%s\nwant (original, exit %d)\n%s\nstderr: %s", got.code, got.stdout, want.code, want.stdout, got.stderr)
	}
	if second.ChunksFetched != 0 || second.Errors != 0 || second.CacheHits == 0 {
		t.Errorf("second run stats = %+v, want everything from the cache", second)
	}
	t.Logf("background fill: %d chunks, %d bytes; second run %+v", first.ChunksFetched, first.BytesFetched, second)
}

// TestRecord: BOOTFS_RECORD lists the image files the workload read, in
// first-read order, each once, as absolute paths.
func TestRecord(t *testing.T) {
	e := setup(t)
	dir := t.TempDir()
	got := e.run(t, true, []string{"-v", dir + ":/rec", "-e", "BOOTFS_RECORD=/rec/list"}, e.bbBoot, "sh", "-c", "cat /etc/os-release; cat /etc/os-release /data/hello >/dev/null")
	if got.code != 0 || !strings.Contains(got.stdout, "bootfs busybox") {
		t.Fatalf("exit %d, stdout %q; stderr: %s", got.code, got.stdout, got.stderr)
	}
	b, list := readRecord(t, filepath.Join(dir, "list"))
	var paths []string
	for _, e := range list {
		paths = append(paths, e.Path)
	}
	bb, osr, hello := slices.Index(paths, "/bin/busybox"), slices.Index(paths, "/etc/os-release"), slices.Index(paths, "/data/hello")
	sorted := slices.Clone(paths)
	slices.Sort(sorted)
	if bb < 0 || osr < 0 || hello < 0 || bb > osr || osr > hello || len(slices.Compact(sorted)) != len(paths) {
		t.Errorf("BOOTFS_RECORD list:\n%s\nwant /bin/busybox, then /etc/os-release, then /data/hello, each once", b)
	}
	for _, p := range paths {
		if !strings.HasPrefix(p, "/") || strings.Contains(p, ".bootfs") {
			t.Errorf("BOOTFS_RECORD list has %q, want absolute image paths", p)
		}
	}
	t.Logf("recorded: %q", paths)
}

// readRecord reads and parses a BOOTFS_RECORD list, as mkimage --prefetch
// would, and returns its bytes too.
func readRecord(t *testing.T, file string) ([]byte, []prefetchlist.Entry) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	list, err := prefetchlist.Parse(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("BOOTFS_RECORD list %s:\n%s\n%v", file, b, err)
	}
	return b, list
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key
// into dir, readable by anyone (dir and its parent too, for a container
// user), and returns the certificate's pool too.
func selfSigned(t *testing.T, dir string) (cert, key string, pool *x509.CertPool) {
	t.Helper()
	cert, key, pool = testenv.WriteSelfSignedCert(t, dir)
	for _, p := range []string{dir, filepath.Dir(dir)} {
		os.Chmod(p, 0o755)
	}
	return cert, key, pool
}

// TestHTTPSStore: boot reads an https store whose certificate a CA file
// vouches for (BOOTFS_CA_FILE, also for a --user container), and without
// it fails with a certificate error and a non-zero exit.
func TestHTTPSStore(t *testing.T) {
	e := setup(t)
	dir := t.TempDir()
	cert, key, pool := selfSigned(t, dir)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cmd := exec.Command(filepath.Join(e.bin, "chunkstore"), "serve", "--dir", e.store, "--http", addr, "--tls-cert", cert, "--tls-key", key)
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	url := "https://" + addr
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: time.Second}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := client.Get(url + "/0000/" + strings.Repeat("0", 64) + ".cacnk")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("chunkstore serve --tls-cert on %s did not come up: %v\n%s", addr, err, log.String())
		}
	}
	want := e.run(t, false, nil, e.bb, "cat", "/etc/os-release")
	base := []string{"-e", "BOOTFS_STORE=" + url, "-e", "BOOTFS_CACHE=none", "-e", "BOOTFS_TIMEOUT=5s"}
	ca := []string{"-v", dir + ":/ca:ro", "-e", "BOOTFS_CA_FILE=/ca/cert.pem"}
	tests := []struct {
		name   string
		flags  []string
		wantOK bool
	}{
		{name: "with the CA file", flags: ca, wantOK: true},
		{name: "with the CA file, --user", flags: append([]string{"--user", "1000"}, ca...), wantOK: true},
		{name: "without a CA file", flags: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := e.run(t, true, append(slices.Clone(base), tt.flags...), e.bbBoot, "cat", "/etc/os-release")
			switch {
			case tt.wantOK && (got.code != 0 || got.stdout != want.stdout):
				t.Errorf("exit %d, stdout %q, want %q; stderr: %s", got.code, got.stdout, want.stdout, got.stderr)
			case !tt.wantOK && (got.code == 0 || !strings.Contains(got.stderr, "certificate signed by unknown authority") || !strings.Contains(got.stderr, "BOOTFS_CA_FILE")):
				t.Errorf("exit %d, stderr:\n%s\nwant a non-zero exit and a certificate error naming BOOTFS_CA_FILE", got.code, got.stderr)
			}
			if !tt.wantOK {
				t.Logf("without the CA file: exit %d, stderr:\n%s", got.code, got.stderr)
			}
		})
	}
}
