package e2e

import (
	"bufio"
	"bytes"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bootfs/bootfs/internal/prefetchlist"
	"github.com/bootfs/bootfs/internal/testenv"
)

// agent is a bootfs-agent the test started as a host process.
type agent struct {
	sockDir, cache, metrics string
	cmd                     *exec.Cmd
	log                     *testenv.SyncBuffer
}

// startAgent starts bootfs-agent reading store, with a fresh cache and
// socket directory and metrics on a loopback port; it stops at the end of
// t.
func startAgent(t *testing.T, e *env, store string, extra ...string) *agent {
	t.Helper()
	return startAgentIn(t, e, t.TempDir(), store, extra...)
}

// startAgentIn starts bootfs-agent with its socket and cache in dir.
func startAgentIn(t *testing.T, e *env, dir, store string, extra ...string) *agent {
	t.Helper()
	a := newAgent(t, e, dir, store, extra...)
	a.start(t)
	return a
}

// newAgent returns a bootfs-agent with its socket and cache in dir, for
// start to start.
func newAgent(t *testing.T, e *env, dir, store string, extra ...string) *agent {
	t.Helper()
	a := &agent{sockDir: filepath.Join(dir, "sock"), cache: filepath.Join(dir, "cache"), log: &testenv.SyncBuffer{}}
	a.metrics = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	args := append([]string{"--socket-dir", a.sockDir, "--store", store, "--cache", a.cache, "--metrics", a.metrics, "--log-level", "debug"}, extra...)
	a.cmd = exec.Command(filepath.Join(e.bin, "bootfs-agent"), args...)
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	return a
}

// start starts a and waits for its socket; a stops at the end of t.
func (a *agent) start(t *testing.T) {
	t.Helper()
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("start bootfs-agent: %v", err)
	}
	t.Cleanup(func() {
		a.cmd.Process.Kill()
		a.cmd.Wait()
		if t.Failed() {
			t.Logf("agent log:\n%s", a.log.String())
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(a.sockDir, "agent.sock")); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("bootfs-agent made no socket in 10s:\n%s", a.log.String())
		}
	}
}

// flags are the docker run flags of a container that uses the agent: its
// socket directory, and nothing else.
func (a *agent) flags(more ...string) []string {
	return append([]string{"-v", a.sockDir + ":/run/bootfs"}, more...)
}

// metric returns the value of the agent's metric name.
func (a *agent) metric(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + a.metrics + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "bootfs_agent_"+name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s = %q: %v", name, v, err)
			}
			return f
		}
	}
	t.Fatalf("no metric bootfs_agent_%s", name)
	return 0
}

// waitMounts waits until the agent serves n mounts.
func (a *agent) waitMounts(t *testing.T, n float64) {
	t.Helper()
	var got float64
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if got = a.metric(t, "mounts"); got == n {
			return
		}
	}
	t.Fatalf("the agent serves %v mounts, want %v; log:\n%s", got, n, a.log.String())
}

// TestAgentSameOutput: a converted image run with no privilege at all
// (no --cap-add, no --device, Docker's default seccomp and AppArmor)
// through the agent prints what the original prints, and its command is
// PID 1.
func TestAgentSameOutput(t *testing.T) {
	e := setup(t)
	a := startAgent(t, e, e.storeURL)
	tests := []struct {
		name      string
		flags     []string
		args      []string
		normalize func(string) string
	}{
		{name: "os-release", args: []string{"cat", "/etc/os-release", "/data/hello", "/data/sub/deep"}},
		{name: "ls", args: []string{"ls", "-la", "/", "/data", "/root"}, normalize: normalizeLs},
		{name: "id pwd md5sum", args: []string{"sh", "-c", "id; pwd; md5sum /bin/busybox"}},
		{name: "pid 1", args: []string{"sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '"}},
		{name: "workdir flag", flags: []string{"-w", "/data/sub"}, args: []string{"pwd"}},
		{name: "env -e", flags: []string{"-e", "FOO=bar baz"}, args: []string{"env"}, normalize: normalizeEnv},
		{name: "user", flags: []string{"--user", "1000"}, args: []string{"id"}},
		{name: "exit code", args: []string{"sh", "-c", "exit 7"}},
		{name: "not found", args: []string{"no-such-command"}, normalize: func(string) string { return "" }},
		{name: "write", args: []string{"sh", "-c", "echo new > /data/hello && cat /data/hello"}},
		{name: "volume", flags: []string{"-v", e.tmp + ":/mnt/host:ro"}, args: []string{"sh", "-c", "ls -d /mnt/host && touch /mnt/host/x"}},
		{name: "no bootfs in view", args: []string{"sh", "-c", "ls /.bootfs /run/bootfs; grep -c bootfs /proc/mounts"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := e.run(t, false, tt.flags, e.bb, tt.args...)
			got := e.run(t, false, a.flags(tt.flags...), e.bbBoot, tt.args...)
			norm := tt.normalize
			if norm == nil {
				norm = strings.TrimSpace
			}
			if norm(got.stdout) != norm(want.stdout) || got.code != want.code {
				t.Errorf("docker run %v %v:\n got (exit %d):\n%s\nstderr: %s\n want (exit %d):\n%s\nstderr: %s",
					tt.flags, tt.args, got.code, norm(got.stdout), got.stderr, want.code, norm(want.stdout), want.stderr)
			}
			if strings.Contains(got.stderr, "level=") {
				t.Errorf("boot printed a line of its own on a normal run (quiet by default, as the original):\n%s", got.stderr)
			}
		})
	}
	a.waitMounts(t, 0)
}

// TestAgentUserImage: an image with a USER runs through the agent as
// with the original: the workload, docker exec and health checks as the
// USER (the setuid boot asks the agent as root), --user 0 as root.
func TestAgentUserImage(t *testing.T) {
	e := setup(t)
	p := userPair(t, e)
	a := startAgent(t, e, e.storeURL)
	for _, flags := range [][]string{nil, {"--user", "0"}, {"--user", "nobody"}, {"--init"}} {
		// The workload is PID 1 (Docker's init under --init, whose
		// command line names boot's path in front of the workload's).
		pid1 := "cat /proc/1/cmdline | tr '\\0' ' '; echo"
		if slices.Contains(flags, "--init") {
			pid1 = "cat /proc/1/comm"
		}
		args := []string{"sh", "-c", "id; echo $HOME; pwd; " + pid1}
		want := e.run(t, false, flags, p.orig, args...)
		got := e.run(t, false, a.flags(flags...), p.boot, args...)
		if got.stdout != want.stdout || got.code != want.code {
			t.Errorf("docker run %v: got (exit %d):\n%s\nstderr: %s\nwant (exit %d):\n%s", flags, got.code, got.stdout, got.stderr, want.code, want.stdout)
		}
	}
	health := []string{"--health-cmd", "test $(id -u) = 1000", "--health-interval", "1s", "--health-retries", "1"}
	name := e.prefix + "-agent-user"
	startDetached(t, name, a.flags(health...), p.boot, "sh", "-c", "echo ready; exec sleep 600")
	waitLog(t, name, "ready")
	out, err := exec.Command("docker", "exec", name, "sh", "-c", "id; touch /home/alice/x && echo wrote").CombinedOutput()
	if want := "uid=1000(alice) gid=1000(alice) groups=10(wheel),29(audio),1000(alice)\nwrote\n"; err != nil || string(out) != want {
		t.Errorf("docker exec without -u: %v: %q, want %q", err, out, want)
	}
	if status, out := healthOf(name); status != "healthy" {
		t.Errorf("health (a check that runs as uid 1000) = %q, want healthy: %s", status, out)
	}
}

// TestAgentExec: docker exec lands in the image's root and sees the
// workload as PID 1; the container stops as the original does.
func TestAgentExec(t *testing.T) {
	e := setup(t)
	a := startAgent(t, e, e.storeURL)
	name := e.prefix + "-agent-exec"
	startDetached(t, name, a.flags(), e.bbBoot, "sh", "-c", "echo marked > /tmp/mark; echo ready; trap 'exit 3' TERM; while :; do sleep 0.1; done")
	waitLog(t, name, "ready")
	out, err := exec.Command("docker", "exec", name, "sh", "-c", "cat /etc/os-release /tmp/mark; cat /proc/1/cmdline | tr '\\0' ' '").CombinedOutput()
	want := e.run(t, false, nil, e.bb, "cat", "/etc/os-release").stdout + "marked\nsh -c echo marked"
	if err != nil || !strings.HasPrefix(string(out), want) {
		t.Errorf("docker exec: %v:\n%s\nwant it to begin with:\n%s", err, out, want)
	}
	if a.metric(t, "mounts") != 1 {
		t.Errorf("mounts = %v while the container runs, want 1", a.metric(t, "mounts"))
	}
	took, code, logs := dockerStop(t, name)
	if code != "3" || took > 8*time.Second {
		t.Errorf("docker stop: exit %s after %v, want 3 at once (the workload is PID 1 and gets SIGTERM); logs:\n%s", code, took, logs)
	}
	a.waitMounts(t, 0)
}

// TestAgentFallback: without the agent's socket the narrow grant still
// works, and boot says which mode it is in and how to get the other
// (with BOOTFS_LOG=info: by default it prints nothing of its own).
func TestAgentFallback(t *testing.T) {
	e := setup(t)
	got := e.run(t, true, []string{"-e", "BOOTFS_LOG=info"}, e.bbBoot, "cat", "/data/hello")
	if got.code != 0 || got.stdout != "hello from the image\n" {
		t.Fatalf("with the grant: exit %d, %q; stderr: %s", got.code, got.stdout, got.stderr)
	}
	if !strings.Contains(got.stderr, "in-container mode") || !strings.Contains(got.stderr, "-v /run/bootfs:/run/bootfs") {
		t.Errorf("stderr does not name the mode and the agent:\n%s", got.stderr)
	}
	// A socket directory with no agent behind it: boot waits for one a
	// while, then the grant still works.
	dir := t.TempDir()
	got = e.run(t, true, []string{"-e", "BOOTFS_LOG=info", "-v", dir + ":/run/bootfs"}, e.bbBoot, "cat", "/data/hello")
	if got.code != 0 || got.stdout != "hello from the image\n" || !strings.Contains(got.stderr, "waiting for the node agent") {
		t.Errorf("with an empty socket directory: exit %d, %q; stderr: %s", got.code, got.stdout, got.stderr)
	}
}

// TestAgentStartedAfter: a container started before its agent (Compose
// starts them together) waits for the socket and runs through the agent.
func TestAgentStartedAfter(t *testing.T) {
	e := setup(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "sock")
	os.MkdirAll(sock, 0o755)
	res := make(chan result, 1)
	go func() {
		res <- e.run(t, false, []string{"-e", "BOOTFS_LOG=info", "-v", sock + ":/run/bootfs"}, e.bbBoot, "cat", "/data/hello")
	}()
	time.Sleep(2 * time.Second)
	startAgentIn(t, e, dir, e.storeURL)
	got := <-res
	if got.code != 0 || got.stdout != "hello from the image\n" || !strings.Contains(got.stderr, "node-agent mode") {
		t.Errorf("a container started before the agent: exit %d, %q; stderr: %s", got.code, got.stdout, got.stderr)
	}
}

// countingProxy is a reverse proxy to a store that counts the GETs of
// each chunk.
type countingProxy struct {
	mu   sync.Mutex
	gets map[string]int
	url  string
}

func newCountingProxy(t *testing.T, target string) *countingProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &countingProxy{gets: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(u)
	// The proxy counts chunk GETs, so it hides the server's batch
	// endpoint: without the Bootfs-Chunkstore header the client asks
	// for each chunk with its own GET, as it does of a desync server.
	rp.ModifyResponse = func(r *http.Response) error {
		r.Header.Del("Bootfs-Chunkstore")
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			p.mu.Lock()
			p.gets[r.URL.Path]++
			p.mu.Unlock()
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.url = srv.URL
	return p
}

// counts returns the chunks fetched, and the most times any one was.
func (p *countingProxy) counts() (chunks, most int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, n := range p.gets {
		chunks++
		most = max(most, n)
	}
	return chunks, most
}

// TestAgentOneFetchPerChunk: 8 cold containers of one image started at
// once fetch each chunk from the store once, as one of them alone does.
func TestAgentOneFetchPerChunk(t *testing.T) {
	e := setup(t)
	single := newCountingProxy(t, e.storeURL)
	a1 := startAgent(t, e, single.url)
	if got := e.run(t, false, a1.flags(), e.bbBoot, "md5sum", "/bin/busybox"); got.code != 0 {
		t.Fatalf("one container: exit %d; stderr: %s", got.code, got.stderr)
	}
	one, _ := single.counts()

	p := newCountingProxy(t, e.storeURL)
	a := startAgent(t, e, p.url)
	const n = 8
	var wg sync.WaitGroup
	results := make([]result, n)
	for i := range n {
		wg.Go(func() { results[i] = e.run(t, false, a.flags(), e.bbBoot, "md5sum", "/bin/busybox") })
	}
	wg.Wait()
	for i, r := range results {
		if r.code != 0 || !strings.Contains(r.stdout, "/bin/busybox") {
			t.Errorf("container %d: exit %d, %q; stderr: %s", i, r.code, r.stdout, r.stderr)
		}
	}
	chunks, most := p.counts()
	if most != 1 || chunks != one {
		t.Errorf("%d containers fetched %d chunks, one up to %d times; one container alone fetches %d, each once", n, chunks, most, one)
	}
	if got := a.metric(t, "chunks_fetched_total"); got != float64(chunks) {
		t.Errorf("chunks_fetched_total = %v, the store served %d", got, chunks)
	}
	t.Logf("%d containers at once: %d chunk fetches; one container: %d", n, chunks, one)
	a.waitMounts(t, 0)
}

// TestAgentStoreFromConfigIgnored: an image whose config names another
// store makes the agent fetch nothing from it: it reads its own --store.
func TestAgentStoreFromConfigIgnored(t *testing.T) {
	e := setup(t)
	var trapped sync.Map
	trap := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		trapped.Store(r.URL.Path, true)
		http.NotFound(w, r)
	}))
	defer trap.Close()
	img := e.prefix + "/bb:trap"
	if out, err := exec.Command(filepath.Join(e.bin, "mkimage"), "--store", e.store, "--runtime-store", trap.URL, e.bb, img).CombinedOutput(); err != nil {
		t.Fatalf("mkimage: %v\n%s", err, out)
	}
	defer exec.Command("docker", "rmi", "-f", img).Run()
	a := startAgent(t, e, e.storeURL)
	got := e.run(t, false, a.flags(), img, "md5sum", "/bin/busybox")
	if got.code != 0 {
		t.Errorf("exit %d; stderr: %s", got.code, got.stderr)
	}
	trapped.Range(func(k, _ any) bool {
		t.Errorf("the agent asked the image's own store for %s", k)
		return true
	})
	if !strings.Contains(a.log.String(), "names a store the agent does not read") {
		t.Errorf("the agent's log does not say it ignored the image's store:\n%s", a.log.String())
	}
}

// crafted returns an image made from the boot image with files replaced:
// name → content, or "->TARGET" for a symlink. With fixConfig, the config
// records the new index and TOC digests, so only their content is wrong.
func crafted(t *testing.T, e *env, tag string, files map[string]string, fixConfig bool) string {
	t.Helper()
	img := e.prefix + "/bb:" + tag
	id, err := exec.Command("docker", "create", e.bbBoot).Output()
	if err != nil {
		t.Fatalf("docker create: %v", err)
	}
	ctr := strings.TrimSpace(string(id))
	defer exec.Command("docker", "rm", "-f", "-v", ctr).Run()
	dir := t.TempDir()
	if out, err := exec.Command("docker", "cp", ctr+":/.bootfs/config.json", dir+"/config.json").CombinedOutput(); err != nil {
		t.Fatalf("docker cp: %v: %s", err, out)
	}
	var cfg map[string]any
	b, _ := os.ReadFile(dir + "/config.json")
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "src")
	os.Mkdir(src, 0o755)
	for name, content := range files {
		p := filepath.Join(src, filepath.Base(name))
		if target, ok := strings.CutPrefix(content, "->"); ok {
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
		} else if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		key := map[string]string{"rootfs.caidx": "index", "rootfs.toc": "toc"}[filepath.Base(name)]
		if fixConfig && key != "" {
			sum := sha256.Sum256([]byte(content))
			cfg[key] = map[string]any{"digest": "sha256:" + hex.EncodeToString(sum[:]), "size": len(content)}
		}
		cmd := exec.Command("docker", "cp", "-", ctr+":/.bootfs/")
		cmd.Stdin = tarOf(t, src, filepath.Base(name))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("docker cp %s: %v: %s", name, err, out)
		}
	}
	if fixConfig {
		b, _ := json.Marshal(cfg)
		os.WriteFile(filepath.Join(src, "config.json"), b, 0o644)
		cmd := exec.Command("docker", "cp", "-", ctr+":/.bootfs/")
		cmd.Stdin = tarOf(t, src, "config.json")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("docker cp config.json: %v: %s", err, out)
		}
	}
	if out, err := exec.Command("docker", "commit", ctr, img).CombinedOutput(); err != nil {
		t.Fatalf("docker commit: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", img).Run() })
	return img
}

// tarOf returns a tar stream of name in dir, symlinks as they are.
func tarOf(t *testing.T, dir, name string) io.Reader {
	t.Helper()
	out, err := exec.Command("tar", "-C", dir, "--numeric-owner", "-c", name).Output()
	if err != nil {
		t.Fatalf("tar %s: %v", name, err)
	}
	return bytes.NewReader(out)
}

// TestAgentCraftedImages: what a container carries cannot lead the agent
// out of it, and a crafted index, TOC or config fails that container
// alone, with a clear error: the agent, and a container started after,
// are unaffected, and nothing stays mounted.
func TestAgentCraftedImages(t *testing.T) {
	e := setup(t)
	a := startAgent(t, e, e.storeURL)
	secret := filepath.Join(e.tmp, "secret.caidx")
	if err := os.WriteFile(secret, []byte("host file"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		files     map[string]string
		fixConfig bool
		want      string
	}{
		{name: "absolute symlink to the host", files: map[string]string{"rootfs.caidx": "->" + secret}, want: "no such file"},
		{name: "proc magic link", files: map[string]string{"config.json": "->/proc/1/root/etc/passwd"}, want: "config.json"},
		{name: "garbage index", files: map[string]string{"rootfs.caidx": strings.Repeat("x", 4096)}, fixConfig: true, want: "rootfs.caidx"},
		{name: "garbage TOC", files: map[string]string{"rootfs.toc": strings.Repeat("\x00\xff", 5000)}, fixConfig: true, want: "rootfs.toc"},
		{name: "index of other digest", files: map[string]string{"rootfs.caidx": "changed"}, want: "the config says"},
		{name: "garbage config", files: map[string]string{"config.json": `{"version": 99}`}, want: "config"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := crafted(t, e, fmt.Sprintf("crafted%d", i), tt.files, tt.fixConfig)
			got := e.run(t, false, a.flags(), img, "echo", "should not run")
			if got.code == 0 || strings.Contains(got.stdout, "should not run") || !strings.Contains(got.stderr, "bootfs-agent") || !strings.Contains(got.stderr, tt.want) {
				t.Errorf("crafted image: exit %d, stdout %q, stderr:\n%s\nwant a failure from bootfs-agent naming %q", got.code, got.stdout, got.stderr, tt.want)
			}
			if strings.Contains(got.stderr, "host file") {
				t.Errorf("the error shows the host file's content:\n%s", got.stderr)
			}
		})
	}
	if got := e.run(t, false, a.flags(), e.bbBoot, "cat", "/data/hello"); got.code != 0 || got.stdout != "hello from the image\n" {
		t.Errorf("a good container after the crafted ones: exit %d, %q; stderr: %s", got.code, got.stdout, got.stderr)
	}
	a.waitMounts(t, 0)
	if a.cmd.ProcessState != nil {
		t.Errorf("the agent exited: %v", a.cmd.ProcessState)
	}
}

// TestAgentKilledContainers: containers killed while they start, or
// while they read, leave no mount, no open descriptor and no state behind
// in the agent.
func TestAgentKilledContainers(t *testing.T) {
	e := setup(t)
	a := newAgent(t, e, t.TempDir(), e.storeURL)
	// A mount table of the agent's own, private (Go makes / rprivate), so
	// what it holds is the agent's doing: the host's changes as whatever
	// else runs on the node mounts, `boot mount` and the lazyfs tests
	// among them, with FUSE mounts named bootfs.
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	a.start(t)
	if got := e.run(t, false, a.flags(), e.bbBoot, "true"); got.code != 0 {
		t.Fatalf("exit %d; stderr: %s", got.code, got.stderr)
	}
	a.waitMounts(t, 0)
	before, mountsBefore := a.descriptors(t), a.bootfsMounts(t)
	for i, wait := range []time.Duration{0, 50 * time.Millisecond, 200 * time.Millisecond, 500 * time.Millisecond, 2 * time.Second} {
		name := fmt.Sprintf("%s-agent-kill-%d", e.prefix, i)
		startDetached(t, name, a.flags(), e.bbBoot, "sh", "-c", "while :; do md5sum /bin/busybox >/dev/null; done")
		time.Sleep(wait)
		if out, err := exec.Command("docker", "kill", name).CombinedOutput(); err != nil && !strings.Contains(string(out), "not running") {
			t.Errorf("docker kill: %v: %s", err, out)
		}
	}
	a.waitMounts(t, 0)
	var after []string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if after = a.descriptors(t); len(after) <= len(before) {
			break
		}
	}
	if len(after) > len(before) {
		t.Errorf("the agent holds %d descriptors after the killed containers, %d before:\n%s\nbefore:\n%s",
			len(after), len(before), strings.Join(after, "\n"), strings.Join(before, "\n"))
	}
	if got := a.bootfsMounts(t); !slices.Equal(got, mountsBefore) {
		t.Errorf("the agent's mount table has bootfs mounts\n%s\nafter the killed containers, before:\n%s",
			strings.Join(got, "\n"), strings.Join(mountsBefore, "\n"))
	}
}

// descriptors returns what the agent's open descriptors name, leaving
// out its TCP connections: the store client's and the metrics server's
// pools keep some open for reuse, more after a busier spell, and none
// belongs to a container.
func (a *agent) descriptors(t *testing.T) []string {
	t.Helper()
	proc := fmt.Sprintf("/proc/%d", a.cmd.Process.Pid)
	tcp := map[string]bool{}
	for _, table := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(filepath.Join(proc, "net", table))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			if f := strings.Fields(line); len(f) > 9 {
				tcp["socket:["+f[9]+"]"] = true
			}
		}
	}
	ents, err := os.ReadDir(filepath.Join(proc, "fd"))
	if err != nil {
		t.Fatal(err)
	}
	var fds []string
	for _, ent := range ents {
		link, err := os.Readlink(filepath.Join(proc, "fd", ent.Name()))
		if err != nil || tcp[link] { // closed since, or a pooled connection
			continue
		}
		fds = append(fds, ent.Name()+" -> "+link)
	}
	return fds
}

// bootfsMounts returns the lines of the agent's mount table that name
// bootfs.
func (a *agent) bootfsMounts(t *testing.T) []string {
	t.Helper()
	mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", a.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for line := range strings.Lines(string(mi)) {
		if strings.Contains(line, "bootfs") {
			lines = append(lines, strings.TrimSpace(line))
		}
	}
	return lines
}

// TestAgentMetricsLoopbackOnly: the agent refuses to serve metrics on a
// non-loopback address.
func TestAgentMetricsLoopbackOnly(t *testing.T) {
	e := setup(t)
	out, err := exec.Command(filepath.Join(e.bin, "bootfs-agent"), "--socket-dir", t.TempDir(), "--store", e.storeURL, "--cache", t.TempDir(), "--metrics", "0.0.0.0:0").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "loopback") {
		t.Errorf("bootfs-agent --metrics 0.0.0.0:0: %v, %s; want a failure naming loopback", err, out)
	}
}

// TestAgentHealthcheck: Docker's HEALTHCHECK, run by the engine as an
// exec into the container, sees the image's root in agent mode.
// healthOf waits up to 30 s for the container's health check to give a
// verdict and returns its status, with the whole health record to show
// when it is not the one wanted.
func healthOf(name string) (status string, record []byte) {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		out, _ := exec.Command("docker", "inspect", "-f", "{{.State.Health.Status}}", name).Output()
		if status = strings.TrimSpace(string(out)); status == "healthy" || status == "unhealthy" {
			break
		}
	}
	record, _ = exec.Command("docker", "inspect", "-f", "{{json .State.Health}}", name).Output()
	return status, record
}

func TestAgentHealthcheck(t *testing.T) {
	e := setup(t)
	root := filepath.Join(e.tmp, "bb")
	orig := e.prefix + "/bb:health"
	if err := dockerImport(root, orig, `CMD ["/bin/sh"]`, `HEALTHCHECK --interval=1s --retries=1 CMD ["cat", "/data/hello"]`); err != nil {
		t.Fatal(err)
	}
	img := e.prefix + "/bb:health-boot"
	if _, err := e.convert(orig, img, e.store); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, e, e.storeURL)
	name := e.prefix + "-agent-health"
	startDetached(t, name, a.flags(), img, "sleep", "600")
	if status, out := healthOf(name); status != "healthy" {
		t.Errorf("health = %q, want healthy: %s", status, out)
	}
}

// TestAgentRestartKeepsWrites: in agent mode too, the workload's writes
// live in the boot image's upper volume, on disk: they survive docker
// restart of the container, as with the original image.
func TestAgentRestartKeepsWrites(t *testing.T) {
	e := setup(t)
	a := startAgent(t, e, e.storeURL)
	name := e.prefix + "-agent-restart"
	startDetached(t, name, a.flags(), e.bbBoot, "sh", "-c",
		"test -e /data/first || { date > /data/first; echo first > /data/runs; } ; echo again >> /data/runs; exec sleep 600")
	read := func() string {
		var out []byte
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			var err error
			if out, err = exec.Command("docker", "exec", name, "cat", "/data/runs").Output(); err == nil {
				return string(out)
			}
		}
		t.Fatalf("docker exec %s cat /data/runs never answered", name)
		return ""
	}
	if got := read(); got != "first\nagain\n" {
		t.Fatalf("first start: /data/runs = %q, want \"first\\nagain\\n\"", got)
	}
	if out, err := exec.Command("docker", "restart", "-t", "1", name).CombinedOutput(); err != nil {
		t.Fatalf("docker restart: %v: %s", err, out)
	}
	var got string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if got = read(); got == "first\nagain\nagain\n" {
			return
		}
	}
	t.Errorf("after docker restart: /data/runs = %q, want the first start's writes kept and one more line", got)
}

// TestAgentDebian: a converted Debian image with python3 runs with no
// privilege through the agent, its output equal to the original's.
func TestAgentDebian(t *testing.T) {
	e := setup(t)
	root := debianRootfs(t, "python", "python3")
	orig := e.prefix + "/debian:python"
	if err := dockerImport(root, orig, `CMD ["/bin/bash"]`); err != nil {
		t.Fatal(err)
	}
	img := e.prefix + "/debian:python-agent"
	if _, err := e.convert(orig, img, e.store); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, e, e.storeURL)
	for _, args := range [][]string{
		{"cat", "/etc/os-release"},
		{"python3", "-c", "import json, sqlite3, sys, hashlib; print(sys.version_info[:2], json.dumps({'a': 1}), sqlite3.sqlite_version, hashlib.sha256(open('/usr/bin/python3', 'rb').read()).hexdigest())"},
		{"sh", "-c", "dpkg -l | wc -l; id; echo $PATH; ls /usr/lib | head -20; md5sum /usr/lib/x86_64-linux-gnu/libc.so.6"},
	} {
		want := e.run(t, false, nil, orig, args...)
		got := e.run(t, false, a.flags(), img, args...)
		if got.stdout != want.stdout || got.code != want.code || want.code != 0 {
			t.Errorf("docker run %q:\n got (exit %d):\n%s\nstderr: %s\n want (exit %d):\n%s\nstderr: %s", args, got.code, got.stdout, got.stderr, want.code, want.stdout, want.stderr)
		}
	}
	t.Logf("chunks fetched: %v, bytes %v", a.metric(t, "chunks_fetched_total"), a.metric(t, "bytes_fetched_total"))
}

// TestAgentCacheMax: with --cache-max the node cache stays under the cap
// while containers read more than it holds, and their reads are right.
func TestAgentCacheMax(t *testing.T) {
	e := setup(t)
	const max = 256 << 10
	a := startAgent(t, e, e.storeURL, "--cache-max", "256k", "--memory", "1m")
	want := e.run(t, false, nil, e.bb, "md5sum", "/bin/busybox")
	for i := range 2 {
		got := e.run(t, false, a.flags(), e.bbBoot, "md5sum", "/bin/busybox")
		if got.code != 0 || got.stdout != want.stdout {
			t.Fatalf("run %d: exit %d, %q, want %q; stderr: %s", i, got.code, got.stdout, want.stdout, got.stderr)
		}
	}
	if fetched := a.metric(t, "bytes_fetched_total"); fetched <= max {
		t.Fatalf("fetched %v bytes, no more than the cap: the test proves nothing", fetched)
	}
	var size float64
	// The agent evicts every 30s besides as it fetches; the metric is
	// measured at most every 10s.
	for deadline := time.Now().Add(50 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		if size = a.metric(t, "cache_bytes"); size <= max {
			return
		}
	}
	t.Errorf("cache_bytes = %v, over --cache-max %d", size, max)
}

// TestAgentVolumes: an empty named volume gets the image's content at its
// path first, as Docker fills it, and keeps what is written to it.
func TestAgentVolumes(t *testing.T) {
	e := setup(t)
	a := startAgent(t, e, e.storeURL)
	vol := e.volume(t, "agent-data")
	want := e.run(t, false, []string{"-v", e.volume(t, "agent-data-orig") + ":/data"}, e.bb, "sh", "-c", "ls -ln /data /data/sub; cat /data/hello")
	got := e.run(t, false, a.flags("-v", vol+":/data"), e.bbBoot, "sh", "-c", "ls -ln /data /data/sub; cat /data/hello; echo kept > /data/new")
	if normalizeLs(got.stdout) != normalizeLs(want.stdout) || got.code != 0 {
		t.Errorf("a fresh volume at /data:\n got (exit %d):\n%s\nstderr: %s\n want:\n%s", got.code, got.stdout, got.stderr, want.stdout)
	}
	got = e.run(t, false, a.flags("-v", vol+":/data"), e.bbBoot, "cat", "/data/new", "/data/hello")
	if got.stdout != "kept\nhello from the image\n" {
		t.Errorf("the volume again: exit %d, %q; stderr: %s", got.code, got.stdout, got.stderr)
	}
}

// TestAgentReplace: an agent started with --replace takes the socket over
// while a container reads files it has not read before, one after the
// other: the old agent goes on serving that container (no read fails)
// and exits when it ends; new containers go to the new agent.
func TestAgentReplace(t *testing.T) {
	e := setup(t)
	root := filepath.Join(t.TempDir(), "many")
	if err := busyboxTree(root, filepath.Join(e.tmp, "bb", "bin", "busybox")); err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for i := range 120 {
		name := fmt.Sprintf("many/f%03d", i)
		data := bytes.Repeat([]byte(fmt.Sprintf("%s %d ", name, i*7919)), 64<<10/12)
		if err := os.MkdirAll(filepath.Join(root, "many"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&want, "%x  /%s\n", md5.Sum(data), name)
	}
	orig := e.prefix + "/many:orig"
	if err := dockerImport(root, orig, `CMD ["/bin/sh"]`); err != nil {
		t.Fatal(err)
	}
	img := e.prefix + "/many:boot"
	if _, err := e.convert(orig, img, e.store); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	old := startAgentIn(t, e, dir, e.storeURL)
	name := e.prefix + "-agent-replace"
	startDetached(t, name, old.flags(), img, "sh", "-c", "echo start; for f in /many/*; do md5sum $f || echo FAIL $f; sleep 0.05; done; echo DONE")
	waitLog(t, name, "start")
	time.Sleep(time.Second) // some files read
	cur := startAgentIn(t, e, dir, e.storeURL, "--replace")
	if got := e.run(t, false, cur.flags(), e.bbBoot, "cat", "/data/hello"); got.code != 0 || got.stdout != "hello from the image\n" {
		t.Errorf("a new container after the replacement: exit %d, %q; stderr: %s", got.code, got.stdout, got.stderr)
	}
	if cur.metric(t, "requests_total") != 1 {
		t.Errorf("the new agent served %v requests, want the new container's 1", cur.metric(t, "requests_total"))
	}
	waitLog(t, name, "DONE")
	logs, _ := exec.Command("docker", "logs", name).Output()
	got := strings.TrimSuffix(strings.TrimPrefix(string(logs), "start\n"), "DONE\n")
	if got != want.String() {
		t.Errorf("the container's reads across the replacement:\n%s\nwant:\n%s", got, want.String())
	}
	exec.Command("docker", "rm", "-f", "-v", name).Run()
	exited := make(chan error, 1)
	go func() { exited <- old.cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("the old agent: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Errorf("the old agent did not exit when its last container ended:\n%s", old.log.String())
	}
}

// TestAgentSampleContainer: the agent as a container (samples/agent)
// serves an unprivileged converted container.
func TestAgentSampleContainer(t *testing.T) {
	e := setup(t)
	_, file, _, _ := runtime.Caller(0)
	module := filepath.Dir(filepath.Dir(file))
	img := e.prefix + "/agent:sample"
	if out, err := exec.Command("docker", "build", "-q", "--force-rm", "-t", img, "-f", filepath.Join(module, "samples/agent/Dockerfile"), e.bin).CombinedOutput(); err != nil {
		t.Fatalf("docker build samples/agent: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", img).Run() })
	sock := t.TempDir()
	name := e.prefix + "-agent-sample"
	startDetached(t, name, []string{"--pid", "host", "--cap-add", "SYS_ADMIN", "--cap-add", "SYS_PTRACE", "--device", "/dev/fuse",
		"--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined", "-v", sock + ":/run/bootfs"},
		img, "--store", e.storeURL)
	waitLog(t, name, "listening")
	want := e.run(t, false, nil, e.bb, "sh", "-c", "cat /etc/os-release; md5sum /bin/busybox")
	got := e.run(t, false, []string{"-v", sock + ":/run/bootfs"}, e.bbBoot, "sh", "-c", "cat /etc/os-release; md5sum /bin/busybox")
	if got.code != 0 || got.stdout != want.stdout {
		logs, _ := exec.Command("docker", "logs", name).CombinedOutput()
		t.Errorf("through the agent container: exit %d, %q, want %q; stderr: %s\nagent logs:\n%s", got.code, got.stdout, want.stdout, got.stderr, logs)
	}
}

// TestAgentPrefetch: the agent fetches an image's prefetch list (mkimage
// --prefetch) for its mount, as boot does in its own mode.
func TestAgentPrefetch(t *testing.T) {
	e := setup(t)
	list := filepath.Join(t.TempDir(), "list")
	if err := os.WriteFile(list, []byte("/data/hello\n/data/sub/deep\n/etc/os-release\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := e.prefix + "/bb:agent-prefetch"
	if _, err := e.convert(e.bb, img, e.store, "--prefetch", list); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, e, e.storeURL)
	if got := e.run(t, false, a.flags(), img, "sleep", "1"); got.code != 0 {
		t.Fatalf("exit %d; stderr: %s", got.code, got.stderr)
	}
	re := regexp.MustCompile(`msg=prefetched .*chunks=(\d+) of=(\d+)`)
	m := re.FindStringSubmatch(a.log.String())
	if m == nil || m[1] != m[2] || m[1] == "0" {
		t.Errorf("the agent's log has no complete prefetch (%q):\n%s", m, a.log.String())
	}
}

// TestAgentSharesImages: the running containers of one image share one
// parsed index and TOC in the agent, which it lets go of with the last.
func TestAgentSharesImages(t *testing.T) {
	e := setup(t)
	a := startAgent(t, e, e.storeURL)
	const n = 3
	for i := range n {
		name := fmt.Sprintf("%s-agent-share-%d", e.prefix, i)
		startDetached(t, name, a.flags(), e.bbBoot, "sh", "-c", "cat /data/hello; trap 'exit 0' TERM; while :; do sleep 0.1; done")
		waitLog(t, name, "hello from the image")
	}
	if got := a.metric(t, "mounts"); got != n {
		t.Fatalf("mounts = %v, want %d", got, n)
	}
	if got := a.metric(t, "images"); got != 1 {
		t.Errorf("%d containers of one image: the agent holds %v parsed images, want 1", n, got)
	}
	if got := a.metric(t, "image_bytes"); got <= 0 {
		t.Errorf("image_bytes = %v with an image served, want its index's and TOC's size", got)
	}
	if lim := a.metric(t, "memory_limit_bytes"); lim < 56<<20 {
		t.Errorf("memory_limit_bytes = %v, want at least the default LRU + 24 MiB", lim)
	}
	for i := range n {
		dockerStop(t, fmt.Sprintf("%s-agent-share-%d", e.prefix, i))
	}
	a.waitMounts(t, 0)
	if got := a.metric(t, "images"); got != 0 {
		t.Errorf("with no container left the agent holds %v parsed images, want 0", got)
	}
}

// TestAgentStats: BOOTFS_STATS and BOOTFS_RECORD on a volume are written
// by the agent as the container ends, with the container's own figures
// and the files it read; on the image's root they cannot be (the agent
// would hold the mount), and boot says so, as it says BOOTFS_BACKGROUND
// does nothing in node-agent mode.
func TestAgentStats(t *testing.T) {
	e := setup(t)
	a := startAgent(t, e, e.storeURL)
	dir := t.TempDir()
	got := e.run(t, false, a.flags("-v", dir+":/stats", "-e", "BOOTFS_STATS=/stats/run.json", "-e", "BOOTFS_RECORD=/stats/paths"),
		e.bbBoot, "md5sum", "/bin/busybox", "/data/hello")
	if got.code != 0 || !strings.Contains(got.stdout, "/data/hello") || strings.Contains(got.stderr, "level=WARN") {
		t.Fatalf("exit %d, %q; stderr: %s", got.code, got.stdout, got.stderr)
	}
	a.waitMounts(t, 0) // the agent writes them as the mount ends
	b, err := os.ReadFile(filepath.Join(dir, "run.json"))
	if err != nil {
		t.Fatalf("BOOTFS_STATS: %v; agent log:\n%s", err, a.log.String())
	}
	var st struct {
		ChunksFetched uint64 `json:"chunks_fetched"`
		BytesFetched  uint64 `json:"bytes_fetched"`
		MemoryHits    uint64 `json:"memory_hits"`
		Errors        uint64 `json:"errors"`
		StartToExecMS int64  `json:"start_to_exec_ms"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("BOOTFS_STATS %s: %v", b, err)
	}
	if st.ChunksFetched == 0 || st.BytesFetched < 1<<20 || st.Errors != 0 || st.StartToExecMS <= 0 {
		t.Errorf("BOOTFS_STATS after reading /bin/busybox: %s; want its chunks (over 1 MiB), no errors and the time to exec", b)
	}
	rec, list := readRecord(t, filepath.Join(dir, "paths"))
	if !slices.ContainsFunc(list, func(e prefetchlist.Entry) bool { return e.Path == "/bin/busybox" }) ||
		!slices.ContainsFunc(list, func(e prefetchlist.Entry) bool { return e.Path == "/data/hello" }) {
		t.Errorf("BOOTFS_RECORD = %q; want /bin/busybox and /data/hello", rec)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("the stats volume holds %v; want only the two files", entries)
	}

	got = e.run(t, false, a.flags("-e", "BOOTFS_STATS=/run.json", "-e", "BOOTFS_BACKGROUND=1"), e.bbBoot, "cat", "/data/hello")
	if got.code != 0 || got.stdout != "hello from the image\n" {
		t.Fatalf("BOOTFS_STATS on the root: exit %d, %q; stderr: %s", got.code, got.stdout, got.stderr)
	}
	for _, want := range []string{"BOOTFS_STATS=/run.json is not written", "on a volume", "BOOTFS_BACKGROUND is not supported in node-agent mode"} {
		if !strings.Contains(got.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, got.stderr)
		}
	}
	a.waitMounts(t, 0)
}
