package mkimage

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	dockerspec "github.com/moby/docker-image-spec/specs-go/v1"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/bootfs/bootfs/internal/bootconfig"
)

// biBootBinary writes a fake boot binary of n pseudo-random bytes.
func biBootBinary(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>9)
	}
	p := filepath.Join(t.TempDir(), "boot")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// biConfig is a valid config as NewBootConfig would make it.
func biConfig(im bootconfig.Image) *BootConfig {
	return &BootConfig{
		Version:       bootconfig.Version,
		BootfsVersion: "test",
		Source:        "example/app:1",
		SourceImageID: "sha256:" + strings.Repeat("ab", 32),
		Store:         "http://127.0.0.1:1",
		Chunking:      bootconfig.Chunking{Chunker: "buzhash", Digest: "sha512-256", Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10},
		ArchiveSize:   1 << 20,
		Image:         im,
	}
}

func biInput(t testing.TB, boot string, im bootconfig.Image, index, toc string, tags ...string) BootImageInput {
	return BootImageInput{
		BootBinary: boot,
		Index:      []byte(index),
		TOC:        []byte(toc),
		Config:     biConfig(im),
		Tags:       tags,
	}
}

func biBuild(t testing.TB, in BootImageInput) ([]byte, BootImageInfo) {
	t.Helper()
	var buf bytes.Buffer
	info, err := BuildBootImage(&buf, in)
	if err != nil {
		t.Fatalf("BuildBootImage() = %v", err)
	}
	if info.ArchiveSize != int64(buf.Len()) {
		t.Errorf("BuildBootImage() ArchiveSize = %d, wrote %d bytes", info.ArchiveSize, buf.Len())
	}
	return buf.Bytes(), info
}

// biArchive is a boot image archive read back: its files by name, in order.
type biArchive struct {
	names []string
	files map[string][]byte
	hdrs  map[string]*tar.Header
}

func readTar(t testing.TB, b []byte) biArchive {
	t.Helper()
	a := biArchive{files: map[string][]byte{}, hdrs: map[string]*tar.Header{}}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return a
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read tar entry %s: %v", h.Name, err)
		}
		a.names = append(a.names, h.Name)
		a.files[h.Name] = data
		a.hdrs[h.Name] = h
	}
}

// parts returns the docker-save manifest and the image config and layers
// it points at.
func (a biArchive) parts(t testing.TB) (dockerSaveManifest, dockerspec.DockerOCIImage, [][]byte) {
	t.Helper()
	var save []dockerSaveManifest
	if err := json.Unmarshal(a.files["manifest.json"], &save); err != nil || len(save) != 1 {
		t.Fatalf("manifest.json = %s, %v; want one image", a.files["manifest.json"], err)
	}
	var img dockerspec.DockerOCIImage
	if err := json.Unmarshal(a.files[save[0].Config], &img); err != nil {
		t.Fatalf("image config %s: %v", save[0].Config, err)
	}
	var layers [][]byte
	for _, l := range save[0].Layers {
		b, ok := a.files[l]
		if !ok {
			t.Fatalf("manifest.json names layer %s, which is not in the archive", l)
		}
		layers = append(layers, b)
	}
	return save[0], img, layers
}

func TestBootLayerIdenticalAcrossImages(t *testing.T) {
	boot := biBootBinary(t, 100_000)
	a, ai := biBuild(t, biInput(t, boot, bootconfig.Image{Cmd: []string{"sh"}}, "index-a", "toc-a", "a:1"))
	b, bi := biBuild(t, biInput(t, boot, bootconfig.Image{Entrypoint: []string{"/x"}, User: "1"}, "index-bb", "toc-bbb", "b:2", "c"))
	_, _, la := readTar(t, a).parts(t)
	_, _, lb := readTar(t, b).parts(t)
	if !bytes.Equal(la[0], lb[0]) {
		t.Errorf("layer 1 differs between two images built from the same boot binary")
	}
	if ai.Layers[0] != bi.Layers[0] {
		t.Errorf("layer 1 info = %+v and %+v, want equal", ai.Layers[0], bi.Layers[0])
	}
	if ai.Layers[1] == bi.Layers[1] || ai.ConfigDigest == bi.ConfigDigest {
		t.Errorf("layer 2 or config equal for different inputs: %+v, %+v", ai, bi)
	}
	// The whole archive is reproducible.
	a2, _ := biBuild(t, biInput(t, boot, bootconfig.Image{Cmd: []string{"sh"}}, "index-a", "toc-a", "a:1"))
	if !bytes.Equal(a, a2) {
		t.Errorf("two builds of the same input differ")
	}
}

func TestBootImageLayers(t *testing.T) {
	boot := biBootBinary(t, 3000)
	bootBytes, _ := os.ReadFile(boot)
	in := biInput(t, boot, bootconfig.Image{Cmd: []string{"sh"}}, strings.Repeat("i", 5000), "the toc")
	in.Passwd, in.Group = []byte("root:x:0:0:root:/root:/bin/sh\n"), []byte("root:x:0:\nwheel:x:10:root\n")
	arch, info := biBuild(t, in)
	_, img, layers := readTar(t, arch).parts(t)
	if len(layers) != 2 || len(info.Layers) != 2 {
		t.Fatalf("got %d layers (info %d), want 2", len(layers), len(info.Layers))
	}
	for i, l := range layers {
		sum := sha256.Sum256(l)
		diffID := "sha256:" + hex.EncodeToString(sum[:])
		if got := img.RootFS.DiffIDs[i].String(); got != diffID || info.Layers[i].DiffID != diffID {
			t.Errorf("layer %d: diff_id %s, info %s, want sha256 of the tar %s", i+1, got, info.Layers[i].DiffID, diffID)
		}
		if info.Layers[i].Size != int64(len(l)) {
			t.Errorf("layer %d: info size %d, tar is %d bytes", i+1, info.Layers[i].Size, len(l))
		}
	}

	cfg, err := LoadBootConfig(info.Config)
	if err != nil {
		t.Fatalf("LoadBootConfig(packed config) = %v", err)
	}
	type entry struct {
		name string
		mode int64
		typ  byte
		data []byte
	}
	for _, tc := range []struct {
		name  string
		layer []byte
		want  []entry
	}{
		{"boot layer", layers[0], []entry{
			{".bootfs/", 0o755, tar.TypeDir, nil},
			{".bootfs/boot", 0o4755, tar.TypeReg, bootBytes},
		}},
		{"index layer", layers[1], []entry{
			{".bootfs/cache/", 0o755, tar.TypeDir, nil},
			{".bootfs/config.json", 0o644, tar.TypeReg, info.Config},
			{".bootfs/lower/", 0o755, tar.TypeDir, nil},
			{".bootfs/root/", 0o755, tar.TypeDir, nil},
			{".bootfs/rootfs.caidx", 0o644, tar.TypeReg, in.Index},
			{".bootfs/rootfs.toc", 0o644, tar.TypeReg, in.TOC},
			{".bootfs/upper/", 0o755, tar.TypeDir, nil},
			{"etc/", 0o755, tar.TypeDir, nil},
			{"etc/group", 0o644, tar.TypeReg, in.Group},
			{"etc/passwd", 0o644, tar.TypeReg, in.Passwd},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := readTar(t, tc.layer)
			if want := len(tc.want); len(a.names) != want {
				t.Fatalf("entries = %q, want %d", a.names, want)
			}
			for i, w := range tc.want {
				h := a.hdrs[a.names[i]]
				if h.Name != w.name || h.Mode != w.mode || h.Typeflag != w.typ {
					t.Errorf("entry %d = %s %o %c, want %s %o %c", i, h.Name, h.Mode, h.Typeflag, w.name, w.mode, w.typ)
				}
				if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" || !h.ModTime.Equal(time.Unix(0, 0)) || h.Format != tar.FormatUSTAR {
					t.Errorf("entry %s: owner %d:%d %q:%q mtime %v format %v, want 0:0, no names, epoch, USTAR", h.Name, h.Uid, h.Gid, h.Uname, h.Gname, h.ModTime, h.Format)
				}
				if !bytes.Equal(a.files[h.Name], w.data) {
					t.Errorf("entry %s: %d bytes, want %d", h.Name, len(a.files[h.Name]), len(w.data))
				}
			}
		})
	}
	if cfg.Index.Digest != sha256Digest(in.Index) || cfg.Index.Size != 5000 || cfg.TOC.Digest != sha256Digest(in.TOC) || cfg.TOC.Size != 7 {
		t.Errorf("config index %+v toc %+v, want the digests and sizes of the packed files", cfg.Index, cfg.TOC)
	}
	if in.Config.Index.Digest != "" {
		t.Errorf("BuildBootImage modified its input config")
	}
}

// TestBootImageArchiveLayout checks the OCI side of the archive: every
// blob is named by its digest, index.json points at the manifest, and the
// manifest at the config and the layers docker's manifest.json names.
func TestBootImageArchiveLayout(t *testing.T) {
	arch, info := biBuild(t, biInput(t, biBootBinary(t, 10), bootconfig.Image{}, "i", "t", "app", "registry.example:5000/x/y:v1"))
	a := readTar(t, arch)
	for name, b := range a.files {
		if hexPart, ok := strings.CutPrefix(name, "blobs/sha256/"); ok && hexPart != "" {
			if got := sha256Digest(b); got != "sha256:"+hexPart {
				t.Errorf("blob %s has digest %s", name, got)
			}
		}
	}
	if got := string(a.files["oci-layout"]); got != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout = %s", got)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(a.files["index.json"], &idx); err != nil {
		t.Fatal(err)
	}
	var refs []string
	for _, d := range idx.Manifests {
		if d.Digest.String() != info.ManifestDigest || d.Platform == nil || d.Platform.OS != "linux" || d.Platform.Architecture != "amd64" {
			t.Errorf("index.json manifest %+v, want %s for linux/amd64", d, info.ManifestDigest)
		}
		refs = append(refs, d.Annotations["io.containerd.image.name"]+" "+d.Annotations[ocispec.AnnotationRefName])
	}
	wantRefs := []string{"docker.io/library/app:latest latest", "registry.example:5000/x/y:v1 v1"}
	if !reflect.DeepEqual(refs, wantRefs) {
		t.Errorf("index.json refs = %q, want %q", refs, wantRefs)
	}
	var man ocispec.Manifest
	if err := json.Unmarshal(a.files["blobs/sha256/"+strings.TrimPrefix(info.ManifestDigest, "sha256:")], &man); err != nil {
		t.Fatal(err)
	}
	save, _, _ := a.parts(t)
	if want := []string{"app:latest", "registry.example:5000/x/y:v1"}; !reflect.DeepEqual(save.RepoTags, want) || !reflect.DeepEqual(info.Tags, want) {
		t.Errorf("RepoTags = %q, info.Tags = %q, want %q", save.RepoTags, info.Tags, want)
	}
	if "blobs/sha256/"+man.Config.Digest.Encoded() != save.Config || man.Config.Digest.String() != info.ConfigDigest || info.ImageID != info.ConfigDigest {
		t.Errorf("manifest config %s, manifest.json config %s, info %+v", man.Config.Digest, save.Config, info)
	}
	for i, l := range man.Layers {
		if "blobs/sha256/"+l.Digest.Encoded() != save.Layers[i] || l.MediaType != ocispec.MediaTypeImageLayer || l.Size != info.Layers[i].Size {
			t.Errorf("manifest layer %d = %+v, manifest.json has %s", i, l, save.Layers[i])
		}
	}
	for _, h := range a.hdrs {
		if h.Uid != 0 || !h.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("archive entry %s: uid %d mtime %v", h.Name, h.Uid, h.ModTime)
		}
	}
}

func TestBootImageConfigMapping(t *testing.T) {
	boot := biBootBinary(t, 10)
	hc := &bootconfig.Healthcheck{Test: []string{"CMD", "true"}, Interval: time.Second, Retries: 2}
	for _, tc := range []struct {
		name           string
		src            bootconfig.Image
		wantEntrypoint []string
		wantVolumes    []string
	}{
		{"entrypoint and cmd",
			bootconfig.Image{Entrypoint: []string{"/entry.sh", "-x"}, Cmd: []string{"serve"}},
			[]string{"/.bootfs/boot", "--", "/entry.sh", "-x"}, []string{"/.bootfs/cache", "/.bootfs/upper"}},
		{"cmd only",
			bootconfig.Image{Cmd: []string{"/bin/sh", "-c", "echo hi"}},
			[]string{"/.bootfs/boot", "--"}, []string{"/.bootfs/cache", "/.bootfs/upper"}},
		{"nothing",
			bootconfig.Image{},
			[]string{"/.bootfs/boot", "--"}, []string{"/.bootfs/cache", "/.bootfs/upper"}},
		{"volumes, ports, env, labels",
			bootconfig.Image{Cmd: []string{"db"}, Env: []string{"A=1", "PATH=/bin"}, Volumes: []string{"/var/lib/db", "/data"},
				ExposedPorts: []string{"5432/tcp"}, Labels: map[string]string{"maintainer": "me"}, StopSignal: "SIGINT", Healthcheck: hc},
			[]string{"/.bootfs/boot", "--"}, []string{"/.bootfs/cache", "/.bootfs/upper", "/data", "/var/lib/db"}},
		{"user and workdir go to both",
			bootconfig.Image{Cmd: []string{"id"}, User: "1000:1000", WorkingDir: "/home/u"},
			[]string{"/.bootfs/boot", "--"}, []string{"/.bootfs/cache", "/.bootfs/upper"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			arch, info := biBuild(t, biInput(t, boot, tc.src, "i", "t"))
			_, img, _ := readTar(t, arch).parts(t)
			c := img.Config
			if !reflect.DeepEqual(c.Entrypoint, tc.wantEntrypoint) {
				t.Errorf("Entrypoint = %q, want %q", c.Entrypoint, tc.wantEntrypoint)
			}
			if !slices.Equal(c.Cmd, tc.src.Cmd) || !slices.Equal(c.Env, tc.src.Env) {
				t.Errorf("Cmd, Env = %q, %q, want %q, %q", c.Cmd, c.Env, tc.src.Cmd, tc.src.Env)
			}
			// Docker starts boot, docker exec and health checks as the
			// original's USER; boot is setuid root for its mounts.
			if c.User != tc.src.User || c.WorkingDir != tc.src.WorkingDir {
				t.Errorf("User, WorkingDir = %q, %q, want %q, %q", c.User, c.WorkingDir, tc.src.User, tc.src.WorkingDir)
			}
			if got := sortedKeys(c.Volumes); !reflect.DeepEqual(got, tc.wantVolumes) {
				t.Errorf("Volumes = %q, want %q", got, tc.wantVolumes)
			}
			if got := sortedKeys(c.ExposedPorts); !slices.Equal(got, tc.src.ExposedPorts) {
				t.Errorf("ExposedPorts = %q, want %q", got, tc.src.ExposedPorts)
			}
			wantLabels := map[string]string{LabelSourceImage: "sha256:" + strings.Repeat("ab", 32), LabelVersion: "test"}
			for k, v := range tc.src.Labels {
				wantLabels[k] = v
			}
			if !reflect.DeepEqual(c.Labels, wantLabels) {
				t.Errorf("Labels = %q, want %q", c.Labels, wantLabels)
			}
			if c.StopSignal != tc.src.StopSignal {
				t.Errorf("StopSignal = %q, want %q", c.StopSignal, tc.src.StopSignal)
			}
			if (c.Healthcheck == nil) != (tc.src.Healthcheck == nil) ||
				c.Healthcheck != nil && (!slices.Equal(c.Healthcheck.Test, hc.Test) || c.Healthcheck.Interval != hc.Interval || c.Healthcheck.Retries != hc.Retries) {
				t.Errorf("Healthcheck = %+v, want %+v", c.Healthcheck, tc.src.Healthcheck)
			}
			if img.OS != "linux" || img.Architecture != "amd64" || img.Created != nil || len(img.History) != 2 {
				t.Errorf("os/arch %s/%s created %v history %d, want linux/amd64, none, 2", img.OS, img.Architecture, img.Created, len(img.History))
			}
			// config.json keeps the original configuration as it was.
			cfg, err := LoadBootConfig(info.Config)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.src
			want.Volumes = sortedKeys(set(tc.src.Volumes))
			if !reflect.DeepEqual(cfg.Image, want) {
				t.Errorf("config.json image = %+v, want %+v", cfg.Image, want)
			}
		})
	}
}

func TestBootImagePlatformAndCreated(t *testing.T) {
	in := biInput(t, biBootBinary(t, 10), bootconfig.Image{}, "i", "t")
	in.Platform = Platform{Architecture: "arm64", OS: "linux", Variant: "v8"}
	in.Created = time.Date(2024, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 3600))
	arch, _ := biBuild(t, in)
	_, img, _ := readTar(t, arch).parts(t)
	if img.Architecture != "arm64" || img.Variant != "v8" || img.Created == nil || !img.Created.Equal(in.Created) || img.History[0].Created == nil {
		t.Errorf("image config = %+v, want arm64/v8 created %v", img.Image, in.Created)
	}
}

func TestBuildBootImageRejects(t *testing.T) {
	boot := biBootBinary(t, 10)
	for _, tc := range []struct {
		name string
		edit func(*BootImageInput)
		want string
	}{
		{"no config", func(in *BootImageInput) { in.Config = nil }, "no config"},
		{"empty index", func(in *BootImageInput) { in.Index = nil }, "empty index"},
		{"missing boot binary", func(in *BootImageInput) { in.BootBinary = filepath.Join(t.TempDir(), "nope") }, "no such file"},
		{"boot binary is a dir", func(in *BootImageInput) { in.BootBinary = t.TempDir() }, "not a non-empty regular file"},
		{"digest tag", func(in *BootImageInput) { in.Tags = []string{"app@sha256:" + strings.Repeat("a", 64)} }, "digest"},
		{"bad tag", func(in *BootImageInput) { in.Tags = []string{"Bad Tag"} }, "Bad Tag"},
		{"invalid config", func(in *BootImageInput) { in.Config.Chunking.Chunker = "x" }, "chunking.chunker"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := biInput(t, boot, bootconfig.Image{}, "i", "t")
			tc.edit(&in)
			var buf bytes.Buffer
			_, err := BuildBootImage(&buf, in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("BuildBootImage() = %v, want an error mentioning %q", err, tc.want)
			}
			if buf.Len() != 0 {
				t.Errorf("BuildBootImage() wrote %d bytes before failing", buf.Len())
			}
		})
	}
}

func TestCopyFileDetectsChange(t *testing.T) {
	boot := biBootBinary(t, 100)
	for _, size := range []int64{99, 101} {
		if err := copyFile(io.Discard, boot, size); err == nil || !strings.Contains(err.Error(), "changed") {
			t.Errorf("copyFile(100-byte file, %d) = %v, want a 'changed' error", size, err)
		}
	}
	if err := copyFile(io.Discard, boot, 100); err != nil {
		t.Errorf("copyFile(100-byte file, 100) = %v", err)
	}
}

func TestWriteBootImageFile(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "img.tar")
	in := biInput(t, biBootBinary(t, 10), bootconfig.Image{}, "i", "t")
	bad := in
	bad.BootBinary = filepath.Join(dir, "missing")
	if _, err := WriteBootImageFile(name, bad); err == nil {
		t.Fatal("WriteBootImageFile() with a missing boot binary succeeded")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("a failed WriteBootImageFile left %v", ents)
	}
	info, err := WriteBootImageFile(name, in)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := biBuild(t, in)
	if !bytes.Equal(got, want) || info.ArchiveSize != int64(len(want)) {
		t.Errorf("file holds %d bytes (info %d), want the %d bytes BuildBootImage writes", len(got), info.ArchiveSize, len(want))
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory holds %v, want only img.tar", ents)
	}
}

func TestParseOutput(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
		ok             bool
	}{
		{"file", "docker-archive:/tmp/x.tar", "/tmp/x.tar", true},
		{"relative", "docker-archive:x.tar", "x.tar", true},
		{"no file", "docker-archive:", "", false},
		{"other transport", "oci:/tmp/x", "", false},
		{"bare path", "/tmp/x.tar", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseOutput(tc.in)
			if got != tc.want || (err == nil) != tc.ok {
				t.Errorf("ParseOutput(%q) = %q, %v, want %q, ok=%v", tc.in, got, err, tc.want, tc.ok)
			}
		})
	}
}

func TestParseLoadOutput(t *testing.T) {
	for _, tc := range []struct {
		name      string
		out       string
		ids, refs []string
		err       string
	}{
		{"untagged", `{"stream":"Loaded image ID: sha256:abc\n"}`, []string{"sha256:abc"}, nil, ""},
		{"tagged", `{"stream":"Loaded image: app:latest\n"}` + "\r\n" + `{"stream":"Loaded image: app:v2\n"}`, nil, []string{"app:latest", "app:v2"}, ""},
		{"progress then error", `{"status":"Loading layer","progressDetail":{"current":1,"total":2}}{"errorDetail":{"message":"invalid diffID"},"error":"invalid diffID"}`, nil, nil, "invalid diffID"},
		{"old error field", `{"error":"no space left"}`, nil, nil, "no space left"},
		{"plain text", "Loaded image: app:latest\n", nil, []string{"app:latest"}, ""},
		{"truncated json", `{"stream":"Loaded`, nil, nil, "reply"},
		{"empty", "", nil, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ids, refs, err := parseLoadOutput(strings.NewReader(tc.out))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("parseLoadOutput(%q) = %v, want an error mentioning %q", tc.out, err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(ids, tc.ids) || !slices.Equal(refs, tc.refs) {
				t.Errorf("parseLoadOutput(%q) = %q, %q, %v, want %q, %q", tc.out, ids, refs, err, tc.ids, tc.refs)
			}
		})
	}
}

// fakeLoader answers a load with a fixed reply, after reading the archive.
type fakeLoader struct {
	reply   string
	err     error
	read    int64
	inspect map[string]string
}

func (f *fakeLoader) ImageLoad(ctx context.Context, r io.Reader, _ ...client.ImageLoadOption) (image.LoadResponse, error) {
	n, err := io.Copy(io.Discard, r)
	f.read = n
	if err != nil {
		return image.LoadResponse{}, err
	}
	if f.err != nil {
		return image.LoadResponse{}, f.err
	}
	return image.LoadResponse{Body: io.NopCloser(strings.NewReader(f.reply)), JSON: true}, nil
}

func (f *fakeLoader) ImageInspect(ctx context.Context, ref string, _ ...client.ImageInspectOption) (image.InspectResponse, error) {
	id, ok := f.inspect[ref]
	if !ok {
		return image.InspectResponse{}, errors.New("no such image")
	}
	return image.InspectResponse{ID: id}, nil
}

func TestLoadBootImageFake(t *testing.T) {
	ctx := context.Background()
	in := biInput(t, biBootBinary(t, 10), bootconfig.Image{}, "i", "t", "app:x")
	for _, tc := range []struct {
		name    string
		loader  *fakeLoader
		wantID  string
		wantErr string
	}{
		{"tagged", &fakeLoader{reply: `{"stream":"Loaded image: app:x\n"}`, inspect: map[string]string{"app:x": "sha256:1"}}, "sha256:1", ""},
		{"untagged", &fakeLoader{reply: `{"stream":"Loaded image ID: sha256:2\n"}`}, "sha256:2", ""},
		{"engine error", &fakeLoader{reply: `{"errorDetail":{"message":"boom"}}`}, "", "boom"},
		{"nothing loaded", &fakeLoader{reply: `{"stream":"\n"}`}, "", "no loaded image"},
		{"request fails", &fakeLoader{err: errors.New("connection reset")}, "", "connection reset"},
		{"tag vanished", &fakeLoader{reply: `{"stream":"Loaded image: app:x\n"}`}, "", "inspect the loaded image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, err := buildAndLoad(ctx, tc.loader, in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("buildAndLoad() = %+v, %v, want an error mentioning %q", info, err, tc.wantErr)
				}
				return
			}
			if err != nil || info.ImageID != tc.wantID {
				t.Fatalf("buildAndLoad() = %+v, %v, want image %s", info, err, tc.wantID)
			}
			if tc.loader.read != info.ArchiveSize {
				t.Errorf("the engine read %d bytes of a %d-byte archive", tc.loader.read, info.ArchiveSize)
			}
		})
	}
	// A build that fails reports the build's error, not the load's.
	bad := in
	bad.BootBinary = filepath.Join(t.TempDir(), "missing")
	if _, err := buildAndLoad(ctx, &fakeLoader{reply: `{"stream":"Loaded image: app:x\n"}`}, bad); err == nil || !strings.Contains(err.Error(), "boot binary") {
		t.Errorf("buildAndLoad() with a missing boot binary = %v, want the boot binary error", err)
	}
}

func BenchmarkBuildBootImage(b *testing.B) {
	in := biInput(b, biBootBinary(b, 8<<20), bootconfig.Image{Cmd: []string{"sh"}}, strings.Repeat("i", 1<<20), strings.Repeat("t", 1<<20))
	var size int64
	b.ReportAllocs()
	for b.Loop() {
		info, err := BuildBootImage(io.Discard, in)
		if err != nil {
			b.Fatal(err)
		}
		size = info.ArchiveSize
	}
	b.SetBytes(size)
}

// FuzzParseLoadOutput checks that no engine reply makes the parser panic,
// and that a reply it accepts names only what its lines say.
func FuzzParseLoadOutput(f *testing.F) {
	f.Add(`{"stream":"Loaded image ID: sha256:abc\n"}`)
	f.Add(`{"stream":"Loaded image: app:latest\n"}{"errorDetail":{"message":"x"}}`)
	f.Add("Loaded image: a:b\nLoaded image ID: c\n")
	f.Fuzz(func(t *testing.T, out string) {
		ids, refs, err := parseLoadOutput(strings.NewReader(out))
		if err != nil {
			return
		}
		for _, s := range append(ids, refs...) {
			if strings.ContainsAny(s, "\n") {
				t.Fatalf("parseLoadOutput(%q) returned %q, which spans lines", out, s)
			}
		}
	})
}
