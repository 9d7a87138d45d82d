package harness

import (
	"context"
	"encoding/json"
	"errors"
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
	docker(context.Background(), "rm", "-f", "-v", h.container)
	st, err := h.startBootfsRegistry(ctx, j.im, j.net)
	if st.pulled != "" {
		defer removeImage(context.Background(), st.pulled)
	}
	if err != nil {
		return err
	}
	s.InDocker = time.Since(st.start)
	c := st.container(h, "")
	c.env, c.stats = append(c.env, "BOOTFS_LOG=info"), &s.Boot
	s.Ready, s.RSS, err = h.runContainer(ctx, j.im.wl, c, st.start)
	a, lerr := h.registry.accessSince(st.mark)
	if err == nil && lerr != nil {
		return lerr
	}
	// Docker's requests are the pull, boot's the chunks.
	s.ImageBytes, s.StoreBytes = a.Docker.Bytes, a.Others.Bytes
	s.Requests = a.Docker.Requests + a.Others.Requests
	return err
}

// nodeBootfsRegistry: bootfs-registry on a node: the boot image pulled
// once, the node's cache volume empty and shared, every docker run at
// once reading the chunks from the registry.
func (h *harness) nodeBootfsRegistry(ctx context.Context, im *image, n Network, row *NodeRow) error {
	st, err := h.startBootfsRegistry(ctx, im, n)
	if st.pulled != "" {
		defer removeImage(context.Background(), st.pulled)
	}
	if err != nil {
		return err
	}
	row.Ready, row.RSS, err = atOnce(func(i int) (time.Duration, int64, error) {
		return h.runContainer(ctx, im.wl, st.container(h, h.nodeName(i)), st.start)
	})
	a, lerr := h.registry.accessSince(st.mark)
	row.Bytes, row.Requests = a.Docker.Bytes+a.Others.Bytes, a.Docker.Requests+a.Others.Requests
	return errors.Join(err, lerr)
}

// registryStart is a boot image pulled from the registry store on a
// cold node: its reference and store through the link, where the
// registry's log was and when the clock started.
type registryStart struct {
	pulled, store string
	mark          int64
	start         time.Time
}

// startBootfsRegistry makes the node cold (no boot image at all, the
// cache volume empty, the page cache dropped), then starts the clock and
// pulls im's boot image from the registry store through network n.
func (h *harness) startBootfsRegistry(ctx context.Context, im *image, n Network) (registryStart, error) {
	if im.ociStore == "" {
		return registryStart{}, errSkipped("no boot image in the registry (see the notes)")
	}
	host, err := h.url(n, "http://"+h.registry.addr)
	if err != nil {
		return registryStart{}, err
	}
	host = strings.TrimPrefix(host, "http://")
	// The node has no boot image at all; the other modes pull theirs
	// again when they start cold.
	if err := h.clearBoots(ctx, n); err != nil {
		return registryStart{}, err
	}
	docker(context.Background(), "volume", "rm", "-f", h.volume)
	if _, err := docker(ctx, "volume", "create", h.volume); err != nil {
		return registryStart{}, err
	}
	if err := dropCaches(); err != nil {
		return registryStart{}, err
	}
	st := registryStart{pulled: ref(host, ociRepo, im.wl.Name),
		store: "oci://" + host + strings.TrimPrefix(im.ociStore, "oci://"+h.registry.addr),
		mark:  h.registry.mark(), start: time.Now()}
	if _, err := docker(ctx, "pull", "-q", st.pulled); err != nil {
		return st, err
	}
	return st, nil
}

// container is the docker run, as name ("": the harness's one), of the
// pulled boot image on the registry store and the cache volume, its RSS
// watched.
func (st registryStart) container(h *harness, name string) containerRun {
	return containerRun{
		name: name, image: st.pulled, boot: true, watchRSS: true,
		env:     []string{"BOOTFS_STORE=" + st.store},
		volumes: []string{h.volume + ":/.bootfs/cache"},
	}
}
