package mkimage

import (
	"archive/tar"
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	dockerspec "github.com/moby/docker-image-spec/specs-go/v1"
)

// ImageLoader is the part of the Engine API client that LoadBootImage
// uses; *client.Client implements it.
type ImageLoader interface {
	ImageLoad(ctx context.Context, input io.Reader, opts ...client.ImageLoadOption) (image.LoadResponse, error)
	ImageInspect(ctx context.Context, ref string, opts ...client.ImageInspectOption) (image.InspectResponse, error)
}

var _ ImageLoader = (*client.Client)(nil)

// maxLoadOutput bounds what LoadBootImage reads of the engine's reply.
const maxLoadOutput = 16 << 20

// LoadBootImage loads the image archive r into the engine, as `docker
// load` does, and returns the loaded image's ID. An error the engine
// reports in its progress stream is an error here too, and so is a reply
// that names no loaded image.
func LoadBootImage(ctx context.Context, c ImageLoader, r io.Reader) (string, error) {
	resp, err := c.ImageLoad(ctx, r, client.ImageLoadWithQuiet(true))
	if err != nil {
		return "", fmt.Errorf("docker load: %w", err)
	}
	defer resp.Body.Close()
	ids, refs, err := parseLoadOutput(io.LimitReader(resp.Body, maxLoadOutput))
	if err != nil {
		return "", fmt.Errorf("docker load: %w", err)
	}
	switch {
	case len(ids) > 0:
		return ids[0], nil
	case len(refs) > 0:
		info, err := c.ImageInspect(ctx, refs[0])
		if err != nil {
			return "", fmt.Errorf("docker load: inspect the loaded image %s: %w", refs[0], err)
		}
		return info.ID, nil
	}
	return "", errors.New("docker load: the engine reported no loaded image")
}

// parseLoadOutput reads the engine's reply to a load: a stream of JSON
// messages (or, from very old engines, plain text). It returns the image
// IDs of "Loaded image ID: …" lines and the references of "Loaded image:
// …" lines, or the first error the stream reports.
func parseLoadOutput(r io.Reader) (ids, refs []string, err error) {
	br := bufio.NewReader(r)
	var lines []string
	if b, _ := br.Peek(1); len(b) == 1 && b[0] == '{' {
		dec := json.NewDecoder(br)
		for {
			var m loadMessage
			if err := dec.Decode(&m); err == io.EOF {
				break
			} else if err != nil {
				return nil, nil, fmt.Errorf("read the engine's reply: %w", err)
			}
			if m.Error != nil {
				return nil, nil, fmt.Errorf("engine: %s", m.Error.Message)
			}
			if m.ErrorMessage != "" {
				return nil, nil, fmt.Errorf("engine: %s", m.ErrorMessage)
			}
			lines = append(lines, strings.Split(m.Stream, "\n")...)
		}
	} else {
		b, err := io.ReadAll(br)
		if err != nil {
			return nil, nil, fmt.Errorf("read the engine's reply: %w", err)
		}
		lines = strings.Split(string(b), "\n")
	}
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if id, ok := strings.CutPrefix(l, "Loaded image ID: "); ok {
			ids = append(ids, strings.TrimSpace(id))
		} else if ref, ok := strings.CutPrefix(l, "Loaded image: "); ok {
			refs = append(refs, strings.TrimSpace(ref))
		}
	}
	return ids, refs, nil
}

// loadMessage is one message of the engine's JSON progress stream (the
// fields of jsonmessage.JSONMessage that a load uses).
type loadMessage struct {
	Stream string `json:"stream"`
	Error  *struct {
		Message string `json:"message"`
	} `json:"errorDetail"`
	ErrorMessage string `json:"error"`
}

// BootImageOptions configure MakeBootImage. Fields map one to one to
// mkimage's flags.
type BootImageOptions struct {
	// BootBinary is the static boot binary (--boot-binary); "" means the
	// file "boot" next to the running executable.
	BootBinary string
	// RuntimeStore is the store URL list boot reads at run time
	// (--runtime-store); "" means the store URL Convert's commit gave
	// (Summary.RuntimeStore: an oci:// store with its chunk map pinned),
	// else the store Convert wrote to, as Summary.Store names it.
	RuntimeStore string
	// Tags name the image loaded into Docker (TARGET).
	Tags []string
	// Output is a file to write the archive to instead of loading it
	// (--output docker-archive:FILE, as ParseOutput returns it).
	Output string
	// Prefetch lists the image files, or parts of them, whose content
	// boot fetches first, in order (--prefetch FILE, as ReadPrefetchPaths
	// returns it).
	Prefetch []PrefetchEntry
	// Log receives the warning about prefetch paths the image lacks; nil
	// discards it.
	Log *slog.Logger
}

// ParseOutput parses --output's value, docker-archive:FILE, and returns
// FILE.
func ParseOutput(s string) (string, error) {
	name, ok := strings.CutPrefix(s, "docker-archive:")
	if !ok || name == "" {
		return "", fmt.Errorf("output %q: want docker-archive:FILE", s)
	}
	return name, nil
}

// MakeBootImage builds the boot image of a finished conversion, sum as
// Convert returned it for opts, and writes it to bo.Output or loads it
// into the Docker engine. For a Docker source it reads the source image's
// configuration again through the Engine API, by sum.SourceID.
func MakeBootImage(ctx context.Context, sum *Summary, opts Options, bo BootImageOptions) (BootImageInfo, error) {
	if sum == nil || sum.Index == nil || sum.TOC == nil {
		return BootImageInfo{}, errors.New("boot image: the conversion summary has no index or TOC")
	}
	in := BootImageInput{BootBinary: bo.BootBinary, Tags: bo.Tags}
	if in.BootBinary == "" {
		exe, err := os.Executable()
		if err != nil {
			return BootImageInfo{}, fmt.Errorf("boot binary: %w (name it with --boot-binary)", err)
		}
		in.BootBinary = filepath.Join(filepath.Dir(exe), "boot")
	}

	var c *client.Client
	if sum.SourceID != "" || bo.Output == "" {
		var err error
		if c, err = dockerClient(); err != nil {
			return BootImageInfo{}, err
		}
		defer c.Close()
	}
	var src *image.InspectResponse
	if sum.SourceID != "" {
		info, err := c.ImageInspect(ctx, sum.SourceID)
		if err != nil {
			return BootImageInfo{}, fmt.Errorf("docker: inspect source image %s: %w", sum.SourceID, err)
		}
		src = &info
		if in.Passwd, in.Group, err = userDB(ctx, c, info.ID); err != nil {
			return BootImageInfo{}, err
		}
		in.Platform = Platform{Architecture: info.Architecture, OS: info.Os, Variant: info.Variant}
		if t, err := time.Parse(time.RFC3339Nano, info.Created); err == nil {
			in.Created = t
		}
	}
	store := bo.RuntimeStore
	if store == "" {
		store = cmp.Or(sum.RuntimeStore, sum.Store)
	}
	if local := localStores(store); len(local) > 0 && bo.Log != nil {
		bo.Log.Warn("the boot image reads chunks from a directory of this host: mount it into its containers at that path (docker run -v), or give --runtime-store a URL they can reach",
			"store", strings.Join(local, ","))
	}
	var err error
	if in.Config, err = NewBootConfig(sum, opts, store, configOf(src)); err != nil {
		return BootImageInfo{}, err
	}
	if len(bo.Prefetch) > 0 {
		ids, skipped, clamped := PrefetchChunks(sum.Index, sum.TOC, bo.Prefetch)
		if len(skipped) > 0 && bo.Log != nil {
			bo.Log.Warn("prefetch list names paths that are not regular files of the image; they are left out",
				"count", len(skipped), "first", skipped[0])
		}
		if len(clamped) > 0 && bo.Log != nil {
			bo.Log.Warn("prefetch list names bytes past the end of files (they changed since the recording?); only the parts within them are prefetched",
				"count", len(clamped), "first", clamped[0])
		}
		in.Config.Prefetch = ids
	}
	var idx bytes.Buffer
	if _, err := sum.Index.WriteTo(&idx); err != nil {
		return BootImageInfo{}, fmt.Errorf("boot image: encode index: %w", err)
	}
	in.Index = idx.Bytes()
	if in.TOC, err = sum.TOC.MarshalBinary(); err != nil {
		return BootImageInfo{}, fmt.Errorf("boot image: encode TOC: %w", err)
	}

	if bo.Output != "" {
		return WriteBootImageFile(bo.Output, in)
	}
	return buildAndLoad(ctx, c, in)
}

func configOf(info *image.InspectResponse) *dockerspec.DockerOCIImageConfig {
	if info == nil {
		return nil
	}
	return info.Config
}

// buildAndLoad streams the archive straight into the engine.
func buildAndLoad(ctx context.Context, c ImageLoader, in BootImageInput) (BootImageInfo, error) {
	pr, pw := io.Pipe()
	type result struct {
		info BootImageInfo
		err  error
	}
	built := make(chan result, 1)
	go func() {
		info, err := BuildBootImage(pw, in)
		pw.CloseWithError(err)
		built <- result{info, err}
	}()
	id, loadErr := LoadBootImage(ctx, c, pr)
	pr.CloseWithError(errors.New("docker load finished"))
	b := <-built
	if b.err != nil {
		return BootImageInfo{}, b.err
	}
	if loadErr != nil {
		return BootImageInfo{}, loadErr
	}
	b.info.ImageID = id
	return b.info, nil
}

// localStores returns the elements of a store URL list that are
// directories, not http(s) or ssh URLs.
func localStores(list string) []string {
	var local []string
	for _, u := range strings.Split(list, ",") {
		if !strings.Contains(u, "://") || strings.HasPrefix(u, "file://") {
			local = append(local, u)
		}
	}
	return local
}

// userDB reads /etc/passwd and /etc/group of image id (nil for a file it
// lacks, or one that is not a regular file) through a container created
// for it and removed again.
func userDB(ctx context.Context, c *client.Client, id string) (passwd, group []byte, err error) {
	created, err := c.ContainerCreate(ctx, &container.Config{
		Image:      id,
		Entrypoint: []string{"/bootfs-copy-only"},
		Labels:     map[string]string{"org.bootfs.mkimage.export": "1"},
	}, &container.HostConfig{NetworkMode: "none"}, nil, nil, "")
	if err != nil {
		return nil, nil, fmt.Errorf("docker: create a container of %s to read its users: %w", id, err)
	}
	defer func() {
		rmCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if rmErr := c.ContainerRemove(rmCtx, created.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); rmErr != nil {
			err = errors.Join(err, fmt.Errorf("docker: remove container %s: %w", created.ID[:12], rmErr))
		}
	}()
	read := func(name string) ([]byte, error) {
		rc, _, err := c.CopyFromContainer(ctx, created.ID, name)
		if errdefs.IsNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("docker: read %s of %s: %w", name, id, err)
		}
		defer rc.Close()
		tr := tar.NewReader(rc)
		h, err := tr.Next()
		if err != nil {
			return nil, fmt.Errorf("docker: read %s of %s: %w", name, id, err)
		}
		if h.Typeflag != tar.TypeReg || h.Size > 16<<20 {
			return nil, nil
		}
		return io.ReadAll(tr)
	}
	if passwd, err = read("/etc/passwd"); err != nil {
		return nil, nil, err
	}
	if group, err = read("/etc/group"); err != nil {
		return nil, nil, err
	}
	return passwd, group, nil
}
