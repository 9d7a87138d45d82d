package mkimage

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	dockerspec "github.com/moby/docker-image-spec/specs-go/v1"

	"github.com/bootfs/bootfs/internal/bootconfig"
	"github.com/bootfs/bootfs/internal/testenv"
)

// testDocker returns a client of the local engine, or skips t without one.
func testDocker(t *testing.T) *client.Client {
	t.Helper()
	c, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		testenv.Skip(t, "no Docker client: "+err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Ping(ctx); err != nil {
		c.Close()
		testenv.Skip(t, "no Docker engine answers: "+err.Error())
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// removeImage removes id when t ends.
func removeImage(t *testing.T, c *client.Client, id string) {
	t.Cleanup(func() {
		if _, err := c.ImageRemove(context.Background(), id, image.RemoveOptions{Force: true, PruneChildren: true}); err != nil {
			t.Logf("remove image %s: %v", id, err)
		}
	})
}

func uniqueTag(name string) string {
	return fmt.Sprintf("bootfs-test/%s:%d", name, time.Now().UnixNano())
}

// tinyTree writes a small root filesystem whose content depends on seed.
func tinyTree(t *testing.T, seed string) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range map[string]string{
		"etc/hostname": seed + "\n",
		"bin/data":     strings.Repeat(seed, 10000),
	} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// convertedInput converts a tiny tree and returns the boot image input
// for it, with src as the original image configuration.
func convertedInput(t *testing.T, seed, boot string, src *dockerspec.DockerOCIImageConfig, tags ...string) BootImageInput {
	t.Helper()
	var opts Options
	sum, err := convertTo(context.Background(), Source{Kind: "dir", Path: tinyTree(t, seed)}, t.TempDir(), opts)
	if err != nil {
		t.Fatalf("Convert() = %v", err)
	}
	cfg, err := NewBootConfig(sum, opts, "http://127.0.0.1:9", src)
	if err != nil {
		t.Fatal(err)
	}
	var idx bytes.Buffer
	if _, err := sum.Index.WriteTo(&idx); err != nil {
		t.Fatal(err)
	}
	toc, err := sum.TOC.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return BootImageInput{BootBinary: boot, Index: idx.Bytes(), TOC: toc, Config: cfg, Tags: tags}
}

// exportImage creates (never starts) a container of id and returns its
// root filesystem's regular files and directories by path.
func exportImage(t *testing.T, c *client.Client, id string) map[string]*tar.Header {
	t.Helper()
	ctx := context.Background()
	created, err := c.ContainerCreate(ctx, &container.Config{Image: id}, &container.HostConfig{NetworkMode: "none"}, nil, nil, "")
	if err != nil {
		t.Fatalf("create a container of %s: %v", id, err)
	}
	defer c.ContainerRemove(ctx, created.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
	rc, err := c.ContainerExport(ctx, created.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]*tar.Header{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(h.Name, ".bootfs") {
			data, _ := io.ReadAll(tr)
			h.PAXRecords = map[string]string{"content": string(data)}
			files[h.Name] = h
		}
	}
}

func TestBootImageDockerLoad(t *testing.T) {
	c := testDocker(t)
	ctx := context.Background()
	boot := testenv.LookPath(t, "busybox")
	bootBytes, err := os.ReadFile(boot)
	if err != nil {
		t.Fatal(err)
	}
	src := &dockerspec.DockerOCIImageConfig{}
	src.Entrypoint = []string{"/bin/sh"}
	src.Cmd = []string{"-c", "exit 3"}
	src.Env = []string{"PATH=/bin", "A=1"}
	src.User = "1000:1000"
	src.WorkingDir = "/w"
	src.Volumes = map[string]struct{}{"/data": {}}
	src.ExposedPorts = map[string]struct{}{"80/tcp": {}}
	src.Labels = map[string]string{"x": "y"}
	src.StopSignal = "SIGQUIT"
	src.Healthcheck = &dockerspec.HealthcheckConfig{Test: []string{"CMD", "true"}, Interval: 5 * time.Second, Retries: 2}

	// Image a streams through the API; image b goes through a file.
	tagA, tagB := uniqueTag("h6-a"), uniqueTag("h6-b")
	inA := convertedInput(t, "alpha", boot, src, tagA)
	infoA, err := buildAndLoad(ctx, c, inA)
	if err != nil {
		t.Fatalf("buildAndLoad() = %v", err)
	}
	removeImage(t, c, infoA.ImageID)

	inB := convertedInput(t, "bravo", boot, nil, tagB)
	file := filepath.Join(t.TempDir(), "b.tar")
	infoB, err := WriteBootImageFile(file, inB)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	idB, err := LoadBootImage(ctx, c, f)
	if err != nil {
		t.Fatalf("LoadBootImage(%s) = %v", file, err)
	}
	removeImage(t, c, idB)

	a, err := c.ImageInspect(ctx, tagA)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.ImageInspect(ctx, tagB)
	if err != nil {
		t.Fatal(err)
	}
	if a.ID != infoA.ImageID || b.ID != idB {
		t.Errorf("inspect IDs %s, %s; loads returned %s, %s", a.ID, b.ID, infoA.ImageID, idB)
	}
	if a.ID != infoA.ConfigDigest {
		t.Logf("engine image ID %s is not the config digest %s (containerd image store?)", a.ID, infoA.ConfigDigest)
	}
	if len(a.RootFS.Layers) != 2 || len(b.RootFS.Layers) != 2 || a.RootFS.Layers[0] != b.RootFS.Layers[0] || a.RootFS.Layers[1] == b.RootFS.Layers[1] {
		t.Errorf("RootFS.Layers = %q and %q, want two layers each with the first shared", a.RootFS.Layers, b.RootFS.Layers)
	}
	if a.RootFS.Layers[0] != infoA.Layers[0].DiffID || b.RootFS.Layers[1] != infoB.Layers[1].DiffID {
		t.Errorf("RootFS.Layers = %q, want the built diff IDs %+v", a.RootFS.Layers, infoA.Layers)
	}

	cfg := a.Config
	checks := []struct {
		name      string
		got, want any
	}{
		{"Entrypoint", cfg.Entrypoint, []string{"/.bootfs/boot", "--", "/bin/sh"}},
		{"Cmd", cfg.Cmd, src.Cmd},
		{"Env", cfg.Env, src.Env},
		{"User", cfg.User, src.User},
		{"WorkingDir", cfg.WorkingDir, "/w"},
		{"Volumes", sortedKeys(cfg.Volumes), []string{"/.bootfs/cache", "/.bootfs/upper", "/data"}},
		{"ExposedPorts", sortedKeys(cfg.ExposedPorts), []string{"80/tcp"}},
		{"Labels", cfg.Labels, map[string]string{"x": "y", LabelSourceImage: inA.Config.Source, LabelVersion: inA.Config.BootfsVersion}},
		{"StopSignal", cfg.StopSignal, "SIGQUIT"},
		{"Healthcheck", cfg.Healthcheck, src.Healthcheck},
		{"Architecture", a.Architecture + "/" + a.Os, "amd64/linux"},
	}
	for _, ch := range checks {
		if !reflect.DeepEqual(ch.got, ch.want) {
			t.Errorf("inspect %s: Config.%s = %#v, want %#v", tagA, ch.name, ch.got, ch.want)
		}
	}
	if got := b.Config.Entrypoint; !slices.Equal(got, []string{"/.bootfs/boot", "--"}) || b.Config.Cmd != nil {
		t.Errorf("inspect %s (no source config): Entrypoint %q Cmd %q", tagB, got, b.Config.Cmd)
	}

	// Layer 2 is the index, the TOC and the config, and little else.
	hist, err := c.ImageHistory(ctx, tagA)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != 2 {
		t.Fatalf("history has %d entries, want 2", len(hist))
	}
	payload := int64(len(inA.Index) + len(inA.TOC) + len(infoA.Config))
	if got := hist[0].Size; got < payload || got > payload+8192 {
		t.Errorf("layer 2 size %d, want about index+TOC+config = %d", got, payload)
	}
	if got := hist[1].Size; got != int64(len(bootBytes)) {
		t.Errorf("layer 1 size %d, want the boot binary's %d", got, len(bootBytes))
	}

	// The engine unpacked exactly what was packed.
	files := exportImage(t, c, tagA)
	for _, w := range []struct {
		name string
		mode int64
		data []byte
	}{
		{".bootfs/boot", 0o4755, bootBytes},
		{".bootfs/rootfs.caidx", 0o644, inA.Index},
		{".bootfs/rootfs.toc", 0o644, inA.TOC},
		{".bootfs/config.json", 0o644, infoA.Config},
		{".bootfs/cache/", 0o755, nil},
		{".bootfs/upper/", 0o755, nil},
		{".bootfs/lower/", 0o755, nil},
		{".bootfs/root/", 0o755, nil},
	} {
		h, ok := files[w.name]
		if !ok {
			t.Errorf("container of %s has no %s (has %v)", tagA, w.name, slices.Sorted(maps.Keys(files)))
			continue
		}
		if h.Mode&0o7777 != w.mode || h.Uid != 0 || h.Gid != 0 || h.PAXRecords["content"] != string(w.data) {
			t.Errorf("container file %s: mode %o owner %d:%d %d bytes, want %o root %d bytes", w.name, h.Mode, h.Uid, h.Gid, len(h.PAXRecords["content"]), w.mode, len(w.data))
		}
	}
	got, err := LoadBootConfig(infoA.Config)
	if err != nil {
		t.Fatal(err)
	}
	if got.Image.User != "1000:1000" || got.Image.WorkingDir != "/w" || got.Store != "http://127.0.0.1:9" {
		t.Errorf("config.json user %q workdir %q store %q", got.Image.User, got.Image.WorkingDir, got.Store)
	}
}

// TestBootImageDockerLoadFails checks that a load the engine rejects is an
// error: here a layer whose content does not match its diff ID.
func TestBootImageDockerLoadFails(t *testing.T) {
	c := testDocker(t)
	in := biInput(t, biBootBinary(t, 1000), bootconfig.Image{}, "index-MARKER", "toc", uniqueTag("h6-bad"))
	arch, info := biBuild(t, in)
	i := bytes.Index(arch, []byte("index-MARKER"))
	if i < 0 {
		t.Fatal("index not found in the archive")
	}
	arch[i] = 'X'
	id, err := LoadBootImage(context.Background(), c, bytes.NewReader(arch))
	if err == nil {
		removeImage(t, c, id)
		t.Fatalf("LoadBootImage(corrupt archive) = %s, nil; want an error", id)
	}
	t.Logf("LoadBootImage(corrupt archive) = %v", err)
	if _, err := c.ImageInspect(context.Background(), info.ConfigDigest); err == nil {
		removeImage(t, c, info.ConfigDigest)
		t.Errorf("the corrupt image is in the engine")
	}
}

// TestMakeBootImageFromDocker converts an image imported into the engine
// and loads its boot image, the whole mkimage SOURCE TARGET path.
func TestMakeBootImageFromDocker(t *testing.T) {
	c := testDocker(t)
	ctx := context.Background()
	boot := testenv.LookPath(t, "busybox")

	var rootfs bytes.Buffer
	tw := tar.NewWriter(&rootfs)
	for _, f := range []struct{ name, data string }{{"etc/hostname", "src\n"}, {"bin/x", "payload"}} {
		tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: time.Unix(1, 0)})
		tw.Write([]byte(f.data))
	}
	tw.Close()
	srcTag := uniqueTag("h6-src")
	rc, err := c.ImageImport(ctx, image.ImportSource{Source: &rootfs, SourceName: "-"}, srcTag, image.ImportOptions{
		Changes: []string{`ENTRYPOINT ["/bin/sh"]`, `CMD ["-c","exit 3"]`, "ENV A=1", "VOLUME /data", "USER 1000", "WORKDIR /w", "EXPOSE 80", "LABEL x=y"},
		// docker import of Docker 20.10 takes no STOPSIGNAL.
	})
	if err != nil {
		t.Fatalf("docker import: %v", err)
	}
	io.Copy(io.Discard, rc)
	rc.Close()
	srcInfo, err := c.ImageInspect(ctx, srcTag)
	if err != nil {
		t.Fatal(err)
	}
	removeImage(t, c, srcInfo.ID)

	var opts Options
	storeDir := t.TempDir()
	src, err := ParseSource(srcTag)
	if err != nil {
		t.Fatal(err)
	}
	sum, err := convertTo(ctx, src, storeDir, opts)
	if err != nil {
		t.Fatalf("Convert(%s) = %v", srcTag, err)
	}
	tag := uniqueTag("h6-boot")
	info, err := MakeBootImage(ctx, sum, opts, BootImageOptions{BootBinary: boot, Tags: []string{tag}})
	if err != nil {
		t.Fatalf("MakeBootImage() = %v", err)
	}
	removeImage(t, c, info.ImageID)
	got, err := c.ImageInspect(ctx, tag)
	if err != nil {
		t.Fatal(err)
	}
	cfg := got.Config
	if !slices.Equal(cfg.Entrypoint, []string{"/.bootfs/boot", "--", "/bin/sh"}) || !slices.Equal(cfg.Cmd, []string{"-c", "exit 3"}) ||
		cfg.User != "1000" || cfg.WorkingDir != "/w" || cfg.Labels[LabelSourceImage] != srcInfo.ID || cfg.Labels["x"] != "y" ||
		!slices.Contains(cfg.Env, "A=1") {
		t.Errorf("boot image config = %+v", cfg)
	}
	if !reflect.DeepEqual(sortedKeys(cfg.Volumes), []string{"/.bootfs/cache", "/.bootfs/upper", "/data"}) || !reflect.DeepEqual(sortedKeys(cfg.ExposedPorts), []string{"80/tcp"}) {
		t.Errorf("Volumes %v ExposedPorts %v", cfg.Volumes, cfg.ExposedPorts)
	}
	bc, err := LoadBootConfig(info.Config)
	if err != nil {
		t.Fatal(err)
	}
	want := bootconfig.Image{Entrypoint: []string{"/bin/sh"}, Cmd: []string{"-c", "exit 3"}, Env: srcInfo.Config.Env, User: "1000", WorkingDir: "/w",
		Volumes: []string{"/data"}, ExposedPorts: []string{"80/tcp"}, Labels: map[string]string{"x": "y"}}
	if !reflect.DeepEqual(bc.Image, want) || bc.SourceImageID != srcInfo.ID || bc.Store != storeDir || bc.ArchiveSize != sum.Bytes {
		t.Errorf("config.json = %+v, want image %+v from %s", bc, want, srcInfo.ID)
	}
}
