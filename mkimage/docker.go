package mkimage

import (
	"context"
	"errors"
	"fmt"
	"io"
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

// encodeImage streams the flattened root filesystem of image id into the
// catar encoder: it creates a container from the image (never starting
// it), exports it, and removes the container afterwards, also when the
// export fails or ctx is cancelled.
func encodeImage(ctx context.Context, c *client.Client, id string, w io.Writer, opts *casync.EncodeOptions) (err error) {
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
