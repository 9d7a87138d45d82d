package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bootfs/bootfs/internal/testenv"
)

// cleanups run after every test of the package (see TestMain).
var (
	cleanupMu sync.Mutex
	cleanups  []func()
)

func atExit(f func()) {
	cleanupMu.Lock()
	cleanups = append(cleanups, f)
	cleanupMu.Unlock()
}

func TestMain(m *testing.M) {
	code := m.Run()
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	os.Exit(code)
}

// env is what every test shares: binaries, a store server, the images.
type env struct {
	bin      string   // directory of mkimage, chunkstore, boot
	runFlags []string // docker run flags that let boot mount
	tmp      string
	store    string // store directory
	storeURL string // its HTTP server
	prefix   string // of image, container and volume names
	bb       string // the busybox image
	bbBoot   string // bb converted
}

var (
	envOnce sync.Once
	shared  *env
	envErr  string // why there is no env: a skip reason
	envFail error  // a setup failure
)

// setup returns the shared environment, or skips (or fails) t.
func setup(t *testing.T) *env {
	t.Helper()
	envOnce.Do(func() { shared, envErr, envFail = newEnv() })
	if envFail != nil {
		t.Fatalf("e2e setup: %v", envFail)
	}
	if envErr != "" {
		testenv.Skip(t, envErr)
	}
	return shared
}

func newEnv() (*env, string, error) {
	if os.Geteuid() != 0 {
		return nil, "e2e tests need root", nil
	}
	if _, err := exec.LookPath("docker"); err != nil {
		return nil, "docker is not installed", nil
	}
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		return nil, fmt.Sprintf("no Docker engine answers (start one: dockerd --bridge=none --iptables=false --ip-masq=false): %v: %s", err, out), nil
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil, "no /dev/fuse", nil
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return nil, "busybox (busybox-static) is not installed", nil
	}
	tmp, err := os.MkdirTemp("", "bootfs-e2e-")
	if err != nil {
		return nil, "", err
	}
	atExit(func() { os.RemoveAll(tmp) })
	// E2E_PREFIX names what the tests create, where several checkouts
	// share one engine.
	prefix := os.Getenv("E2E_PREFIX")
	if prefix == "" {
		prefix = "bootfs-e2e"
	}
	e := &env{tmp: tmp, prefix: fmt.Sprintf("%s-%d", prefix, os.Getpid())}
	if e.bin, err = binaries(tmp); err != nil {
		return nil, "", err
	}
	e.store = filepath.Join(tmp, "store")
	if e.storeURL, err = serveStore(e.bin, e.store); err != nil {
		return nil, "", err
	}
	if e.runFlags, err = privilegeFlags(e.prefix); err != nil {
		return nil, "", err
	}
	root := filepath.Join(tmp, "bb")
	if err := busyboxTree(root, busybox); err != nil {
		return nil, "", err
	}
	e.bb = e.prefix + "/bb:orig"
	if err := dockerImport(root, e.bb, `CMD ["/bin/sh"]`, "WORKDIR /root"); err != nil {
		return nil, "", err
	}
	e.bbBoot = e.prefix + "/bb:boot"
	if _, err := e.convert(e.bb, e.bbBoot, e.store); err != nil {
		return nil, "", err
	}
	return e, "", nil
}

// binaries returns $BOOTFS_BIN, or builds the commands into dir/bin.
func binaries(dir string) (string, error) {
	if b := os.Getenv("BOOTFS_BIN"); b != "" {
		return b, nil
	}
	_, file, _, _ := runtime.Caller(0)
	module := filepath.Dir(filepath.Dir(file))
	bin := filepath.Join(dir, "bin")
	for _, c := range []string{"boot", "mkimage", "chunkstore", "bootfs-agent"} {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(bin, c), "./cmd/"+c)
		cmd.Dir = module
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("build %s: %v\n%s", c, err, out)
		}
	}
	return bin, nil
}

// serveStore starts chunkstore serve on a free loopback port and returns
// its URL; the server stops at exit.
func serveStore(bin, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(filepath.Join(bin, "chunkstore"), "serve", "--dir", dir, "--http", addr)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		return "", err
	}
	atExit(func() { cmd.Process.Kill(); cmd.Wait() })
	url := "http://" + addr
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get(url + "/0000/" + strings.Repeat("0", 64) + ".cacnk"); err == nil {
			resp.Body.Close()
			return url, nil
		}
	}
	return "", fmt.Errorf("chunkstore serve on %s did not come up: %s", addr, log.String())
}

// privilegeFlags returns the docker run flags that let a container mount
// FUSE and overlayfs: --privileged --device /dev/fuse, or, where the
// engine cannot grant every capability (a nested engine whose bounding
// set lacks some), CAP_SYS_ADMIN with seccomp and AppArmor off.
func privilegeFlags(prefix string) ([]string, error) {
	full := []string{"--privileged", "--device", "/dev/fuse"}
	// Any image will do for the probe: make a one-file one.
	dir, err := os.MkdirTemp("", "probe")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o644); err != nil {
		return nil, err
	}
	img := prefix + "/probe:1"
	if err := dockerImport(dir, img); err != nil {
		return nil, err
	}
	defer exec.Command("docker", "rmi", "-f", img).Run()
	out, err := exec.Command("docker", append(append([]string{"create"}, full...), img, "/x")...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("docker create: %v: %s", err, out)
	}
	id := strings.TrimSpace(string(out))
	defer exec.Command("docker", "rm", "-f", "-v", id).Run()
	out, err = exec.Command("docker", "start", id).CombinedOutput()
	if strings.Contains(string(out), "apply caps") {
		return []string{"--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined", "--device", "/dev/fuse"}, nil
	}
	return full, nil
}

// busyboxTree writes a busybox-static root filesystem with users, groups
// and some content at /data.
func busyboxTree(root, busybox string) error {
	for _, d := range []string{"bin", "etc", "tmp", "root", "data/sub", "home/alice"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	os.Chmod(filepath.Join(root, "tmp"), 0o1777)
	b, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), b, 0o755); err != nil {
		return err
	}
	list, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return err
	}
	for _, c := range strings.Fields(string(list)) {
		if c != "busybox" {
			if err := os.Symlink("busybox", filepath.Join(root, "bin", c)); err != nil {
				return err
			}
		}
	}
	files := map[string]string{
		"etc/passwd":     "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\n",
		"etc/group":      "root:x:0:\nwheel:x:10:root,alice\naudio:x:29:alice\nnogroup:x:65534:\nalice:x:1000:\n",
		"etc/os-release": "NAME=\"bootfs busybox\"\nID=busybox\nVERSION_ID=1\n",
		"data/hello":     "hello from the image\n",
		"data/sub/deep":  "deep\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return os.Chown(filepath.Join(root, "home/alice"), 1000, 1000)
}

// dockerImport imports the tree at dir as image tag, with Dockerfile-style
// changes such as `CMD ["/bin/sh"]` or `USER nobody`.
func dockerImport(dir, tag string, changes ...string) error {
	args := []string{"import"}
	for _, c := range changes {
		args = append(args, "-c", c)
	}
	args = append(args, "-", tag)
	tar := exec.Command("tar", "-C", dir, "--numeric-owner", "-c", ".")
	imp := exec.Command("docker", args...)
	pipe, err := tar.StdoutPipe()
	if err != nil {
		return err
	}
	imp.Stdin = pipe
	var out bytes.Buffer
	imp.Stdout, imp.Stderr = &out, &out
	if err := tar.Start(); err != nil {
		return err
	}
	if err := imp.Run(); err != nil {
		tar.Wait()
		return fmt.Errorf("docker import %s: %v: %s", tag, err, out.String())
	}
	if err := tar.Wait(); err != nil {
		return err
	}
	atExit(func() { exec.Command("docker", "rmi", "-f", tag).Run() })
	return nil
}

// convert converts src into the boot image target, with its chunks in
// store and the runtime store e.storeURL, and returns mkimage's output.
func (e *env) convert(src, target, store string, extra ...string) (string, error) {
	args := append([]string{"--store", store, "--runtime-store", e.storeURL}, extra...)
	args = append(args, src, target)
	out, err := exec.Command(filepath.Join(e.bin, "mkimage"), args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("mkimage %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	atExit(func() { exec.Command("docker", "rmi", "-f", target).Run() })
	return string(out), nil
}

// result is a finished docker run.
type result struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

// run runs `docker run --rm --pull never --network host [flags] image
// [args]` and returns its output and exit code. boot images get the
// privilege flags.
func (e *env) run(t *testing.T, boot bool, flags []string, image string, args ...string) result {
	t.Helper()
	a := []string{"run", "--rm", "--pull", "never", "--network", "host"}
	if boot {
		a = append(a, e.runFlags...)
	}
	a = append(a, flags...)
	a = append(a, image)
	a = append(a, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", a...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("docker %s: %v", strings.Join(a, " "), err)
		}
		r.code = ee.ExitCode()
	}
	return r
}

// volume returns a fresh named volume, removed at the end of t.
func (e *env) volume(t *testing.T, name string) string {
	v := fmt.Sprintf("%s-%s", e.prefix, name)
	t.Cleanup(func() { exec.Command("docker", "volume", "rm", "-f", v).Run() })
	return v
}
