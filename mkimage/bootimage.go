package mkimage

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"os"
	"strings"
	"time"

	"github.com/distribution/reference"
	dockerspec "github.com/moby/docker-image-spec/specs-go/v1"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/bootfs/bootfs/internal/bootconfig"
	"github.com/bootfs/bootfs/internal/version"
)

// Labels that every boot image carries besides the source image's own.
const (
	LabelSourceImage = "org.bootfs.source-image"
	LabelVersion     = "org.bootfs.version"
)

// Platform is the platform a boot image is for.
type Platform struct {
	Architecture string // default "amd64"
	OS           string // default "linux"
	Variant      string
}

// BootImageInput is what BuildBootImage packs.
type BootImageInput struct {
	// BootBinary is the path of the static boot binary, packed as
	// /.bootfs/boot with mode 04755: setuid root, so that a container
	// started as the image's USER, or with `docker run --user`, still has
	// an init that can mount (boot runs the workload as the real uid).
	BootBinary string
	// Index and TOC are the caidx and TOC of the converted archive,
	// packed as /.bootfs/rootfs.caidx and /.bootfs/rootfs.toc.
	Index, TOC []byte
	// Config becomes /.bootfs/config.json, and its Image fields (the
	// source image's configuration) shape the boot image's configuration.
	// BuildBootImage packs a copy whose Index and TOC fields it fills
	// from the bytes above.
	Config *BootConfig
	// Tags name the image, e.g. "app:boot" ("app" means "app:latest").
	// With none the image loads untagged.
	Tags []string
	// Platform defaults to linux/amd64.
	Platform Platform
	// Passwd and Group are the source image's /etc/passwd and
	// /etc/group, packed at the same paths in layer 2 (nil leaves one
	// out). Docker resolves user names and groups in the container's
	// root as it creates a process: docker run --user NAME, docker exec
	// -u NAME, and the supplementary groups of every exec. boot hides
	// them from the workload with the rest of the boot image.
	Passwd, Group []byte
	// Created is the creation time recorded in the image configuration.
	// The zero time leaves it out, so that the image ID depends on content
	// alone.
	Created time.Time
}

// BootImageInfo describes a boot image archive.
type BootImageInfo struct {
	// ImageID is the image's ID: after BuildBootImage, ConfigDigest (as
	// Docker's classic image store computes it); after a load, what the
	// engine reports.
	ImageID string `json:"image_id"`
	// ConfigDigest and ManifestDigest are the "sha256:<hex>" digests of
	// the image configuration and of the OCI manifest.
	ConfigDigest   string `json:"config_digest"`
	ManifestDigest string `json:"manifest_digest"`
	// Tags are the normalized tags, in Docker's familiar form.
	Tags []string `json:"tags,omitempty"`
	// Layers are the boot layer and the index layer, in that order.
	Layers []LayerInfo `json:"layers"`
	// ArchiveSize is the size of the archive in bytes.
	ArchiveSize int64 `json:"archive_size"`
	// Config is the config.json that was packed.
	Config []byte `json:"-"`
}

// LayerInfo describes one uncompressed layer tar.
type LayerInfo struct {
	DiffID string `json:"diff_id"` // "sha256:<hex>" of the tar
	Size   int64  `json:"size"`
}

// BuildBootImage writes a boot image archive to w. The archive is both an
// OCI image layout (oci-layout, index.json, blobs/sha256/) and a
// docker-save archive (manifest.json), so `docker load` of any version and
// OCI tools read it. It holds two uncompressed layers:
//
//  1. /.bootfs/ and /.bootfs/boot, byte-identical for every image built
//     from the same boot binary, so a node stores and pulls it once;
//  2. config.json, rootfs.caidx and rootfs.toc; the cache and upper
//     volumes' directories, and boot's mount points lower/ and root/;
//     the source's /etc/passwd and /etc/group, if given.
//
// Both tars and the archive itself are reproducible: fixed mtimes, owner
// root with no names, sorted entries, USTAR headers. The boot binary is
// read twice (once to digest the layer, once to write it); if it changes
// in between, BuildBootImage fails.
func BuildBootImage(w io.Writer, in BootImageInput) (BootImageInfo, error) {
	p, err := planBootImage(in)
	if err != nil {
		return BootImageInfo{}, err
	}
	cw := &byteCounter{w: w}
	if err := p.write(cw); err != nil {
		return BootImageInfo{}, err
	}
	p.info.ArchiveSize = cw.n
	return p.info, nil
}

// WriteBootImageFile writes the boot image archive to the file name,
// atomically: under a temporary name first, renamed when complete.
func WriteBootImageFile(name string, in BootImageInput) (BootImageInfo, error) {
	var info BootImageInfo
	err := writeAtomic(name, func(w io.Writer) error {
		var err error
		info, err = BuildBootImage(w, in)
		return err
	})
	return info, err
}

// Paths inside the layer tars, relative as docker save writes them.
var (
	layerDir       = strings.TrimPrefix(bootconfig.Dir, "/") + "/"
	layerBoot      = strings.TrimPrefix(bootconfig.BootPath, "/")
	layerCache     = strings.TrimPrefix(bootconfig.CacheDir, "/") + "/"
	layerUpper     = strings.TrimPrefix(bootconfig.UpperDir, "/") + "/"
	layerLower     = strings.TrimPrefix(bootconfig.LowerDir, "/") + "/"
	layerRoot      = strings.TrimPrefix(bootconfig.RootDir, "/") + "/"
	layerConfig    = strings.TrimPrefix(bootconfig.Path, "/")
	layerIndex     = strings.TrimPrefix(bootconfig.IndexPath, "/")
	layerTOC       = strings.TrimPrefix(bootconfig.TOCPath, "/")
	layerMtime     = time.Unix(0, 0)
	archiveBlobs   = "blobs/sha256/"
	bootEntrypoint = []string{bootconfig.BootPath, "--"}
)

// tarEntry is one entry of a layer tar: a directory, bytes in memory, or
// a file copied from disk.
type tarEntry struct {
	name string
	mode int64
	dir  bool
	data []byte
	path string // for a file on disk
	size int64  // of the file on disk, from the planning pass
}

func (e *tarEntry) header() *tar.Header {
	h := &tar.Header{
		Name:     e.name,
		Mode:     e.mode,
		ModTime:  layerMtime,
		Typeflag: tar.TypeReg,
		Format:   tar.FormatUSTAR,
	}
	switch {
	case e.dir:
		h.Typeflag = tar.TypeDir
	case e.path != "":
		h.Size = e.size
	default:
		h.Size = int64(len(e.data))
	}
	return h
}

// writeLayer writes entries as a tar to w.
func writeLayer(w io.Writer, entries []tarEntry) error {
	tw := tar.NewWriter(w)
	for i := range entries {
		e := &entries[i]
		if err := tw.WriteHeader(e.header()); err != nil {
			return fmt.Errorf("layer entry %s: %w", e.name, err)
		}
		switch {
		case e.dir:
		case e.path != "":
			if err := copyFile(tw, e.path, e.size); err != nil {
				return err
			}
		default:
			if _, err := tw.Write(e.data); err != nil {
				return fmt.Errorf("layer entry %s: %w", e.name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("layer tar: %w", err)
	}
	return nil
}

// copyFile copies exactly size bytes of the file name to w, failing if
// the file has another size now.
func copyFile(w io.Writer, name string, size int64) error {
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("boot binary: %w", err)
	}
	defer f.Close()
	n, err := io.Copy(w, io.LimitReader(f, size+1))
	if err != nil {
		return fmt.Errorf("boot binary %s: %w", name, err)
	}
	if n != size {
		return fmt.Errorf("boot binary %s: changed while the image was built (%d bytes, then %d)", name, size, n)
	}
	return nil
}

// layer is a planned layer tar: its entries, digest and size.
type layer struct {
	entries []tarEntry
	diffID  digest.Digest
	size    int64
}

// measure writes the layer to a hasher to learn its digest and size.
func (l *layer) measure() error {
	h := &hashCounter{h: sha256.New()}
	if err := writeLayer(h, l.entries); err != nil {
		return err
	}
	l.diffID = digest.NewDigestFromBytes(digest.SHA256, h.h.Sum(nil))
	l.size = h.n
	return nil
}

// bootImagePlan is everything in the archive but the layer bytes.
type bootImagePlan struct {
	layers   [2]layer
	config   []byte // image configuration
	manifest []byte // OCI manifest
	index    []byte // index.json
	save     []byte // manifest.json
	info     BootImageInfo
}

func planBootImage(in BootImageInput) (*bootImagePlan, error) {
	if in.Config == nil {
		return nil, errors.New("boot image: no config")
	}
	if len(in.Index) == 0 || len(in.TOC) == 0 {
		return nil, errors.New("boot image: empty index or TOC")
	}
	fi, err := os.Stat(in.BootBinary)
	if err != nil {
		return nil, fmt.Errorf("boot binary: %w (build it with make build, or name it with --boot-binary)", err)
	}
	if !fi.Mode().IsRegular() || fi.Size() == 0 {
		return nil, fmt.Errorf("boot binary %s: not a non-empty regular file", in.BootBinary)
	}
	refs, err := normalizeTags(in.Tags)
	if err != nil {
		return nil, err
	}

	cfg := *in.Config
	cfg.Index = bootconfig.Blob{Digest: sha256Digest(in.Index), Size: int64(len(in.Index))}
	cfg.TOC = bootconfig.Blob{Digest: sha256Digest(in.TOC), Size: int64(len(in.TOC))}
	cfgJSON, err := cfg.Marshal()
	if err != nil {
		return nil, fmt.Errorf("boot image: %w", err)
	}

	p := &bootImagePlan{}
	p.layers[0].entries = []tarEntry{
		{name: layerDir, mode: 0o755, dir: true},
		{name: layerBoot, mode: 0o4755, path: in.BootBinary, size: fi.Size()},
	}
	p.layers[1].entries = []tarEntry{
		{name: layerCache, mode: 0o755, dir: true},
		{name: layerConfig, mode: 0o644, data: cfgJSON},
		{name: layerLower, mode: 0o755, dir: true},
		{name: layerRoot, mode: 0o755, dir: true},
		{name: layerIndex, mode: 0o644, data: in.Index},
		{name: layerTOC, mode: 0o644, data: in.TOC},
		{name: layerUpper, mode: 0o755, dir: true},
	}
	if in.Passwd != nil || in.Group != nil {
		p.layers[1].entries = append(p.layers[1].entries, tarEntry{name: "etc/", mode: 0o755, dir: true})
	}
	if in.Group != nil {
		p.layers[1].entries = append(p.layers[1].entries, tarEntry{name: "etc/group", mode: 0o644, data: in.Group})
	}
	if in.Passwd != nil {
		p.layers[1].entries = append(p.layers[1].entries, tarEntry{name: "etc/passwd", mode: 0o644, data: in.Passwd})
	}
	for i := range p.layers {
		if err := p.layers[i].measure(); err != nil {
			return nil, fmt.Errorf("boot image: %w", err)
		}
	}

	img := imageConfig(&cfg, in.Platform, in.Created, p.layers[0].diffID, p.layers[1].diffID)
	if p.config, err = json.Marshal(img); err != nil {
		return nil, fmt.Errorf("boot image: encode image config: %w", err)
	}
	configDigest := digest.FromBytes(p.config)

	man := ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: configDigest, Size: int64(len(p.config))},
	}
	man.SchemaVersion = 2
	for _, l := range p.layers {
		man.Layers = append(man.Layers, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: l.diffID, Size: l.size})
	}
	if p.manifest, err = json.Marshal(man); err != nil {
		return nil, fmt.Errorf("boot image: encode manifest: %w", err)
	}
	manDesc := ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageManifest,
		Digest:    digest.FromBytes(p.manifest),
		Size:      int64(len(p.manifest)),
		Platform:  &ocispec.Platform{Architecture: img.Architecture, OS: img.OS, Variant: img.Variant},
	}

	// index.json lists the manifest once per tag, as docker save does.
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{}}
	idx.SchemaVersion = 2
	tags := make([]string, 0, len(refs))
	for _, ref := range refs {
		d := manDesc
		d.Annotations = map[string]string{
			"io.containerd.image.name": ref.String(),
			ocispec.AnnotationRefName:  ref.Tag(),
		}
		idx.Manifests = append(idx.Manifests, d)
		tags = append(tags, reference.FamiliarString(ref))
	}
	if len(refs) == 0 {
		idx.Manifests = append(idx.Manifests, manDesc)
	}
	if p.index, err = json.Marshal(idx); err != nil {
		return nil, fmt.Errorf("boot image: encode index.json: %w", err)
	}

	save := []dockerSaveManifest{{
		Config:   archiveBlobs + configDigest.Encoded(),
		RepoTags: tags,
		Layers:   []string{archiveBlobs + p.layers[0].diffID.Encoded(), archiveBlobs + p.layers[1].diffID.Encoded()},
	}}
	if p.save, err = json.Marshal(save); err != nil {
		return nil, fmt.Errorf("boot image: encode manifest.json: %w", err)
	}

	p.info = BootImageInfo{
		ImageID:        configDigest.String(),
		ConfigDigest:   configDigest.String(),
		ManifestDigest: manDesc.Digest.String(),
		Tags:           tags,
		Config:         cfgJSON,
	}
	for _, l := range p.layers {
		p.info.Layers = append(p.info.Layers, LayerInfo{DiffID: l.diffID.String(), Size: l.size})
	}
	return p, nil
}

// dockerSaveManifest is one entry of a docker-save manifest.json.
type dockerSaveManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// imageConfig returns the boot image's configuration: the source image's
// with boot in front of the entrypoint, and the cache and writable-layer
// volumes. The USER is the source's too: Docker starts boot, and runs
// docker exec and health checks, as that user, as it would for the
// original; boot is setuid root, mounts, and runs the workload as the
// user Docker started it as.
func imageConfig(cfg *BootConfig, pl Platform, created time.Time, diffIDs ...digest.Digest) *dockerspec.DockerOCIImage {
	src := &cfg.Image
	img := &dockerspec.DockerOCIImage{}
	img.Architecture = cmpOr(pl.Architecture, "amd64")
	img.OS = cmpOr(pl.OS, "linux")
	img.Variant = pl.Variant
	var createdPtr *time.Time
	if !created.IsZero() {
		c := created.UTC()
		createdPtr = &c
	}
	img.Created = createdPtr

	c := &img.Config
	c.Entrypoint = append(append([]string{}, bootEntrypoint...), src.Entrypoint...)
	c.Cmd = src.Cmd
	c.Env = src.Env
	c.User = src.User
	c.StopSignal = src.StopSignal
	c.ExposedPorts = set(src.ExposedPorts)
	c.Volumes = set(src.Volumes)
	if c.Volumes == nil {
		c.Volumes = map[string]struct{}{}
	}
	c.Volumes[bootconfig.CacheDir] = struct{}{}
	c.Volumes[bootconfig.UpperDir] = struct{}{}
	// boot starts in it and hands it on to the workload; docker exec
	// starts there too, as in the original.
	c.WorkingDir = src.WorkingDir
	c.Labels = maps.Clone(src.Labels)
	if c.Labels == nil {
		c.Labels = map[string]string{}
	}
	if cfg.SourceImageID != "" {
		c.Labels[LabelSourceImage] = cfg.SourceImageID
	} else if cfg.Source != "" {
		c.Labels[LabelSourceImage] = cfg.Source
	}
	c.Labels[LabelVersion] = cmpOr(cfg.BootfsVersion, version.Version)
	if h := src.Healthcheck; h != nil {
		c.Healthcheck = &dockerspec.HealthcheckConfig{
			Test:          h.Test,
			Interval:      h.Interval,
			Timeout:       h.Timeout,
			StartPeriod:   h.StartPeriod,
			StartInterval: h.StartInterval,
			Retries:       h.Retries,
		}
	}

	img.RootFS = ocispec.RootFS{Type: "layers", DiffIDs: diffIDs}
	comment := "bootfs " + c.Labels[LabelVersion]
	img.History = []ocispec.History{
		{Created: createdPtr, CreatedBy: "bootfs mkimage: " + bootconfig.BootPath, Comment: comment},
		{Created: createdPtr, CreatedBy: "bootfs mkimage: index, TOC and config of " + cmpOr(cfg.Source, cfg.SourceImageID), Comment: comment},
	}
	return img
}

func set(keys []string) map[string]struct{} {
	if len(keys) == 0 {
		return nil
	}
	m := make(map[string]struct{}, len(keys))
	for _, k := range keys {
		m[k] = struct{}{}
	}
	return m
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// normalizeTags parses tags as Docker does ("app" is
// docker.io/library/app:latest) and rejects digests, which a load cannot
// create.
func normalizeTags(tags []string) ([]reference.NamedTagged, error) {
	var refs []reference.NamedTagged
	seen := map[string]bool{}
	for _, t := range tags {
		named, err := reference.ParseNormalizedNamed(t)
		if err != nil {
			return nil, fmt.Errorf("boot image tag %q: %w", t, err)
		}
		if _, ok := named.(reference.Digested); ok {
			return nil, fmt.Errorf("boot image tag %q: a digest cannot be a tag", t)
		}
		tagged, ok := reference.TagNameOnly(named).(reference.NamedTagged)
		if !ok {
			return nil, fmt.Errorf("boot image tag %q: not a name:tag", t)
		}
		if !seen[tagged.String()] {
			seen[tagged.String()] = true
			refs = append(refs, tagged)
		}
	}
	return refs, nil
}

func sha256Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// write writes the archive: blobs first, then the files that point at
// them.
func (p *bootImagePlan) write(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	tw := tar.NewWriter(bw)
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, ModTime: layerMtime, Typeflag: tar.TypeDir, Format: tar.FormatUSTAR})
	}
	file := func(name string, size int64, write func(io.Writer) error) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: size, ModTime: layerMtime, Typeflag: tar.TypeReg, Format: tar.FormatUSTAR}); err != nil {
			return err
		}
		return write(tw)
	}
	data := func(name string, b []byte) error {
		return file(name, int64(len(b)), func(w io.Writer) error { _, err := w.Write(b); return err })
	}
	if err := dir("blobs/"); err != nil {
		return fmt.Errorf("write boot image: %w", err)
	}
	if err := dir(archiveBlobs); err != nil {
		return fmt.Errorf("write boot image: %w", err)
	}
	for i := range p.layers {
		l := &p.layers[i]
		err := file(archiveBlobs+l.diffID.Encoded(), l.size, func(w io.Writer) error {
			h := sha256.New()
			if err := writeLayer(io.MultiWriter(w, h), l.entries); err != nil {
				return err
			}
			if got := digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil)); got != l.diffID {
				return fmt.Errorf("layer %d changed while the image was built (digest %s, then %s)", i+1, l.diffID, got)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("write boot image: %w", err)
		}
	}
	for _, f := range []struct {
		name string
		b    []byte
	}{
		{archiveBlobs + digest.FromBytes(p.config).Encoded(), p.config},
		{archiveBlobs + digest.FromBytes(p.manifest).Encoded(), p.manifest},
		{"index.json", p.index},
		{"manifest.json", p.save},
		{ocispec.ImageLayoutFile, []byte(`{"imageLayoutVersion":"` + ocispec.ImageLayoutVersion + `"}`)},
	} {
		if err := data(f.name, f.b); err != nil {
			return fmt.Errorf("write boot image: %s: %w", f.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write boot image: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write boot image: %w", err)
	}
	return nil
}

type hashCounter struct {
	h hash.Hash
	n int64
}

func (c *hashCounter) Write(p []byte) (int, error) {
	c.h.Write(p)
	c.n += int64(len(p))
	return len(p), nil
}

type byteCounter struct {
	w io.Writer
	n int64
}

func (c *byteCounter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
