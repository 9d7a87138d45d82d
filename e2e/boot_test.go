package e2e

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// normalizers make outputs of two containers comparable: they drop what
// differs between any two runs of the same image (host name, times, the
// sizes of /dev, /proc and /sys).
var (
	lsTime = regexp.MustCompile(`\s+\S+\s+\d+\s+(\d\d:\d\d|\d{4})\s+`)
)

func normalizeLs(s string) string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		f := strings.Fields(lsTime.ReplaceAllString(l, " TIME "))
		if len(f) > 0 && f[0] == "total" {
			// Block counts differ between filesystems.
			continue
		}
		if len(f) < 6 {
			out = append(out, strings.Join(f, " "))
			continue
		}
		// perms links owner group size TIME name...: keep perms, owner,
		// group and name; sizes and link counts of mount points and
		// directories vary between runs.
		out = append(out, strings.Join(append([]string{f[0], f[2], f[3]}, f[6:]...), " "))
	}
	return strings.Join(out, "\n")
}

func normalizeEnv(s string) string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if !strings.HasPrefix(l, "HOSTNAME=") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestSameOutput runs commands in the original and the converted image
// and compares their output.
func TestSameOutput(t *testing.T) {
	e := setup(t)
	tests := []struct {
		name      string
		flags     []string
		args      []string
		normalize func(string) string
	}{
		{name: "os-release", args: []string{"cat", "/etc/os-release"}},
		{name: "ls root", args: []string{"ls", "-la", "/"}, normalize: normalizeLs},
		{name: "ls data", args: []string{"ls", "-la", "/data", "/bin/sh", "/root"}, normalize: normalizeLs},
		{name: "id", args: []string{"id"}},
		{name: "pwd", args: []string{"pwd"}},
		{name: "workdir flag", flags: []string{"-w", "/data/sub"}, args: []string{"pwd"}},
		{name: "new workdir", flags: []string{"-w", "/made/by/docker"}, args: []string{"sh", "-c", "pwd; ls -ld ."}, normalize: normalizeLs},
		{name: "env", args: []string{"env"}, normalize: normalizeEnv},
		{name: "env -e", flags: []string{"-e", "FOO=bar baz", "-e", "PATH=/bin"}, args: []string{"env"}, normalize: normalizeEnv},
		{name: "args", args: []string{"echo", "a", "b c"}},
		{name: "path lookup", args: []string{"busybox", "true"}},
		{name: "stdin", flags: []string{"-i"}, args: []string{"sh", "-c", "echo no stdin"}},
		{name: "not found", args: []string{"no-such-command"}, normalize: func(string) string { return "" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := e.run(t, false, tt.flags, e.bb, tt.args...)
			got := e.run(t, true, tt.flags, e.bbBoot, tt.args...)
			norm := tt.normalize
			if norm == nil {
				norm = strings.TrimSpace
			}
			if norm(got.stdout) != norm(want.stdout) || got.code != want.code {
				t.Errorf("docker run %v %v:\n got (exit %d):\n%s\nstderr: %s\n want (exit %d):\n%s\nstderr: %s",
					tt.flags, tt.args, got.code, norm(got.stdout), got.stderr, want.code, norm(want.stdout), want.stderr)
			}
		})
	}
}

func TestExitCodes(t *testing.T) {
	e := setup(t)
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"exit 7", []string{"sh", "-c", "exit 7"}, 7},
		{"exit 0", []string{"true"}, 0},
		{"child killed by a signal", []string{"sh", "-c", `sh -c 'kill -9 $$'; exit $?`}, 137},
		{"not found", []string{"/no/such/program"}, 127},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := e.run(t, true, nil, e.bbBoot, tt.args...); got.code != tt.want {
				t.Errorf("docker run %v: exit %d, want %d\nstderr: %s", tt.args, got.code, tt.want, got.stderr)
			}
		})
	}
}

// TestIsolation: no /.bootfs in sight (not in / nor in the mount table),
// boot is the container's PID 1 as docker-init is with --init (the
// workload shares the container's PID namespace, for docker exec), and
// the workload can write anywhere.
func TestIsolation(t *testing.T) {
	e := setup(t)
	script := `ps -o pid,args | grep -c '^ *1 /.bootfs/boot -- sh'; ls -d /.bootfs 2>&1 >/dev/null | grep -c 'No such file';
cat /proc/mounts /proc/self/mountinfo | grep -c '[.]bootfs'; ls -a / | grep -c '[.]bootfs';
echo etc > /etc/new && mkdir /newdir && echo top > /newdir/f && echo tmp > /tmp/t && echo over > /bin/busybox.txt &&
cat /etc/new /newdir/f /tmp/t /bin/busybox.txt && rm /data/hello && ls /data`
	got := e.run(t, true, nil, e.bbBoot, "sh", "-c", script)
	want := "1\n1\n0\n0\netc\ntop\ntmp\nover\nsub\n"
	if got.stdout != want || got.code != 0 {
		t.Errorf("isolation script: exit %d, stdout:\n%s\nwant:\n%s\nstderr: %s", got.code, got.stdout, want, got.stderr)
	}
}

// TestBootfsUser: --user would apply to init, so BOOTFS_USER stands in
// for it: the same ids as the original image with --user.
func TestBootfsUser(t *testing.T) {
	e := setup(t)
	for _, u := range []string{"alice", "nobody", "4242:29", "1000:10", "root:wheel"} {
		want := e.run(t, false, []string{"--user", u}, e.bb, "sh", "-c", "id; echo $HOME; pwd")
		got := e.run(t, true, []string{"-e", "BOOTFS_USER=" + u}, e.bbBoot, "sh", "-c", "id; echo $HOME; pwd")
		if got.stdout != want.stdout || got.code != want.code {
			t.Errorf("BOOTFS_USER=%s: got (exit %d)\n%s\nwant (exit %d, --user)\n%s\nstderr: %s", u, got.code, got.stdout, want.code, want.stdout, got.stderr)
		}
	}
}

// TestImageUser: an image whose USER is nobody runs as nobody without
// --user.
func TestImageUser(t *testing.T) {
	e := setup(t)
	dir := filepath.Join(e.tmp, "bb")
	orig, boot := e.prefix+"/bbuser:orig", e.prefix+"/bbuser:boot"
	if err := dockerImport(dir, orig, `CMD ["id"]`, "USER alice", "WORKDIR /home/alice", "ENV GREETING=hi"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.convert(orig, boot, e.store); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{nil, {"sh", "-c", "id; pwd; echo $HOME $GREETING; touch f && ls -l f"}} {
		want := e.run(t, false, nil, orig, args...)
		got := e.run(t, true, nil, boot, args...)
		if normalizeLs(got.stdout) != normalizeLs(want.stdout) || got.code != want.code || !strings.Contains(got.stdout, "uid=1000(alice)") {
			t.Errorf("USER alice, args %q: got (exit %d)\n%s\nwant (exit %d)\n%s\nstderr: %s", args, got.code, got.stdout, want.code, want.stdout, got.stderr)
		}
	}
}

// TestStop: docker stop's SIGTERM reaches the workload, which exits
// with its own status, long before docker's 10s kill.
func TestStop(t *testing.T) {
	e := setup(t)
	name := e.prefix + "-stop"
	args := append([]string{"run", "-d", "--name", name, "--pull", "never", "--network", "host"}, e.runFlags...)
	args = append(args, e.bbBoot, "sh", "-c", `trap 'echo got TERM; exit 42' TERM; echo ready; while :; do sleep 0.1; done`)
	if out, err := exec.Command("docker", args...).CombinedOutput(); err != nil {
		t.Fatalf("docker run -d: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("docker", "rm", "-f", "-v", name).Run() })
	waitLog(t, name, "ready")
	took, code, logs := dockerStop(t, name)
	if code != "42" || took > 5*time.Second || !strings.Contains(string(logs), "got TERM") {
		t.Errorf("docker stop took %v, exit code %s, want < 5s and 42 (the trap's); logs:\n%s", took, code, logs)
	}
	t.Logf("docker stop took %v", took)
}

// TestStopWhileStoreHangs: a container whose store accepts connections
// but never answers is stuck in its first reads of the image, and docker
// stop still ends it long before docker's 10s kill.
func TestStopWhileStoreHangs(t *testing.T) {
	e := setup(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
			select {
			case accepted <- struct{}{}:
			default:
			}
		}
	}()
	name := e.prefix + "-hang"
	args := append([]string{"run", "-d", "--name", name, "--pull", "never", "--network", "host",
		"-e", "BOOTFS_STORE=http://" + ln.Addr().String(), "-e", "BOOTFS_CACHE=none"}, e.runFlags...)
	args = append(args, e.bbBoot, "sh", "-c", "echo started")
	if out, err := exec.Command("docker", args...).CombinedOutput(); err != nil {
		t.Fatalf("docker run -d: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("docker", "rm", "-f", "-v", name).Run() })
	select {
	case <-accepted: // boot is waiting on the store
	case <-time.After(30 * time.Second):
		logs, _ := exec.Command("docker", "logs", name).CombinedOutput()
		t.Fatalf("boot never asked the store; logs:\n%s", logs)
	}
	took, code, logs := dockerStop(t, name)
	if code != "143" || took > 5*time.Second || regexp.MustCompile(`(?m)^started$`).Match(logs) {
		t.Errorf("docker stop took %v, exit code %s, want < 5s and 143 (SIGTERM's); logs:\n%s", took, code, logs)
	}
	t.Logf("docker stop took %v, exit code %s", took, code)
}

// dockerStop stops container name with docker's 10s grace and returns how
// long that took, the container's exit code and its logs.
func dockerStop(t *testing.T, name string) (took time.Duration, code string, logs []byte) {
	t.Helper()
	start := time.Now()
	if out, err := exec.Command("docker", "stop", "-t", "10", name).CombinedOutput(); err != nil {
		t.Fatalf("docker stop: %v: %s", err, out)
	}
	took = time.Since(start)
	out, _ := exec.Command("docker", "inspect", "-f", "{{.State.ExitCode}}", name).Output()
	logs, _ = exec.Command("docker", "logs", name).CombinedOutput()
	return took, strings.TrimSpace(string(out)), logs
}

func waitLog(t *testing.T, name, want string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		out, _ := exec.Command("docker", "logs", name).CombinedOutput()
		if strings.Contains(string(out), want) {
			return
		}
	}
	out, _ := exec.Command("docker", "logs", name).CombinedOutput()
	t.Fatalf("container %s did not log %q in 30s; logs:\n%s", name, want, out)
}

// TestVolumes: an empty named volume gets the image's content, and keeps
// what is written to it; a bind mount and a read-only one are visible.
func TestVolumes(t *testing.T) {
	e := setup(t)
	vol := e.volume(t, "data")
	host := t.TempDir()
	if err := os.WriteFile(filepath.Join(host, "from-host"), []byte("host file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	flags := []string{"-v", vol + ":/data", "-v", host + ":/mnt/host", "-v", host + ":/mnt/ro:ro"}
	got := e.run(t, true, flags, e.bbBoot, "sh", "-c",
		`cat /data/hello /data/sub/deep /mnt/host/from-host && echo kept > /data/written && echo out > /mnt/host/from-container && (echo x > /mnt/ro/y) 2>/dev/null || echo read-only`)
	if want := "hello from the image\ndeep\nhost file\nread-only\n"; got.stdout != want || got.code != 0 {
		t.Fatalf("first run: exit %d, stdout %q, want %q; stderr: %s", got.code, got.stdout, want, got.stderr)
	}
	if b, err := os.ReadFile(filepath.Join(host, "from-container")); err != nil || string(b) != "out\n" {
		t.Errorf("bind mount: host sees %q, %v; want %q", b, err, "out\n")
	}
	got = e.run(t, true, flags, e.bbBoot, "cat", "/data/written", "/data/hello")
	if want := "kept\nhello from the image\n"; got.stdout != want {
		t.Errorf("second run: stdout %q, want %q; stderr: %s", got.stdout, want, got.stderr)
	}
	// The same as the original image does with a fresh volume.
	vol2 := e.volume(t, "data2")
	want := e.run(t, false, []string{"-v", vol2 + ":/data"}, e.bb, "ls", "-la", "/data")
	vol3 := e.volume(t, "data3")
	got = e.run(t, true, []string{"-v", vol3 + ":/data"}, e.bbBoot, "ls", "-la", "/data")
	if normalizeLs(got.stdout) != normalizeLs(want.stdout) {
		t.Errorf("ls -la of a fresh volume: got\n%s\nwant\n%s", got.stdout, want.stdout)
	}
}

type stats struct {
	ChunksFetched uint64 `json:"chunks_fetched"`
	BytesFetched  uint64 `json:"bytes_fetched"`
	CacheHits     uint64 `json:"cache_hits"`
	Retries       uint64 `json:"retries"`
	Errors        uint64 `json:"errors"`
	StartToExecMS int64  `json:"start_to_exec_ms"`
}

func readStats(t *testing.T, name string) stats {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatalf("read stats: %v", err)
	}
	var s stats
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("stats %s: %v", b, err)
	}
	return s
}

// TestSharedCache: a second container sharing the cache volume fetches no
// chunk from the store; so does one that takes it with --volumes-from.
func TestSharedCache(t *testing.T) {
	e := setup(t)
	cache := e.volume(t, "cache")
	dir := t.TempDir()
	run := func(flags ...string) stats {
		t.Helper()
		flags = append(flags, "-v", dir+":/stats", "-e", "BOOTFS_STATS=/stats/s.json")
		os.Remove(filepath.Join(dir, "s.json"))
		got := e.run(t, true, flags, e.bbBoot, "md5sum", "/bin/busybox")
		if got.code != 0 || !strings.Contains(got.stdout, "/bin/busybox") {
			t.Fatalf("md5sum: exit %d, %q; stderr: %s", got.code, got.stdout, got.stderr)
		}
		if !strings.Contains(got.stderr, "chunks_fetched=") {
			t.Errorf("no stats line on stderr: %s", got.stderr)
		}
		return readStats(t, filepath.Join(dir, "s.json"))
	}
	first := run("-v", cache+":/.bootfs/cache")
	if first.ChunksFetched == 0 || first.BytesFetched == 0 || first.StartToExecMS <= 0 {
		t.Errorf("first run stats = %+v, want chunks fetched and a start time", first)
	}
	second := run("-v", cache+":/.bootfs/cache")
	if second.ChunksFetched != 0 || second.BytesFetched != 0 || second.CacheHits == 0 {
		t.Errorf("second run stats = %+v, want 0 chunks fetched, cache hits", second)
	}

	keeper := e.prefix + "-cache-keeper"
	if out, err := exec.Command("docker", "create", "--name", keeper, "-v", cache+":/.bootfs/cache", e.bb, "true").CombinedOutput(); err != nil {
		t.Fatalf("docker create: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("docker", "rm", "-f", "-v", keeper).Run() })
	third := run("--volumes-from", keeper)
	if third.ChunksFetched != 0 || third.CacheHits == 0 {
		t.Errorf("--volumes-from run stats = %+v, want 0 chunks fetched, cache hits", third)
	}
	t.Logf("first %+v, second %+v", first, second)
}

// TestUnprivileged: without the flags boot exits at once and names them.
func TestUnprivileged(t *testing.T) {
	e := setup(t)
	got := e.run(t, false, nil, e.bbBoot, "echo", "should not run")
	if got.code == 0 || strings.Contains(got.stdout, "should not run") || !strings.Contains(got.stderr, "--privileged --device /dev/fuse") {
		t.Errorf("unprivileged run: exit %d, stdout %q, stderr %q; want non-zero, naming --privileged --device /dev/fuse", got.code, got.stdout, got.stderr)
	}
	if got.took > 10*time.Second {
		t.Errorf("unprivileged run took %v", got.took)
	}

	// CAP_SYS_ADMIN and the device, but Docker's default seccomp
	// profile: it forbids pivot_root, and the error says which flags
	// lift that.
	info, err := exec.Command("docker", "info", "-f", "{{.SecurityOptions}}").Output()
	if err != nil || !strings.Contains(string(info), "seccomp") {
		t.Logf("no seccomp in docker info (%q, %v): the partial-privilege case does not apply", info, err)
		return
	}
	got = e.run(t, false, []string{"--cap-add", "SYS_ADMIN", "--device", "/dev/fuse"}, e.bbBoot, "echo", "should not run")
	if got.code == 0 || strings.Contains(got.stdout, "should not run") || !strings.Contains(got.stderr, "seccomp=unconfined") {
		t.Errorf("run without seccomp=unconfined: exit %d, stdout %q, stderr %q; want non-zero, naming seccomp=unconfined", got.code, got.stdout, got.stderr)
	}
}

// TestTimeToFirstOutput logs how long docker run takes to print, for the
// original and the converted image, with an empty cache.
func TestTimeToFirstOutput(t *testing.T) {
	e := setup(t)
	var orig, boot []time.Duration
	for range 3 {
		orig = append(orig, e.run(t, false, nil, e.bb, "echo", "hi").took)
		r := e.run(t, true, nil, e.bbBoot, "echo", "hi")
		if r.stdout != "hi\n" {
			t.Fatalf("echo hi: %q, stderr %s", r.stdout, r.stderr)
		}
		boot = append(boot, r.took)
	}
	slices.Sort(orig)
	slices.Sort(boot)
	t.Logf("docker run echo hi, median of 3: original %v, bootfs %v (empty cache, HTTP store on loopback)", orig[1], boot[1])
}
