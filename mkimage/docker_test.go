package mkimage

import (
	"archive/tar"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/internal/testenv"
)

// TestConvertDockerMatchesExport converts an image through the Engine API
// and checks, with the real casync, that extracting the index gives
// exactly what docker export of the image gives; and that the export
// container is gone afterwards, also when the conversion fails.
func TestConvertDockerMatchesExport(t *testing.T) {
	c := testDocker(t)
	casyncBin := testenv.LookPath(t, "casync")
	testenv.RequireRoot(t)
	ctx := context.Background()
	tmp := t.TempDir()
	root := filepath.Join(tmp, "root")
	writeTree(t, root)
	tag, info := importTree(t, c, root, "convert-src")
	src := checkExportMatches(t, casyncBin, tag, info)
	store := filepath.Join(tmp, "store")
	convert(t, src, store, Options{})

	time.Sleep(time.Second) // a later export: Docker's mount points get later times
	again := convert(t, src, store, Options{})
	if again.NewChunks != 0 {
		t.Errorf("second conversion of %s stored %d new chunks, want 0", tag, again.NewChunks)
	}

	// A failing conversion (the store cannot be created) removes its
	// export container too.
	_, err := convertTo(ctx, src, "/proc/bootfs-no-store", Options{})
	if err == nil {
		t.Fatal("Convert into /proc = nil error")
	}
	assertNoExportContainers(t, tag)

	_, err = Convert(ctx, Source{Kind: "docker", Path: "bootfs-test/no-such-image:1"}, nil, Options{})
	if err == nil || !strings.Contains(err.Error(), "--pull") {
		t.Errorf("Convert(missing image) = %v, want an error that suggests --pull", err)
	}
}

// TestConvertDebianMatchesExport is TestConvertDockerMatchesExport for a
// debootstrapped Debian minbase image (bench/rootfs.sh, cached).
func TestConvertDebianMatchesExport(t *testing.T) {
	c := testDocker(t)
	casyncBin := testenv.LookPath(t, "casync")
	testenv.LookPath(t, "debootstrap")
	testenv.RequireRoot(t)
	out, err := exec.Command("../bench/rootfs.sh", "min", "").Output()
	if err != nil {
		t.Fatalf("bench/rootfs.sh min: %v", err)
	}
	tag, info := importTree(t, c, strings.TrimSpace(string(out)), "debian-src")
	checkExportMatches(t, casyncBin, tag, info)
}

// importTree imports the directory root as an image and returns its tag
// and inspection; the image is removed at the end of t.
func importTree(t *testing.T, c *client.Client, root, name string) (string, image.InspectResponse) {
	t.Helper()
	tag := uniqueTag(name)
	imp := exec.Command("sh", "-c", `tar --format=posix --numeric-owner --xattrs --xattrs-include='*' -C "$1" -c . | docker import -c 'CMD ["/bin/tool"]' - "$2"`, "sh", root, tag)
	if out, err := imp.CombinedOutput(); err != nil {
		t.Fatalf("docker import: %v\n%s", err, out)
	}
	info, err := c.ImageInspect(context.Background(), tag)
	if err != nil {
		t.Fatal(err)
	}
	removeImage(t, c, info.ID)
	return tag, info
}

// checkExportMatches converts the image tag into a fresh store and checks
// that casync extract of the index gives what docker export gives, as
// casync digest sees it: content, types, modes, owners, mtimes, xattrs.
func checkExportMatches(t *testing.T, casyncBin, tag string, info image.InspectResponse) Source {
	t.Helper()
	tmp := t.TempDir()
	store := filepath.Join(tmp, "store")
	index := filepath.Join(tmp, "rootfs.caidx")
	src, err := ParseSource(tag)
	if err != nil {
		t.Fatal(err)
	}
	sum := convert(t, src, store, Options{IndexOut: index})
	if sum.SourceID != info.ID {
		t.Errorf("Summary.SourceID = %s, want %s", sum.SourceID, info.ID)
	}
	assertNoExportContainers(t, tag)

	// What docker export gives, unpacked as root.
	exported := filepath.Join(tmp, "exported")
	os.MkdirAll(exported, 0o755)
	exp := exec.Command("sh", "-c", `id=$(docker create "$1" /x) && docker export "$id" | tar --numeric-owner --xattrs --xattrs-include='*' -p -C "$2" -x; rc=$?; docker rm -f "$id" >/dev/null; exit $rc`, "sh", tag, exported)
	if out, err := exp.CombinedOutput(); err != nil {
		t.Fatalf("docker export: %v\n%s", err, out)
	}
	// Docker stamps the mount points it adds with the time of export;
	// mkimage stamps them no later than the image's creation.
	limit := imageCreated(&info)
	hook := mountPointTimes(&info)
	for _, p := range dockerMountPoints {
		name := filepath.Join(exported, p)
		var st unix.Stat_t
		if unix.Lstat(name, &st) != nil {
			continue
		}
		h := &tar.Header{Name: p, ModTime: time.Unix(st.Mtim.Unix())}
		hook(h)
		if !h.ModTime.Equal(limit) {
			continue
		}
		ts := []unix.Timespec{unix.NsecToTimespec(limit.UnixNano()), unix.NsecToTimespec(limit.UnixNano())}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
	// docker export has no entry for the root; the encoder gives an
	// implied directory mode 0755, owner 0 and mtime 0.
	if err := os.Chtimes(exported, time.Unix(0, 0), time.Unix(0, 0)); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(tmp, "out")
	run(t, casyncBin, "extract", "--store="+store, index, out)
	digestArgs := append([]string{"digest"}, casync.CasyncMakeArgs...)
	want := run(t, casyncBin, append(digestArgs, exported)...)
	got := run(t, casyncBin, append(digestArgs, out)...)
	if got != want {
		t.Errorf("casync digest of the extracted index = %s, want %s (docker export's)", got, want)
		mtreeArgs := append([]string{"mtree"}, casync.CasyncMakeArgs...)
		a := strings.Split(run(t, casyncBin, append(mtreeArgs, exported)...), "\n")
		b := strings.Split(run(t, casyncBin, append(mtreeArgs, out)...), "\n")
		for i := 0; i < len(a) && i < len(b); i++ {
			if a[i] != b[i] {
				t.Logf("export:    %s\nextracted: %s", a[i], b[i])
			}
		}
	}

	return src
}

func assertNoExportContainers(t *testing.T, image string) {
	t.Helper()
	c := testDocker(t)
	list, err := c.ContainerList(context.Background(), container.ListOptions{
		All:     true,
		Filters: filters.NewArgs(filters.Arg("label", "org.bootfs.mkimage.export"), filters.Arg("ancestor", image)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 0 {
		t.Errorf("%d export containers left behind", len(list))
	}
}
