package e2e

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/bootfs/bootfs/internal/testenv"
)

// sampleImages are the images of Dockerfile and samples/, built for one
// test under the run's prefix.
type sampleImages struct {
	mkimage, cache, httpStore, sshStore string
}

// buildSamples builds the converter image and the sample images the way
// `make samples` does: offline, from the binaries in e.bin.
func buildSamples(t *testing.T, e *env) sampleImages {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	module := filepath.Dir(filepath.Dir(file))
	s := sampleImages{
		mkimage:   e.prefix + "/mkimage:sample",
		cache:     e.prefix + "/cache:sample",
		httpStore: e.prefix + "/http-store:sample",
		sshStore:  e.prefix + "/ssh-store:sample",
	}
	builds := []struct{ tag, dockerfile, context string }{
		{s.mkimage, "Dockerfile", e.bin},
		{s.cache, "samples/cache/Dockerfile", filepath.Join(module, "samples/cache")},
		{s.httpStore, "samples/http-store/Dockerfile", e.bin},
		{s.sshStore, "samples/ssh-store/Dockerfile", e.bin},
	}
	for _, b := range builds {
		out, err := exec.Command("docker", "build", "-q", "--force-rm", "-t", b.tag,
			"-f", filepath.Join(module, b.dockerfile), b.context).CombinedOutput()
		if err != nil {
			t.Fatalf("docker build -f %s %s: %v\n%s", b.dockerfile, b.context, err, out)
		}
		t.Cleanup(func() { exec.Command("docker", "rmi", "-f", b.tag).Run() })
	}
	return s
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startDetached runs image detached on the host network as container
// name, removed (with its anonymous volumes) at the end of t.
func startDetached(t *testing.T, name string, flags []string, image string, args ...string) {
	t.Helper()
	a := append([]string{"run", "-d", "--name", name, "--pull", "never", "--network", "host"}, flags...)
	a = append(append(a, image), args...)
	t.Cleanup(func() { exec.Command("docker", "rm", "-f", "-v", name).Run() })
	if out, err := exec.Command("docker", a...).CombinedOutput(); err != nil {
		t.Fatalf("docker %s: %v: %s", strings.Join(a, " "), err, out)
	}
}

// waitUp calls ready until it succeeds, for up to 10s, and fails t with
// the container's logs if it never does.
func waitUp(t *testing.T, name string, ready func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err = ready(); err == nil {
			return
		}
	}
	logs, _ := exec.Command("docker", "logs", name).CombinedOutput()
	t.Fatalf("container %s did not come up: %v; logs:\n%s", name, err, logs)
}

// sampleCommands are run in the original and the converted image; their
// outputs must be equal.
var sampleCommands = []struct {
	args      []string
	normalize func(string) string
}{
	{args: []string{"cat", "/etc/os-release", "/data/hello", "/data/sub/deep"}},
	{args: []string{"ls", "-la", "/", "/data"}, normalize: normalizeLs},
	{args: []string{"sh", "-c", "id; pwd; md5sum /bin/busybox"}},
}

// compareRuns runs sampleCommands in e.bb with origFlags and in boot
// with flags, and reports any difference.
func compareRuns(t *testing.T, e *env, origFlags []string, boot string, flags ...string) {
	t.Helper()
	for _, c := range sampleCommands {
		want := e.run(t, false, origFlags, e.bb, c.args...)
		got := e.run(t, true, flags, boot, c.args...)
		norm := c.normalize
		if norm == nil {
			norm = strings.TrimSpace
		}
		if norm(got.stdout) != norm(want.stdout) || got.code != want.code || want.code != 0 {
			t.Errorf("docker run %v %s %q:\n got (exit %d):\n%s\nstderr: %s\n want (exit %d):\n%s\nstderr: %s",
				flags, boot, c.args, got.code, norm(got.stdout), got.stderr, want.code, norm(want.stdout), want.stderr)
		}
	}
}

// statsRun runs md5sum of busybox in boot with flags and returns boot's
// stats of the run.
func statsRun(t *testing.T, e *env, boot string, flags ...string) stats {
	t.Helper()
	dir := t.TempDir()
	flags = append(flags, "-v", dir+":/stats", "-e", "BOOTFS_STATS=/stats/s.json")
	got := e.run(t, true, flags, boot, "md5sum", "/bin/busybox")
	if got.code != 0 || !strings.Contains(got.stdout, "/bin/busybox") {
		t.Fatalf("docker run %v %s md5sum: exit %d, %q; stderr: %s", flags, boot, got.code, got.stdout, got.stderr)
	}
	return readStats(t, filepath.Join(dir, "s.json"))
}

// TestSamples builds the converter image and the sample images, converts
// the busybox image with the converter container through the Docker
// socket, and boots the result from the HTTP store container (with the
// cache keeper) and from the SSH store container (with keys and
// known_hosts).
func TestSamples(t *testing.T) {
	e := setup(t)
	if _, err := os.Stat("/var/run/docker.sock"); err != nil {
		testenv.Skip(t, "the converter container needs the Docker socket at /var/run/docker.sock: "+err.Error())
	}
	img := buildSamples(t, e)
	store := t.TempDir()
	httpPort := freePort(t)
	httpURL := fmt.Sprintf("http://127.0.0.1:%d", httpPort)

	// The converter container, as the Dockerfile's comment shows it.
	boot := e.prefix + "/bb:sample-boot"
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", boot).Run() })
	conv := e.run(t, false, []string{"-v", "/var/run/docker.sock:/var/run/docker.sock", "-v", store + ":/store"},
		img.mkimage, "--store", "/store", "--runtime-store", httpURL, e.bb, boot)
	if conv.code != 0 {
		t.Fatalf("converter container: exit %d\nstdout: %s\nstderr: %s", conv.code, conv.stdout, conv.stderr)
	}
	if out, err := exec.Command("docker", "image", "inspect", "-f", "{{.Id}}", boot).CombinedOutput(); err != nil {
		t.Fatalf("the converter container did not load %s: %v: %s", boot, err, out)
	}
	chunks, _ := filepath.Glob(filepath.Join(store, "*", "*.cacnk"))
	if len(chunks) == 0 {
		t.Fatalf("the converter container wrote no chunks to the store volume %s", store)
	}
	t.Logf("converter container: %d chunks in the store, took %v", len(chunks), conv.took)

	t.Run("http store and cache", func(t *testing.T) {
		name := e.prefix + "-http-store"
		startDetached(t, name, []string{"-v", store + ":/store"}, img.httpStore, "--http", fmt.Sprintf("127.0.0.1:%d", httpPort))
		waitUp(t, name, func() error {
			resp, err := http.Get(httpURL + "/0000/" + strings.Repeat("0", 64) + ".cacnk")
			if err == nil {
				resp.Body.Close()
			}
			return err
		})
		// The cache keeper, as samples/cache/README.md shows it.
		keeper := e.prefix + "-cache"
		t.Cleanup(func() { exec.Command("docker", "rm", "-f", "-v", keeper).Run() })
		if out, err := exec.Command("docker", "create", "--name", keeper, img.cache).CombinedOutput(); err != nil {
			t.Fatalf("docker create %s: %v: %s", img.cache, err, out)
		}
		first := statsRun(t, e, boot, "--volumes-from", keeper)
		if first.ChunksFetched == 0 || first.Errors != 0 {
			t.Errorf("first run from the HTTP store container: stats %+v, want chunks fetched and no errors", first)
		}
		compareRuns(t, e, nil, boot, "--volumes-from", keeper)
		// Every chunk the first run read is now in the keeper's volume.
		again := statsRun(t, e, boot, "--volumes-from", keeper)
		if again.ChunksFetched != 0 || again.CacheHits == 0 {
			t.Errorf("run with the cache keeper's volume: stats %+v, want no chunk fetched, cache hits", again)
		}
		t.Logf("first run %+v; with the cache %+v", first, again)
	})

	t.Run("ssh store", func(t *testing.T) {
		port := freePort(t)
		serverKeys, clientKeys := t.TempDir(), t.TempDir()
		_, hostPub := testenv.WriteSSHKey(t, serverKeys, "host_key")
		_, clientPub := testenv.WriteSSHKey(t, clientKeys, "id")
		testenv.WriteSSHKey(t, clientKeys, "stranger") // not authorized
		writeFile(t, filepath.Join(serverKeys, "authorized_keys"), ssh.MarshalAuthorizedKey(clientPub))
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		writeFile(t, filepath.Join(clientKeys, "known_hosts"),
			[]byte(knownhosts.Line([]string{knownhosts.Normalize(addr)}, hostPub)+"\n"))

		name := e.prefix + "-ssh-store"
		startDetached(t, name, []string{"-v", store + ":/store", "-v", serverKeys + ":/keys:ro"},
			img.sshStore, "--ssh", addr, "--host-key", "/keys/host_key", "--authorized-keys", "/keys/authorized_keys")
		waitUp(t, name, func() error { return sshBanner(addr) })

		withKey := func(key string) []string {
			return []string{
				"-e", fmt.Sprintf("BOOTFS_STORE=ssh://root@%s/store", addr),
				"-e", "BOOTFS_SSH_KEY=/keys/" + key,
				"-e", "BOOTFS_SSH_KNOWN_HOSTS=/keys/known_hosts",
				"-v", clientKeys + ":/keys:ro",
			}
		}
		flags := withKey("id")
		s := statsRun(t, e, boot, flags...)
		if s.ChunksFetched == 0 || s.Errors != 0 {
			t.Errorf("run from the SSH store container: stats %+v, want chunks fetched and no errors", s)
		}
		// The original gets the same /keys mount, which ls shows.
		compareRuns(t, e, []string{"-v", clientKeys + ":/keys:ro"}, boot, flags...)

		// A key the server does not know is refused: boot fails before
		// the workload runs.
		got := e.run(t, true, withKey("stranger"), boot, "echo", "should not run")
		if got.code == 0 || strings.Contains(got.stdout, "should not run") || !strings.Contains(got.stderr, "authentication failed") {
			t.Errorf("boot with a key not in authorized_keys: exit %d, stdout %q; want a failure naming authentication\nstderr: %s", got.code, got.stdout, got.stderr)
		}
		t.Logf("boot with a key not in authorized_keys: exit %d, stderr: %s", got.code, strings.TrimSpace(got.stderr))
		t.Logf("SSH run %+v", s)
	})

	t.Run("compose", func(t *testing.T) {
		compose := composeCommand(t)
		port := freePort(t)
		_, file, _, _ := runtime.Caller(0)
		yaml := filepath.Join(filepath.Dir(filepath.Dir(file)), "samples", "compose.yaml")
		project := strings.NewReplacer("/", "-", ".", "-").Replace(e.prefix) + "-compose"
		dc := func(args ...string) *exec.Cmd {
			c := exec.Command(compose[0], append(append(compose[1:], "-p", project, "-f", yaml), args...)...)
			c.Env = append(os.Environ(),
				"APP_IMAGE="+boot,
				"STORE_DIR="+store,
				fmt.Sprintf("STORE_PORT=%d", port),
				"HTTP_STORE_IMAGE="+img.httpStore)
			return c
		}
		t.Cleanup(func() { dc("down", "-v", "--remove-orphans").Run() })
		statsDir := t.TempDir()
		runApp := func(args ...string) string {
			t.Helper()
			a := append([]string{"run", "--rm", "-T", "-v", statsDir + ":/stats", "-e", "BOOTFS_STATS=/stats/s.json", "app"}, args...)
			out, err := dc(a...).Output()
			if err != nil {
				var stderr []byte
				if ee, ok := err.(*exec.ExitError); ok {
					stderr = ee.Stderr
				}
				t.Fatalf("%s %s: %v\nstdout: %s\nstderr: %s", strings.Join(compose, " "), strings.Join(a, " "), err, out, stderr)
			}
			return string(out)
		}
		cmd := []string{"sh", "-c", "cat /etc/os-release; md5sum /bin/busybox"}
		want := e.run(t, false, nil, e.bb, cmd...)
		got := runApp(cmd...)
		if strings.TrimSpace(got) != strings.TrimSpace(want.stdout) {
			t.Errorf("compose app printed:\n%s\nwant what the original prints:\n%s", got, want.stdout)
		}
		first := readStats(t, filepath.Join(statsDir, "s.json"))
		runApp(cmd...)
		again := readStats(t, filepath.Join(statsDir, "s.json"))
		if first.ChunksFetched == 0 || again.ChunksFetched != 0 || again.CacheHits == 0 {
			t.Errorf("compose runs: first %+v, second %+v; want the second served from the cache volume", first, again)
		}
	})
}

// composeCommand returns the Docker Compose command line: the v2 plugin
// (docker compose) or docker-compose.
func composeCommand(t *testing.T) []string {
	if exec.Command("docker", "compose", "version").Run() == nil {
		return []string{"docker", "compose"}
	}
	return []string{testenv.LookPath(t, "docker-compose")}
}

func writeFile(t *testing.T, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// sshBanner connects to addr and reads the SSH server's version line.
func sshBanner(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "SSH-2.0-") {
		return fmt.Errorf("%s answered %q, not an SSH version line", addr, line)
	}
	return nil
}
