package e2e

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

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
}
