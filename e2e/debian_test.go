package e2e

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bootfs/bootfs/internal/testenv"
)

// debianRootfs returns a cached debootstrap'd Debian bookworm tree with the
// given extra packages (bench/rootfs.sh), or skips t.
func debianRootfs(t *testing.T, name, packages string) string {
	t.Helper()
	testenv.LookPath(t, "debootstrap")
	out, err := exec.Command("../bench/rootfs.sh", name, packages).Output()
	if err != nil {
		t.Fatalf("bench/rootfs.sh %s %s: %v", name, packages, err)
	}
	return strings.TrimSpace(string(out))
}

type convertSummary struct {
	Bytes        int64  `json:"bytes"`
	Chunks       int    `json:"chunks"`
	NewChunks    int    `json:"new_chunks"`
	NewBytes     int64  `json:"new_bytes"`
	BytesWritten int64  `json:"bytes_written"`
	ImageID      string `json:"image_id"`
}

func (e *env) convertJSON(t *testing.T, src, target, store string) convertSummary {
	t.Helper()
	out, err := e.convert(src, target, store, "--json", "--quiet")
	if err != nil {
		t.Fatal(err)
	}
	var s convertSummary
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("mkimage --json: %v\n%s", err, out)
	}
	return s
}

// TestDebianSharedBase converts a Debian minbase image, then the same base
// with python3, into one store: the second writes only what python3 adds,
// converting either again writes nothing, and the converted python image
// runs python as the original does.
func TestDebianSharedBase(t *testing.T) {
	e := setup(t)
	minRoot := debianRootfs(t, "min", "")
	pyRoot := debianRootfs(t, "python", "python3")
	minImg, pyImg := e.prefix+"/debian-min:1", e.prefix+"/debian-python:1"
	for img, root := range map[string]string{minImg: minRoot, pyImg: pyRoot} {
		if err := dockerImport(root, img, `CMD ["/bin/bash"]`); err != nil {
			t.Fatal(err)
		}
	}
	store := filepath.Join(e.tmp, "debian-store")
	min := e.convertJSON(t, minImg, minImg+"-boot", store)
	py := e.convertJSON(t, pyImg, pyImg+"-boot", store)
	t.Logf("minbase: %d bytes, %d chunks, %d new, %d written; +python3: %d bytes, %d chunks, %d new (%d bytes), %d written",
		min.Bytes, min.Chunks, min.NewChunks, min.BytesWritten, py.Bytes, py.Chunks, py.NewChunks, py.NewBytes, py.BytesWritten)
	if min.NewChunks == 0 || py.NewChunks == 0 {
		t.Fatalf("conversions into an empty store wrote %d and %d chunks", min.NewChunks, py.NewChunks)
	}
	// python3 adds about 136 MB to a 121 MB base: most of the base's
	// chunks must be reused, so the new bytes stay well below the image.
	if shared := py.Bytes - py.NewBytes; shared < min.Bytes/2 {
		t.Errorf("python image reused %d bytes of the %d-byte base, want at least half", shared, min.Bytes)
	}
	checkBootImages(t, minImg, pyImg)
	again := e.convertJSON(t, pyImg, pyImg+"-boot2", store)
	if again.NewChunks != 0 || again.BytesWritten != 0 {
		t.Errorf("converting %s again wrote %d chunks (%d bytes), want 0", pyImg, again.NewChunks, again.BytesWritten)
	}

	want := e.run(t, false, nil, pyImg, "python3", "-c", "import json, sqlite3; print(json.dumps({'sqlite': sqlite3.sqlite_version}))")
	if want.code != 0 {
		t.Fatalf("original python image: exit %d: %s", want.code, want.stderr)
	}
	// The converted image reads its chunks from e.storeURL: serve the
	// Debian store there too by converting into the shared store as well.
	e.convertJSON(t, pyImg, pyImg+"-shared", e.store)
	got := e.run(t, true, nil, pyImg+"-shared", "python3", "-c", "import json, sqlite3; print(json.dumps({'sqlite': sqlite3.sqlite_version}))")
	if got.code != 0 || got.stdout != want.stdout {
		t.Errorf("converted python image: exit %d, stdout %q, stderr %s; want %q", got.code, got.stdout, got.stderr, want.stdout)
	}

	// Two images with a common base share the node's cache: after the
	// minbase image read its shell and libc, the python image reads them
	// from the cache and fetches only the few chunks that differ.
	e.convertJSON(t, minImg, minImg+"-shared", e.store)
	cache := e.volume(t, "debian-cache")
	read := []string{"md5sum", "/bin/bash", "/usr/bin/ls", "/usr/lib/x86_64-linux-gnu/libc.so.6"}
	baseRun := statsOf(t, e, minImg+"-shared", cache, read...)
	pyRun := statsOf(t, e, pyImg+"-shared", cache, read...)
	if baseRun.ChunksFetched == 0 || pyRun.CacheHits == 0 || pyRun.ChunksFetched*4 > baseRun.ChunksFetched {
		t.Errorf("shared cache across images: minbase run %+v, then python run %+v; want the python run served mostly from the cache", baseRun, pyRun)
	}
	t.Logf("shared cache: minbase fetched %d chunks; python then fetched %d, %d cache hits", baseRun.ChunksFetched, pyRun.ChunksFetched, pyRun.CacheHits)

	// A server workload reaches readiness: python's HTTP server answers
	// on loopback, and docker stop ends it promptly.
	port := freePort(t)
	name := e.prefix + "-pyserver"
	args := append([]string{"run", "-d", "--name", name, "--pull", "never", "--network", "host"}, e.runFlags...)
	args = append(args, pyImg+"-shared", "python3", "-m", "http.server", "--bind", "127.0.0.1", fmt.Sprint(port))
	start := time.Now()
	if out, err := exec.Command("docker", args...).CombinedOutput(); err != nil {
		t.Fatalf("docker run -d: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("docker", "rm", "-f", "-v", name).Run() })
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	var ready time.Duration
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				ready = time.Since(start)
				break
			}
		}
	}
	if ready == 0 {
		logs, _ := exec.Command("docker", "logs", name).CombinedOutput()
		t.Fatalf("python http.server in the converted image never answered on %s; logs:\n%s", url, logs)
	}
	t.Logf("converted python http.server ready after %v", ready)
	// As PID 1 of its namespace, as in a plain container, python ignores
	// SIGTERM (no handler); SIGINT, forwarded by boot, stops it.
	stopStart := time.Now()
	if out, err := exec.Command("docker", "kill", "-s", "INT", name).CombinedOutput(); err != nil {
		t.Fatalf("docker kill -s INT: %v\n%s", err, out)
	}
	if out, err := exec.Command("timeout", "20", "docker", "wait", name).CombinedOutput(); err != nil {
		t.Fatalf("docker wait: %v\n%s", err, out)
	}
	if took := time.Since(stopStart); took > 10*time.Second {
		t.Errorf("the server took %v to stop after SIGINT: the signal did not reach it", took)
	}
}

// checkBootImages checks the boot images of two different source images
// (converted to SRC-boot): the configuration DESIGN.md gives, the same
// first layer (so a node stores it once), and a second layer that holds
// nothing but the index, the TOC and the config.
func checkBootImages(t *testing.T, sources ...string) {
	t.Helper()
	var first string
	for _, src := range sources {
		boot := src + "-boot"
		out, err := exec.Command("docker", "image", "inspect", src, boot).Output()
		if err != nil {
			t.Fatalf("docker image inspect %s %s: %v", src, boot, err)
		}
		var info []struct {
			ID     string `json:"Id"`
			Config struct {
				Entrypoint, Cmd []string
				User            string
				Volumes         map[string]struct{}
				Labels          map[string]string
			}
			RootFS struct{ Layers []string }
		}
		if err := json.Unmarshal(out, &info); err != nil || len(info) != 2 {
			t.Fatalf("docker image inspect: %v", err)
		}
		orig, b := info[0], info[1]
		c := b.Config
		if len(c.Entrypoint) != 2 || c.Entrypoint[0] != "/.bootfs/boot" || c.Entrypoint[1] != "--" ||
			strings.Join(c.Cmd, " ") != strings.Join(orig.Config.Cmd, " ") || c.User != "" {
			t.Errorf("%s: Entrypoint %q, Cmd %q, User %q; want [/.bootfs/boot --], %q, \"\"", boot, c.Entrypoint, c.Cmd, c.User, orig.Config.Cmd)
		}
		for _, v := range []string{"/.bootfs/cache", "/.bootfs/upper"} {
			if _, ok := c.Volumes[v]; !ok {
				t.Errorf("%s: Volumes %v lack %s", boot, c.Volumes, v)
			}
		}
		if got := c.Labels["org.bootfs.source-image"]; got != orig.ID {
			t.Errorf("%s: source image label %q, want %s", boot, got, orig.ID)
		}
		if len(b.RootFS.Layers) != 2 {
			t.Fatalf("%s has layers %v, want 2", boot, b.RootFS.Layers)
		}
		if first == "" {
			first = b.RootFS.Layers[0]
		} else if b.RootFS.Layers[0] != first {
			t.Errorf("%s: layer 1 is %s, want %s as in the other boot image", boot, b.RootFS.Layers[0], first)
		}
		checkSecondLayer(t, boot)
	}
}

// checkSecondLayer reads the boot image's second layer from docker save:
// it holds only the config, the index, the TOC, empty directories
// (volumes and mount points) and the image's /etc/passwd and /etc/group
// (for Docker's user lookups), and is no bigger than those files plus tar
// headers.
func checkSecondLayer(t *testing.T, image string) {
	t.Helper()
	save := exec.Command("docker", "save", image)
	r, err := save.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := save.Start(); err != nil {
		t.Fatal(err)
	}
	defer save.Wait()
	outer := tar.NewReader(r)
	for {
		h, err := outer.Next()
		if err != nil {
			t.Fatalf("docker save %s: no layer with /.bootfs/rootfs.caidx (%v)", image, err)
		}
		if h.Typeflag != tar.TypeReg || !strings.HasSuffix(h.Name, ".tar") && !strings.Contains(h.Name, "blobs/") {
			continue
		}
		var names []string
		var files int64
		inner := tar.NewReader(outer)
		for {
			ih, err := inner.Next()
			if err != nil {
				break
			}
			names = append(names, ih.Name)
			files += ih.Size
		}
		if !slices.Contains(names, ".bootfs/rootfs.caidx") {
			continue
		}
		slices.Sort(names)
		want := []string{".bootfs/cache/", ".bootfs/config.json", ".bootfs/lower/", ".bootfs/root/", ".bootfs/rootfs.caidx", ".bootfs/rootfs.toc", ".bootfs/upper/", "etc/", "etc/group", "etc/passwd"}
		if !slices.Equal(names, want) {
			t.Errorf("%s layer 2 holds %q, want %q", image, names, want)
		}
		// A header per entry, padding to 512 bytes and the end marker.
		if limit := files + int64(len(names))*1024 + 10240; h.Size > limit {
			t.Errorf("%s layer 2 is %d bytes for %d bytes of files, want at most %d", image, h.Size, files, limit)
		}
		t.Logf("%s: layer 2 is %d bytes (index, TOC and config: %d bytes)", image, h.Size, files)
		io.Copy(io.Discard, r)
		return
	}
}

// statsOf runs args in the boot image with the cache volume and returns
// boot's stats of the run.
func statsOf(t *testing.T, e *env, image, cache string, args ...string) stats {
	t.Helper()
	dir := t.TempDir()
	got := e.run(t, true, []string{"-v", cache + ":/.bootfs/cache", "-v", dir + ":/stats", "-e", "BOOTFS_STATS=/stats/s.json"}, image, args...)
	if got.code != 0 {
		t.Fatalf("docker run %s %q: exit %d; stderr: %s", image, args, got.code, got.stderr)
	}
	return readStats(t, filepath.Join(dir, "s.json"))
}
