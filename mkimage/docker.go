package mkimage

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"

	"github.com/bootfs/bootfs/casync"
)

// dockerClient connects to the Engine API named by DOCKER_HOST (default
// the local socket), negotiating the API version so that old engines work.
func dockerClient() (*client.Client, error) {
	c, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker: %w", err)
	}
	return c, nil
}

// inspectImage returns the image's metadata, pulling it first if it is
// missing and pull is set.
func inspectImage(ctx context.Context, c *client.Client, ref string, pull bool) (image.InspectResponse, error) {
	info, err := c.ImageInspect(ctx, ref)
	if err == nil {
		return info, nil
	}
	if client.IsErrConnectionFailed(err) {
		return info, fmt.Errorf("docker: cannot reach the Docker engine at %s: %w (is dockerd running? set DOCKER_HOST to reach another one)", c.DaemonHost(), err)
	}
	if !errdefs.IsNotFound(err) {
		return info, fmt.Errorf("docker: inspect image %s: %w", ref, err)
	}
	if !pull {
		return info, fmt.Errorf("docker: image %s is not in the local Docker engine (pull it first, or pass --pull)", ref)
	}
	rc, err := c.ImagePull(ctx, ref, image.PullOptions{})
	if err != nil {
		return info, fmt.Errorf("docker: pull %s: %w", ref, err)
	}
	_, err = io.Copy(io.Discard, rc)
	rc.Close()
	if err != nil {
		return info, fmt.Errorf("docker: pull %s: %w", ref, err)
	}
	info, err = c.ImageInspect(ctx, ref)
	if err != nil {
		return info, fmt.Errorf("docker: inspect image %s after pulling it: %w", ref, err)
	}
	return info, nil
}

// encodeImage streams the flattened root filesystem of img into the catar
// encoder: it creates a container from the image (never starting it),
// exports it, and removes the container afterwards, also when the export
// fails or ctx is cancelled.
//
// Creating the container adds Docker's mount points (/.dockerenv,
// /etc/hosts, /dev, the image's volume directories…) stamped with the
// time of creation, and touches their parent directories, so two exports
// of one image differ. Those paths, and only those, are stamped no later
// than the image's creation instead: Docker made the changes after it, so
// the result is the same for every export, and converting an image twice
// gives the same archive and the same chunks.
func encodeImage(ctx context.Context, c *client.Client, img *image.InspectResponse, w io.Writer, opts *casync.EncodeOptions) (err error) {
	id := img.ID
	// An image without a command cannot be created; the command is never
	// run, so any will do.
	created, err := c.ContainerCreate(ctx, &container.Config{
		Image:      id,
		Entrypoint: []string{"/bootfs-export-only"},
		Labels:     map[string]string{"org.bootfs.mkimage.export": "1"},
	}, &container.HostConfig{NetworkMode: "none"}, nil, nil, "")
	if err != nil {
		return fmt.Errorf("docker: create a container of %s to export it: %w", id, err)
	}
	defer func() {
		rmCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if rmErr := c.ContainerRemove(rmCtx, created.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); rmErr != nil {
			err = errors.Join(err, fmt.Errorf("docker: remove export container %s: %w", created.ID[:12], rmErr))
		}
	}()
	o := *opts
	o.TarHeader = mountPointTimes(img)
	opts = &o

	rc, err := c.ContainerExport(ctx, created.ID)
	if err != nil {
		return fmt.Errorf("docker: export %s: %w", id, err)
	}
	defer rc.Close()
	if err := casync.EncodeTar(ctx, w, rc, opts); err != nil {
		return fmt.Errorf("docker: export of %s: %w", id, err)
	}
	return nil
}

// dockerMountPoints are the paths that creating a container adds to its
// root filesystem when the image lacks them (Docker's init layer), with
// their parents, relative to the root ("" is the root itself).
var dockerMountPoints = []string{
	"", ".dockerenv", "dev", "dev/console", "dev/pts", "dev/shm", "proc", "sys",
	"etc", "etc/hostname", "etc/hosts", "etc/mtab", "etc/resolv.conf",
}

// mountPointTimes returns the EncodeOptions.TarHeader hook that stamps
// Docker's mount points, and the image's volume directories and their
// parents, no later than the image's creation time.
func mountPointTimes(img *image.InspectResponse) func(*tar.Header) error {
	limit := imageCreated(img)
	paths := make(map[string]bool)
	for _, p := range dockerMountPoints {
		paths[p] = true
	}
	if img.Config != nil {
		for v := range img.Config.Volumes {
			for p := strings.Trim(path.Clean("/"+v), "/"); ; p = path.Dir(p) {
				if p == "." || p == "/" {
					break
				}
				paths[p] = true
			}
		}
	}
	return func(h *tar.Header) error {
		name := strings.Trim(path.Clean("/"+h.Name), "/")
		if paths[name] && h.ModTime.After(limit) {
			h.ModTime = limit
		}
		return nil
	}
}

// imageCreated is the image's creation time in whole seconds (as docker
// export stamps files), or the Unix epoch if it has none.
func imageCreated(img *image.InspectResponse) time.Time {
	t, err := time.Parse(time.RFC3339Nano, img.Created)
	if err != nil || t.Before(time.Unix(0, 0)) {
		return time.Unix(0, 0)
	}
	return t.Truncate(time.Second)
}
