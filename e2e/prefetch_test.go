package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
)

// TestPrefetchFlow goes the whole way of a prefetch list: a run of the
// converted image records what the workload reads (BOOTFS_RECORD),
// mkimage --prefetch turns that into the boot config's chunk list, and a
// run of the new image with an empty cache fetches exactly those chunks,
// the list covering everything the workload reads.
func TestPrefetchFlow(t *testing.T) {
	e := setup(t)
	work := []string{"md5sum", "/bin/busybox", "/etc/os-release"}
	dir := t.TempDir()
	rec := e.run(t, true, []string{"-v", dir + ":/rec", "-e", "BOOTFS_RECORD=/rec/list"}, e.bbBoot, work...)
	if rec.code != 0 {
		t.Fatalf("recording run: exit %d; stderr: %s", rec.code, rec.stderr)
	}
	list := filepath.Join(dir, "list")
	if b, err := os.ReadFile(list); err != nil || len(b) == 0 {
		t.Fatalf("recorded list: %q, %v", b, err)
	}

	target := e.prefix + "/bb:prefetch"
	if _, err := e.convert(e.bb, target, e.store, "--prefetch", list); err != nil {
		t.Fatal(err)
	}

	prefetched := regexp.MustCompile(`msg=prefetched chunks=(\d+) of=(\d+)`)
	runStats := func(image string) (stats, []string, result) {
		t.Helper()
		sdir := t.TempDir()
		got := e.run(t, true, []string{"-v", sdir + ":/stats", "-e", "BOOTFS_STATS=/stats/s.json", "-e", "BOOTFS_LOG=debug"}, image, work...)
		if got.code != 0 || got.stdout != rec.stdout {
			t.Fatalf("run of %s: exit %d, stdout %q, want %q; stderr: %s", image, got.code, got.stdout, rec.stdout, got.stderr)
		}
		return readStats(t, filepath.Join(sdir, "s.json")), prefetched.FindStringSubmatch(got.stderr), got
	}

	if _, m, _ := runStats(e.bbBoot); m != nil {
		t.Errorf("the image converted without --prefetch logged %q", m[0])
	}
	s, m, got := runStats(target)
	if m == nil {
		t.Fatalf("no prefetch in the debug log of %s:\n%s", target, got.stderr)
	}
	n, _ := strconv.Atoi(m[1])
	of, _ := strconv.Atoi(m[2])
	if of == 0 || n != of {
		t.Errorf("prefetched %d of %d chunks, want all of a non-empty list", n, of)
	}
	if s.ChunksFetched != uint64(of) || s.Errors != 0 {
		t.Errorf("stats %+v: want exactly the %d listed chunks fetched (the list covers the run), no errors", s, of)
	}
	t.Logf("prefetch list of %d chunks; run stats %+v", of, s)
}
