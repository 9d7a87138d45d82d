package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/bootfs/bootfs/mkimage"
)

// ociRepo is the one repository of the registry store: every image's
// boot image (tagged with the image's name) and the chunks of all, so
// that an image finds the chunks of a base it shares with another there,
// as in one team's repository (a registry store is one repository).
var ociRepo = prefix + "/boot"

// PushRow is one image's mkimage --push to the harness's registry, into
// ociRepo, over
// loopback and unshaped: setup, not a measured start. Images are pushed
// in the order of IMAGES, so a later one finds the chunks of the base an
// earlier one shares already there.
type PushRow struct {
	Image   string
	Seconds float64
	// NewChunks and Written are mkimage's: the chunks the repository
	// lacked and their stored bytes, packed into blobs.
	NewChunks int
	Written   int64
	// Requests are the upload requests (POST, PATCH, PUT) in the
	// registry's log, Reads the GET and HEAD ones (what is there).
	Requests, Reads int64
}

// pushBoot converts im's original with mkimage --push into its
// repository in the registry, chunks and boot image, and keeps the store
// URL the boot image reads.
func (h *harness) pushBoot(ctx context.Context, im *image) error {
	dst := ref(h.registry.addr, ociRepo, im.wl.Name)
	h.logf("%s: mkimage --push %s", im.wl.Name, dst)
	mark := h.registry.mark()
	start := time.Now()
	out, err := command(ctx, filepath.Join(h.opts.Bin, "mkimage"), "--push", dst, "--json", "--quiet", im.orig)
	took := time.Since(start)
	if err != nil {
		return err
	}
	var sum mkimage.Summary
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		return fmt.Errorf("mkimage --push --json: %w: %q", err, tail(out, 500))
	}
	if !strings.HasPrefix(sum.RuntimeStore, "oci://"+h.registry.addr+"/") {
		return fmt.Errorf("mkimage --push %s: the boot image reads %q, not the registry", dst, sum.RuntimeStore)
	}
	a, err := h.registry.accessSince(mark)
	if err != nil {
		return err
	}
	im.ociStore = sum.RuntimeStore
	h.report.Pushes = append(h.report.Pushes, PushRow{Image: im.wl.Name, Seconds: took.Seconds(),
		NewChunks: sum.NewChunks, Written: sum.BytesWritten, Requests: a.Uploads, Reads: a.reads().Requests})
	return nil
}

// runBootfsRegistry (bootfs-registry): a cold node, as bootfs-cold, but
// with the registry as the store: docker pull of the boot image through
// the link, then docker run reading the chunks from the same repository
// through the same link. The boot image's store names the registry
// itself; BOOTFS_STORE gives boot the same chunk map through the proxy.
func (h *harness) runBootfsRegistry(ctx context.Context, j job, s *Sample) error {
	if j.im.ociStore == "" {
		return errSkipped("no boot image in the registry (see the notes)")
	}
	docker(context.Background(), "rm", "-f", "-v", h.container)
	host, err := h.url(j.net, "http://"+h.registry.addr)
	if err != nil {
		return err
	}
	host = strings.TrimPrefix(host, "http://")
	pulled := ref(host, ociRepo, j.im.wl.Name)
	store := "oci://" + host + strings.TrimPrefix(j.im.ociStore, "oci://"+h.registry.addr)
	// The node has no boot image at all; the other modes pull theirs
	// again when they start cold.
	if err := h.clearBoots(ctx, j.net); err != nil {
		return err
	}
	defer removeImage(context.Background(), pulled)
	docker(context.Background(), "volume", "rm", "-f", h.volume)
	if _, err := docker(ctx, "volume", "create", h.volume); err != nil {
		return err
	}
	if err := dropCaches(); err != nil {
		return err
	}
	mark := h.registry.mark()
	start := time.Now()
	if _, err := docker(ctx, "pull", "-q", pulled); err != nil {
		return err
	}
	s.InDocker = time.Since(start)
	s.Ready, s.RSS, err = h.runContainer(ctx, j.im.wl, containerRun{
		image: pulled, boot: true, watchRSS: true,
		env:     []string{"BOOTFS_STORE=" + store, "BOOTFS_LOG=info"},
		volumes: []string{h.volume + ":/.bootfs/cache"},
		stats:   &s.Boot,
	}, start)
	a, lerr := h.registry.accessSince(mark)
	if err == nil && lerr != nil {
		return lerr
	}
	// Docker's requests are the pull, boot's the chunks.
	s.ImageBytes, s.StoreBytes = a.Docker.Bytes, a.Others.Bytes
	s.Requests = a.Docker.Requests + a.Others.Requests
	return err
}
