package harness

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// nodeContainers is how many containers of one image the node scenario
// starts at once.
const nodeContainers = 8

// NodeRow is one system's node scenario: nodeContainers containers of
// one image started at once on a cold node.
type NodeRow struct {
	System string
	// Ready is the time from the start of the pull until every container
	// was ready.
	Ready time.Duration
	// Bytes and Requests were served by the registry or the chunk store
	// (and, for bootfs, the boot image archive).
	Bytes, Requests int64
	// RSS is the sum of the FUSE daemons' peaks: the snapshotter for
	// eStargz, every container's boot for bootfs; 0 for a pull.
	RSS int64
	Err string
}

// nodeImage picks the scenario's image: postgres, the largest server,
// when it is selected, else the last image.
func (h *harness) nodeImage() *image {
	for _, im := range h.images {
		if im.wl.Name == "postgres" {
			return im
		}
	}
	return h.images[len(h.images)-1]
}

// nodeNetwork is the headline network if selected, else the last one.
func (h *harness) nodeNetwork() Network {
	name := h.opts.Networks[len(h.opts.Networks)-1]
	if slices.Contains(h.opts.Networks, headlineNet) {
		name = headlineNet
	}
	n, _ := network(name)
	return n
}

// extraNode starts nodeContainers containers of one image at once on a
// cold node with the registry pull, eStargz and bootfs cold, over one
// shaped link.
func (h *harness) extraNode(ctx context.Context) error {
	im, n := h.nodeImage(), h.nodeNetwork()
	h.report.NodeImage, h.report.NodeNetwork, h.report.NodeContainers = im.wl.Name, n.Name, nodeContainers
	systems := []struct {
		name string
		run  func(context.Context, *image, Network, *NodeRow) error
	}{
		{ModeRegistry, h.nodeRegistry},
		{ModeEstargz, h.nodeEstargz("estargz")},
		{ModeEstargzOpt, h.nodeEstargz("estargz-opt")},
		{ModeCold, h.nodeBootfs(ModeCold)},
		{ModeBootfsRegistry, h.nodeBootfsRegistry},
		{ModePrefetch, h.nodeBootfs(ModePrefetch)},
		{ModeAgent, h.nodeAgent},
	}
	for _, s := range systems {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		h.logf("node: %d × %s on %s, %s", nodeContainers, im.wl.Name, n.Name, s.name)
		row := NodeRow{System: s.name}
		err := s.run(ctx, im, n, &row)
		var skip errSkipped
		switch {
		case errors.As(err, &skip):
			h.logf("  skipped: %s", string(skip))
			h.report.Notes = append(h.report.Notes, fmt.Sprintf("node scenario, %s not run: %s", s.name, string(skip)))
			continue
		case err != nil:
			row.Err = err.Error()
			h.logf("  FAILED: %v", err)
		default:
			h.logf("  all ready in %v, fetched %.2f MB in %d request(s)", row.Ready.Round(time.Millisecond), float64(row.Bytes)/1e6, row.Requests)
		}
		h.report.Node = append(h.report.Node, row)
	}
	return nil
}

// atOnce runs run(i) for every container at once and returns when all are
// done: the slowest time, the sum of the RSS, the first error.
func atOnce(run func(i int) (time.Duration, int64, error)) (time.Duration, int64, error) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		ready time.Duration
		rss   int64
		errs  []error
	)
	for i := range nodeContainers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			took, r, err := run(i)
			mu.Lock()
			defer mu.Unlock()
			ready, rss = max(ready, took), rss+r
			if err != nil {
				errs = append(errs, fmt.Errorf("container %d: %w", i, err))
			}
		}()
	}
	wg.Wait()
	return ready, rss, errors.Join(errs...)
}

func (h *harness) nodeName(i int) string { return fmt.Sprintf("%s-%d", h.container, i) }

// nodeRegistry: one docker pull, as a node's runtime pulls an image once
// for all its containers, then every docker run at once.
func (h *harness) nodeRegistry(ctx context.Context, im *image, n Network, row *NodeRow) error {
	if h.registry == nil {
		return errSkipped("no registry in this run")
	}
	pulled, mark, start, err := h.pullCold(ctx, im, n)
	if pulled != "" {
		defer removeImage(context.Background(), pulled)
	}
	if err != nil {
		return err
	}
	row.Ready, _, err = atOnce(func(i int) (time.Duration, int64, error) {
		return h.runContainer(ctx, im.wl, containerRun{name: h.nodeName(i), image: pulled}, start)
	})
	got, lerr := h.registry.since(mark)
	row.Bytes, row.Requests = got.Bytes, got.Requests
	return errors.Join(err, lerr)
}

// nodeEstargz: a cold node, one rpull of the eStargz image tag, then
// every ctr run at once on the snapshotter's layers.
func (h *harness) nodeEstargz(tag string) func(context.Context, *image, Network, *NodeRow) error {
	return func(ctx context.Context, im *image, n Network, row *NodeRow) error {
		return h.nodeEstargzTag(ctx, im, n, tag, row)
	}
}

func (h *harness) nodeEstargzTag(ctx context.Context, im *image, n Network, tag string, row *NodeRow) error {
	if h.stargz == nil || !im.estargz {
		return errSkipped("no eStargz in this run")
	}
	defer h.stargz.wipe()
	st, err := h.startEstargz(ctx, im, n, tag)
	if err != nil {
		return err
	}
	row.Ready, _, err = atOnce(func(i int) (time.Duration, int64, error) {
		took, err := h.stargz.run(ctx, im.wl, st.image, h.nodeName(i), st.start)
		return took, 0, err
	})
	got, lerr := h.registry.since(st.mark)
	row.RSS = st.rss.Stop()
	row.Bytes, row.Requests = got.Bytes, got.Requests
	return errors.Join(err, lerr)
}

// nodeBootfs: the boot image loaded once, the node's cache volume empty
// and shared by every container, as DESIGN.md has it, then every docker
// run at once.
//
// Mode ModePrefetch does the same with the image's prefetch boot image.
func (h *harness) nodeBootfs(mode string) func(context.Context, *image, Network, *NodeRow) error {
	return func(ctx context.Context, im *image, n Network, row *NodeRow) error {
		return h.nodeBootfsMode(ctx, im, n, mode, row)
	}
}

func (h *harness) nodeBootfsMode(ctx context.Context, im *image, n Network, mode string, row *NodeRow) error {
	tag, rtag := im.boot, "boot"
	if mode == ModePrefetch {
		if h.prefetch != "" {
			return errSkipped(h.prefetch)
		}
		if im.prefetchTar == "" {
			return errSkipped("no prefetch image (see the notes)")
		}
		tag, rtag = im.prefetch, "prefetch"
	}
	st, err := h.startBootfs(ctx, n, tag, true)
	if err != nil {
		return err
	}
	start := time.Now()
	pulled, got, err := h.pullBoot(ctx, n, im, rtag)
	if err != nil {
		return err
	}
	row.Bytes, row.Requests = got.Bytes, got.Requests
	row.Ready, row.RSS, err = atOnce(func(i int) (time.Duration, int64, error) {
		return h.runContainer(ctx, im.wl, st.container(h, h.nodeName(i), pulled), start)
	})
	err = errors.Join(err, keepBoot(context.Background(), pulled, tag))
	d, merr := st.fetched(h)
	row.Bytes += d.Bytes
	row.Requests += d.Requests
	return errors.Join(err, merr)
}
