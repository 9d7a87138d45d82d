package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/bootfs/bootfs/internal/testenv"
	"github.com/bootfs/bootfs/mkimage"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func tree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "etc/hostname"), []byte("box\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestSummary(t *testing.T) {
	src := tree(t)
	store := filepath.Join(t.TempDir(), "store")
	index := filepath.Join(t.TempDir(), "rootfs.caidx")
	code, out, stderr := runCmd(t, "--store", store, "--index-out", index, "dir:"+src)
	if code != 0 {
		t.Fatalf("mkimage exit %d, stderr %s", code, stderr)
	}
	for _, want := range []string{"entries       3", "new chunks    1", "written ", "index         " + index, "time "} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	for _, f := range []string{index, index + ".toc"} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("output %s: %v", f, err)
		}
	}

	code, out, stderr = runCmd(t, "--json", "--store", store, "dir:"+src)
	if code != 0 {
		t.Fatalf("mkimage --json exit %d, stderr %s", code, stderr)
	}
	var got struct {
		Entries    int     `json:"entries"`
		Chunks     int     `json:"chunks"`
		NewChunks  int     `json:"new_chunks"`
		DedupRatio float64 `json:"dedup_ratio"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("--json output %q: %v", out, err)
	}
	if got.Entries != 3 || got.Chunks != 1 || got.NewChunks != 0 || got.DedupRatio != 1 {
		t.Errorf("second conversion --json = %+v, want 3 entries, 1 chunk, 0 new, dedup 1", got)
	}
}

func TestErrors(t *testing.T) {
	src := tree(t)
	empty := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{name: "no source", args: nil, wantCode: 2, wantErr: "want SOURCE"},
		{name: "bad chunk size", args: []string{"--chunk-size", "64k:16k:256k", "dir:" + src}, wantCode: 2, wantErr: "--chunk-size"},
		{name: "bad chunker", args: []string{"--chunker", "fastcdc", "dir:" + src}, wantCode: 2, wantErr: "--chunker"},
		{name: "bad digest", args: []string{"--digest", "md5", "dir:" + src}, wantCode: 2, wantErr: "--digest"},
		{name: "store URL typo", args: []string{"--store", "htp://127.0.0.1:1/store", "dir:" + src}, wantCode: 1, wantErr: "htp"},
		{name: "missing source dir", args: []string{"--store", t.TempDir(), "dir:" + filepath.Join(src, "nope")}, wantCode: 1, wantErr: "no such file"},
		{name: "nothing to write", args: []string{"dir:" + src}, wantCode: 2, wantErr: "nothing to write"},
		{name: "index without store", args: []string{"--index-out", filepath.Join(t.TempDir(), "x.caidx"), "dir:" + src}, wantCode: 0, wantErr: "chunks are stored nowhere"},
		{name: "target without store", args: []string{"dir:" + src, "app:boot"}, wantCode: 2, wantErr: "--store"},
		{name: "empty token file", args: []string{"--store", "http://127.0.0.1:1/", "--token-file", empty, "dir:" + src}, wantCode: 2, wantErr: "is empty"},
		{name: "missing token file", args: []string{"--store", "http://127.0.0.1:1/", "--token-file", empty + ".nope", "dir:" + src}, wantCode: 2, wantErr: "--token-file"},
		{name: "bad output", args: []string{"--store", t.TempDir(), "--output", "oci:x", "dir:" + src}, wantCode: 2, wantErr: "docker-archive:FILE"},
		{name: "push with store", args: []string{"--push", "127.0.0.1:1/app:1", "--store", t.TempDir(), "dir:" + src}, wantCode: 2, wantErr: "drop TARGET, --output and --store"},
		{name: "push without tag", args: []string{"--push", "127.0.0.1:1/app", "dir:" + src}, wantCode: 2, wantErr: "REGISTRY/REPOSITORY:TAG"},
		{name: "push to nobody", args: []string{"--push", "127.0.0.1:1/app:1", "--registry-auth", "", "dir:" + src}, wantCode: 1, wantErr: "127.0.0.1:1"},
		{name: "oci store in a list", args: []string{"--store", "oci://127.0.0.1:1/app," + t.TempDir(), "dir:" + src}, wantCode: 1, wantErr: "cannot be part of a --store list"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCmd(t, tt.args...)
			if code != tt.wantCode || !strings.Contains(stderr, tt.wantErr) {
				t.Errorf("mkimage %q: exit %d, stderr %q; want exit %d and %q", tt.args, code, stderr, tt.wantCode, tt.wantErr)
			}
		})
	}
}

func TestPrefetchFlag(t *testing.T) {
	src := tree(t)
	dir := t.TempDir()
	bootBin := filepath.Join(dir, "boot")
	list := filepath.Join(dir, "paths")
	archive := filepath.Join(dir, "image.tar")
	if err := os.WriteFile(bootBin, []byte("#!/bin/false\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(list, []byte("/etc/hostname\n/gone\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(dir, "store")

	code, _, stderr := runCmd(t, "--store", store, "--prefetch", list, "dir:"+src)
	if code != 2 || !strings.Contains(stderr, "give TARGET, --output or --push") {
		t.Errorf("--prefetch without an image: exit %d, stderr %q", code, stderr)
	}
	code, _, stderr = runCmd(t, "--store", store, "--prefetch", filepath.Join(dir, "nope"), "--output", "docker-archive:"+archive, "dir:"+src)
	if code != 2 || !strings.Contains(stderr, "prefetch list") {
		t.Errorf("--prefetch of a missing file: exit %d, stderr %q", code, stderr)
	}

	code, _, stderr = runCmd(t, "--quiet", "--store", store, "--boot-binary", bootBin, "--prefetch", list, "--output", "docker-archive:"+archive, "dir:"+src)
	if code != 0 {
		t.Fatalf("mkimage --prefetch exit %d, stderr %s", code, stderr)
	}
	var cfg struct {
		Prefetch []string `json:"prefetch"`
	}
	if err := json.Unmarshal(fileInArchive(t, archive, ".bootfs/config.json"), &cfg); err != nil {
		t.Fatal(err)
	}
	// The tree is one small chunk: /etc/hostname's.
	chunks, err := os.ReadDir(store)
	if err != nil || len(chunks) != 1 {
		t.Fatalf("store holds %v (%v), want one prefix directory", chunks, err)
	}
	if len(cfg.Prefetch) != 1 || !strings.HasPrefix(cfg.Prefetch[0], chunks[0].Name()) {
		t.Errorf("config prefetch = %q, want the one chunk under %s", cfg.Prefetch, chunks[0].Name())
	}
}

// fileInArchive returns the content of name in one of the layers of a
// docker-save archive.
func fileInArchive(t *testing.T, archive, name string) []byte {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	outer := tar.NewReader(f)
	for {
		h, err := outer.Next()
		if err != nil {
			t.Fatalf("%s not found in %s (%v)", name, archive, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		inner := tar.NewReader(outer)
		for {
			ih, err := inner.Next()
			if err != nil {
				break
			}
			if ih.Name == name {
				b, err := io.ReadAll(inner)
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
		}
	}
}

func TestProgressBar(t *testing.T) {
	for _, total := range []int64{0, 1 << 20} {
		t.Run(fmt.Sprint("total ", total), func(t *testing.T) {
			var out bytes.Buffer
			bar := newProgressBar(&out)
			bar.update(mkimage.Progress{Total: total, Bytes: 512 << 10, Chunks: 8, NewChunks: 3, BytesWritten: 100 << 10, Elapsed: time.Second})
			bar.update(mkimage.Progress{Total: total, Bytes: 3 << 20, Chunks: 40, NewChunks: 17, BytesWritten: 1 << 20, Elapsed: 2 * time.Second})
			bar.finish(true)
			for _, want := range []string{"3.0 MiB", "40 chunks"} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("progress output lacks %q:\n%q", want, out.String())
				}
			}
		})
	}
	var out bytes.Buffer
	newProgressBar(&out).finish(false) // no update yet: nothing drawn, no hang
	if out.Len() != 0 {
		t.Errorf("a bar that never started printed %q", out.String())
	}
}

// A boot image that would read its chunks from a directory of this host
// gets a warning: containers see that path only if it is mounted into
// them. A URL they reach gets none.
func TestLocalRuntimeStoreWarning(t *testing.T) {
	src := tree(t)
	dir := t.TempDir()
	bootBin := filepath.Join(dir, "boot")
	if err := os.WriteFile(bootBin, []byte("#!/bin/false\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(dir, "store")
	const warning = "reads chunks from a directory of this host"
	for _, tc := range []struct {
		runtime string
		warn    bool
	}{
		{"", true},
		{"http://127.0.0.1:8080", false},
		{"https://store.example,file:///srv/store", true},
		{"ssh://store.example/srv/store", false},
	} {
		args := []string{"--store", store, "--boot-binary", bootBin, "--output", "docker-archive:" + filepath.Join(dir, "image.tar"), "dir:" + src}
		if tc.runtime != "" {
			args = append([]string{"--runtime-store", tc.runtime}, args...)
		}
		code, _, stderr := runCmd(t, args...)
		if code != 0 {
			t.Fatalf("mkimage %q: exit %d, stderr %s", args, code, stderr)
		}
		if got := strings.Contains(stderr, warning); got != tc.warn {
			t.Errorf("mkimage with runtime store %q: warned %v, want %v; stderr %s", tc.runtime, got, tc.warn, stderr)
		}
	}
}

// TestIssue16Item9TmpMax checks --tmp-max: a tar whose contents would
// take the spill file past it fails, naming the entry and the flag,
// before they are read, and one within it converts, its sparse entry's
// holes taking no disk.
func TestIssue16Item9TmpMax(t *testing.T) {
	dir := t.TempDir()
	sparse := map[string]int64{"sparse.tar": 256 << 20, "huge.tar": 4 << 40}
	for name, size := range sparse {
		if err := os.WriteFile(filepath.Join(dir, name), testenv.SparseTar(t, "var/log/lastlog", size, []byte("head"), []byte("tail")), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name, tar string
		args      []string
		wantCode  int
		wantErr   []string
	}{
		{"past the limit", "sparse.tar", []string{"--tmp-max", "128m"}, 1, []string{"--tmp-max", "var/log/lastlog", "134217728"}},
		{"terabytes claimed, default limit", "huge.tar", nil, 1, []string{"--tmp-max", "var/log/lastlog"}},
		{"within the limit", "sparse.tar", []string{"--tmp-max", "512m"}, 0, nil},
		{"no limit", "sparse.tar", []string{"--tmp-max", "0"}, 0, nil},
		{"not a size", "sparse.tar", []string{"--tmp-max", "lots"}, 2, []string{"tmp-max", "lots"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			index := filepath.Join(t.TempDir(), "rootfs.caidx")
			args := append(tc.args, "--tmpdir", t.TempDir(), "--index-out", index, "tar:"+filepath.Join(dir, tc.tar))
			code, _, stderr := runCmd(t, args...)
			if code != tc.wantCode {
				t.Fatalf("mkimage %q: exit %d, stderr %q; want exit %d", args, code, stderr, tc.wantCode)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(stderr, w) {
					t.Errorf("mkimage %q: stderr %q lacks %q", args, stderr, w)
				}
			}
		})
	}
}
