package harness

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bootfs/bootfs/bench/shaper"
)

// harness is one Run's state.
type harness struct {
	opts      Options
	clean     cleanups
	runFlags  []string // docker run flags that let boot mount FUSE
	store     *storeServer
	casStore  *storeServer
	tarURL    string
	marker    string // the directory holding runMarker
	registry  *registry
	stargz    *stargzNode // the private containerd of the eStargz modes
	estargz   string      // why the eStargz modes cannot run, or ""
	container string      // the name of the one container a run uses
	volume    string      // the cache volume

	mu      sync.Mutex
	proxies map[string]*shaper.Proxy   // by network and upstream
	links   map[string]*shaper.Network // by network

	images   []*image
	prefetch string // why bootfs-prefetch cannot run, or ""
	report   *Report
}

func (h *harness) logf(format string, a ...any) {
	if h.opts.Log != nil {
		fmt.Fprintf(h.opts.Log, "%s bench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
	}
}

func (h *harness) storeDir() string    { return filepath.Join(h.opts.Work, "store") }
func (h *harness) casStoreDir() string { return filepath.Join(h.opts.Work, "casync-store") }
func (h *harness) tarDir() string      { return filepath.Join(h.opts.Work, "tars") }

func (h *harness) needRegistry() bool {
	for _, m := range h.opts.Modes {
		if m != ModeCasync && m != ModeSaveLoad {
			return true // every boot image is pulled from it too
		}
	}
	return slices.Contains(h.opts.Extras, "node") || slices.Contains(h.opts.Extras, "pgversion")
}

func (h *harness) needEstargz() bool {
	return slices.Contains(h.opts.Modes, ModeEstargz) || slices.Contains(h.opts.Modes, ModeEstargzOpt)
}

func (h *harness) needCasync() bool {
	return slices.Contains(h.opts.Modes, ModeCasync) || slices.Contains(h.opts.Extras, "dedup") ||
		slices.Contains(h.opts.Extras, "fuse") || slices.Contains(h.opts.Extras, "pgversion")
}

// Run runs the benchmark and writes the report to opts.Out, returning
// its path. Whatever happens, it removes what it made (containers,
// mounts, servers, proxies, volumes, and unless Keep the images and the
// scratch directory). A run that failed is reported in the table and
// makes Run return an error after the report is written.
func Run(ctx context.Context, opts Options) (string, error) {
	if err := opts.resolve(); err != nil {
		return "", err
	}
	h := &harness{opts: opts, proxies: map[string]*shaper.Proxy{}, links: map[string]*shaper.Network{},
		container: fmt.Sprintf("%s-%d-run", prefix, os.Getpid()),
		volume:    fmt.Sprintf("%s-%d-cache", prefix, os.Getpid()),
	}
	defer h.clean.run()
	pl := opts.plan()
	h.logf("plan: %d runs (%d image(s) × %d network(s) × %d mode(s) × %d sample(s), less the cells a network skips), then %d extra(s); about %s with the trees and eStargz conversions cached (done by %s)",
		pl.runs, len(opts.Images), len(opts.Networks), len(opts.Modes), opts.Samples, len(opts.Extras), pl.eta, time.Now().Add(pl.eta).Format("15:04"))
	if err := h.setup(ctx); err != nil {
		return "", err
	}
	h.report = newReport(opts, h.prefetch)
	if opts.Quick && !h.needEstargz() {
		note := "quick mode: estargz and estargz-optimized are not run (building the snapshotter and converting with ctr-remote take minutes); MODES=... with them runs them"
		h.logf("%s", note)
		h.report.Notes = append(h.report.Notes, note)
	}
	if h.estargz != "" {
		h.report.Notes = append(h.report.Notes, "estargz, estargz-optimized: "+h.estargz)
	}
	for _, name := range opts.Images {
		w, _ := workload(name)
		im, err := h.prepare(ctx, w)
		if err != nil {
			return "", fmt.Errorf("prepare %s: %w", name, err)
		}
		h.images = append(h.images, im)
	}
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	h.report.addImages(h.images)
	if slices.Contains(opts.Modes, ModePrefetch) && h.prefetch == "" {
		for _, im := range h.images {
			if err := h.preparePrefetch(ctx, im); err != nil {
				h.logf("%s: prefetch list: %v", im.wl.Name, err)
				im.prefetchTar = ""
				h.report.Notes = append(h.report.Notes, fmt.Sprintf("%s: no prefetch image: %v", im.wl.Name, err))
			}
		}
	}
	failed := h.sample(ctx)
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	h.extras(ctx)
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	file, err := h.report.Write(opts.Out)
	if err != nil {
		return "", err
	}
	if failed > 0 {
		return file, fmt.Errorf("%d run(s) failed; see %s", failed, file)
	}
	return file, nil
}

// setup checks the machine, makes the scratch directory and starts the
// servers.
func (h *harness) setup(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("the benchmark needs root: it mounts FUSE, drops the page cache and runs Docker")
	}
	for _, c := range []string{"mkimage", "boot", "chunkstore"} {
		if _, err := os.Stat(filepath.Join(h.opts.Bin, c)); err != nil {
			return fmt.Errorf("%s: %w (run make build)", c, err)
		}
	}
	if _, err := docker(ctx, "info", "--format", "{{.ServerVersion}}"); err != nil {
		return fmt.Errorf("no Docker engine answers (start one: dockerd --bridge=none --iptables=false --ip-masq=false): %w", err)
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("no /dev/fuse: %w", err)
	}
	if h.needCasync() {
		if _, err := command(ctx, "casync", "--version"); err != nil {
			return fmt.Errorf("casync is needed for casync-mount and the store and FUSE comparisons (apt-get install casync): %w", err)
		}
	}
	if err := dropCaches(); err != nil {
		return err
	}
	os.RemoveAll(h.opts.Work)
	for _, d := range []string{h.storeDir(), h.casStoreDir(), h.tarDir(), filepath.Join(h.opts.Work, "index")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if !h.opts.Keep {
		h.clean.add(func() { os.RemoveAll(h.opts.Work) })
	}
	// Removed last (cleanups run in reverse): any mount left under the
	// scratch directory goes before the directory does.
	h.clean.add(func() {
		for _, d := range []string{"casync-run/merged/proc", "casync-run/merged/dev", "casync-run/merged", "casync-run/rw", "casync-run/mnt", "fuse/bootfs", "fuse/casync"} {
			unmount(filepath.Join(h.opts.Work, d))
		}
	})
	h.clean.add(func() {
		docker(context.Background(), "rm", "-f", "-v", h.container)
		docker(context.Background(), "volume", "rm", "-f", h.volume)
	})
	var err error
	if h.store, err = h.serveStore(h.storeDir()); err != nil {
		return err
	}
	if h.casStore, err = h.serveStore(h.casStoreDir()); err != nil {
		return err
	}
	if h.tarURL, err = h.serveTars(); err != nil {
		return err
	}
	if h.needRegistry() {
		if h.registry, err = h.startRegistry(ctx); err != nil {
			return err
		}
	}
	if h.needEstargz() {
		if h.estargz = estargzTools(); h.estargz == "" {
			if h.stargz, err = h.newStargzNode(ctx); err != nil {
				return err
			}
		}
	}
	h.marker = filepath.Join(h.opts.Work, "marker")
	if err := os.MkdirAll(filepath.Join(h.marker, filepath.Dir(runMarker)), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(h.marker, runMarker), fmt.Appendf(nil, "%d %s\n", os.Getpid(), time.Now().Format(time.RFC3339Nano)), 0o644); err != nil {
		return err
	}
	if h.runFlags, err = h.privilegeFlags(ctx); err != nil {
		return err
	}
	if slices.Contains(h.opts.Modes, ModePrefetch) {
		h.prefetch = h.prefetchSupport(ctx)
	}
	return nil
}

// privilegeFlags returns the docker run flags that let boot mount FUSE
// and overlayfs: --privileged, or where the engine cannot grant every
// capability (a nested engine), CAP_SYS_ADMIN with seccomp and AppArmor
// unconfined. The probe runs boot's help in a one-file image.
func (h *harness) privilegeFlags(ctx context.Context) ([]string, error) {
	full := []string{"--privileged", "--device", "/dev/fuse"}
	dir := filepath.Join(h.opts.Work, "probe")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(h.opts.Bin, "boot"))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "boot"), b, 0o755); err != nil {
		return nil, err
	}
	tag := prefix + "/probe:" + fmt.Sprint(os.Getpid())
	if err := dockerImport(ctx, dir, tag, nil, ""); err != nil {
		return nil, err
	}
	defer docker(context.Background(), "rmi", "-f", tag)
	out, err := docker(ctx, append(append([]string{"run", "--rm", "--pull", "never", "--network", "none"}, full...), tag, "/boot", "help")...)
	if err == nil {
		return full, nil
	}
	if strings.Contains(err.Error(), "apply caps") {
		return []string{"--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined", "--device", "/dev/fuse"}, nil
	}
	return nil, fmt.Errorf("docker run --privileged of a probe image: %w: %s", err, out)
}

// preparePrefetch records what the workload reads in a warm-up run of the
// boot image (BOOTFS_RECORD) and converts the image again with that list
// (mkimage --prefetch).
func (h *harness) preparePrefetch(ctx context.Context, im *image) error {
	h.logf("%s: record a prefetch list", im.wl.Name)
	dir := filepath.Join(h.opts.Work, "record-"+im.wl.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// boot writes the list with the rights of the user Docker runs the
	// container as: the image's USER (postgres), not root.
	if err := os.Chmod(dir, 0o777); err != nil {
		return err
	}
	docker(context.Background(), "volume", "rm", "-f", h.volume)
	_, _, err := h.runContainer(ctx, im.wl, containerRun{
		image: im.boot, boot: true,
		env:     []string{"BOOTFS_RECORD=/bench-record/paths", "BOOTFS_STORE=" + h.store.url},
		volumes: []string{h.volume + ":/.bootfs/cache", dir + ":/bench-record"},
	}, time.Now())
	docker(context.Background(), "volume", "rm", "-f", h.volume)
	if err != nil {
		return fmt.Errorf("recording run: %w", err)
	}
	list := filepath.Join(dir, "paths")
	if fi, err := os.Stat(list); err != nil || fi.Size() == 0 {
		return fmt.Errorf("the recording run wrote no list to %s (%v)", list, err)
	}
	h.removeImageAtEnd(im.prefetch)
	if _, err := command(ctx, filepath.Join(h.opts.Bin, "mkimage"), "--store", h.storeDir(),
		"--runtime-store", h.store.url, "--prefetch", list, "--quiet", im.orig, im.prefetch); err != nil {
		return err
	}
	im.prefetchTar = im.wl.Name + "-prefetch.tar"
	if _, err = h.save(ctx, im.prefetch, im.prefetchTar); err != nil {
		return err
	}
	return h.push(ctx, im.prefetch, im.repo(), "prefetch")
}

// job is one (image, network) pair's runs within a sample: every mode,
// warm right after cold.
type job struct {
	im  *image
	net Network
}

// sample runs every job Samples times, each round in a new shuffled order,
// and returns the number of failed runs.
func (h *harness) sample(ctx context.Context) int {
	seed := h.opts.Seed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	h.report.Seed = seed
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	var jobs []job
	for _, im := range h.images {
		for _, n := range h.opts.Networks {
			nw, _ := network(n)
			if nw.Images != nil && !slices.Contains(nw.Images, im.wl.Name) {
				continue
			}
			jobs = append(jobs, job{im, nw})
		}
	}
	failed := 0
	for s := range h.opts.Samples {
		rng.Shuffle(len(jobs), func(i, j int) { jobs[i], jobs[j] = jobs[j], jobs[i] })
		for i, j := range jobs {
			modes := slices.Clone(h.opts.Modes)
			rng.Shuffle(len(modes), func(i, j int) { modes[i], modes[j] = modes[j], modes[i] })
			// Warm needs the cache cold left: it runs right after cold.
			if k := slices.Index(modes, ModeWarm); k >= 0 && slices.Contains(modes, ModeCold) {
				modes = slices.Delete(modes, k, k+1)
			}
			for _, m := range modes {
				if ctx.Err() != nil {
					return failed
				}
				if m == ModeCasync && s >= h.opts.CasyncSamples || !j.net.Runs(j.im.wl.Name, m) {
					continue
				}
				h.logf("sample %d/%d, job %d/%d: %s on %s, %s", s+1, h.opts.Samples, i+1, len(jobs), j.im.wl.Name, j.net.Name, m)
				got := h.runMode(ctx, j, m)
				if m == ModeCold && slices.Contains(h.opts.Modes, ModeWarm) && j.net.Runs(j.im.wl.Name, ModeWarm) {
					h.logf("  %s", got.summary())
					h.report.add(got)
					got = h.runMode(ctx, j, ModeWarm)
				}
				h.logf("  %s", got.summary())
				if got.Err != "" && ctx.Err() == nil {
					failed++
				}
				h.report.add(got)
			}
		}
	}
	return failed
}

func (s Sample) summary() string {
	if s.Err != "" {
		return fmt.Sprintf("%s: FAILED: %s", s.Mode, s.Err)
	}
	if s.Skipped != "" {
		return fmt.Sprintf("%s: skipped: %s", s.Mode, s.Skipped)
	}
	rss := ""
	if s.RSS > 0 {
		rss = fmt.Sprintf(", peak RSS %.1f MB", float64(s.RSS)/1e6)
	}
	if s.InDocker > 0 {
		rss += fmt.Sprintf(", boot image in Docker after %v", s.InDocker.Round(time.Millisecond))
	}
	return fmt.Sprintf("%s: ready in %v, fetched %.2f MB in %d request(s)%s", s.Mode, s.Ready.Round(time.Millisecond), float64(s.Fetched())/1e6, s.Requests, rss)
}

// runMode runs one workload once in mode m from that mode's cold state.
func (h *harness) runMode(ctx context.Context, j job, m string) Sample {
	s := Sample{Image: j.im.wl.Name, Network: j.net.Name, Mode: m}
	var err error
	switch m {
	case ModeRegistry:
		err = h.runRegistryPull(ctx, j, &s)
	case ModeSaveLoad:
		err = h.runFull(ctx, j, &s)
	case ModeCasync:
		err = h.runCasyncMode(ctx, j, &s)
	case ModeEstargz, ModeEstargzOpt:
		err = h.runEstargz(ctx, j, m, &s)
	case ModeCold, ModeWarm, ModePrefetch:
		err = h.runBootfs(ctx, j, m, &s)
	case ModeBootfsRegistry:
		err = h.runBootfsRegistry(ctx, j, &s)
	case ModeAgent:
		err = h.runBootfsAgent(ctx, j, &s)
	}
	var skip errSkipped
	switch {
	case errors.As(err, &skip):
		s.Skipped = string(skip)
	case err != nil:
		s.Err = err.Error()
	}
	return s
}

// removeImage removes tag if it is there.
func removeImage(ctx context.Context, tag string) error {
	_, err := docker(ctx, "rmi", "-f", tag)
	if err != nil && strings.Contains(err.Error(), "No such image") {
		return nil
	}
	return err
}

// runFull (save-load): the original image is removed, then fetched as a
// docker save archive over HTTP, loaded and run.
func (h *harness) runFull(ctx context.Context, j job, s *Sample) error {
	docker(context.Background(), "rm", "-f", "-v", h.container)
	if err := removeImage(ctx, j.im.orig); err != nil {
		return err
	}
	url, err := h.url(j.net, h.tarURL)
	if err != nil {
		return err
	}
	if err := dropCaches(); err != nil {
		return err
	}
	start := time.Now()
	if s.ImageBytes, err = load(ctx, url+"/"+j.im.origTar); err != nil {
		return err
	}
	s.Requests = 1
	s.Ready, _, err = h.runContainer(ctx, j.im.wl, containerRun{image: j.im.orig}, start)
	return err
}

// runCasyncMode: casync mount of the image's casync index over HTTP and
// a chroot into it. casync keeps no cache, so every run is cold.
func (h *harness) runCasyncMode(ctx context.Context, j job, s *Sample) error {
	url, err := h.url(j.net, h.casStore.url)
	if err != nil {
		return err
	}
	if err := dropCaches(); err != nil {
		return err
	}
	before, err := h.casStore.metrics()
	if err != nil {
		return err
	}
	start := time.Now()
	s.Ready, s.RSS, err = h.runCasync(ctx, j.im, url+"/", start)
	after, merr := h.casStore.metrics()
	if err == nil && merr != nil {
		return merr
	}
	d := after.sub(before)
	s.StoreBytes, s.Requests = d.Bytes, d.Requests
	return err
}

// runBootfs: cold and prefetch remove the boot image and the cache
// volume, then load the boot image over HTTP and run it; warm runs it
// again with the image and the cache left from cold.
func (h *harness) runBootfs(ctx context.Context, j job, m string, s *Sample) error {
	tag, rtag := j.im.boot, "boot"
	if m == ModePrefetch {
		if h.prefetch != "" {
			return errSkipped(h.prefetch)
		}
		if j.im.prefetchTar == "" {
			return errSkipped("no prefetch image (see the notes)")
		}
		tag, rtag = j.im.prefetch, "prefetch"
	}
	docker(context.Background(), "rm", "-f", "-v", h.container)
	st, err := h.startBootfs(ctx, j.net, tag, m != ModeWarm)
	if err != nil {
		return err
	}
	start := time.Now()
	run := tag
	if m != ModeWarm {
		pulled, got, err := h.pullBoot(ctx, j.net, j.im, rtag)
		if err != nil {
			return err
		}
		s.ImageBytes, s.Requests = got.Bytes, got.Requests
		s.InDocker = time.Since(start)
		run = pulled
	}
	c := st.container(h, "", run)
	c.env, c.stats = append(c.env, "BOOTFS_LOG=info"), &s.Boot
	s.Ready, s.RSS, err = h.runContainer(ctx, j.im.wl, c, start)
	if run != tag {
		err = errors.Join(err, keepBoot(context.Background(), run, tag))
	}
	d, merr := st.fetched(h)
	if err == nil && merr != nil {
		return merr
	}
	s.StoreBytes = d.Bytes
	s.Requests += d.Requests
	return err
}

// bootfsStart is a boot image about to start over a network: where its
// containers reach the store and the image archive, and the store's
// counters before.
type bootfsStart struct {
	storeURL string
	before   counters
}

// startBootfs readies a start of the boot image tag over network n: with
// cold, the image and the cache volume removed first; then the volume
// made, the page cache dropped and the store's counters read.
func (h *harness) startBootfs(ctx context.Context, n Network, tag string, cold bool) (bootfsStart, error) {
	if cold {
		if err := removeImage(ctx, tag); err != nil {
			return bootfsStart{}, err
		}
		if err := h.clearBoots(ctx, n); err != nil {
			return bootfsStart{}, err
		}
		docker(context.Background(), "volume", "rm", "-f", h.volume)
	}
	if _, err := docker(ctx, "volume", "create", h.volume); err != nil {
		return bootfsStart{}, err
	}
	var st bootfsStart
	var err error
	if st.storeURL, err = h.url(n, h.store.url); err != nil {
		return bootfsStart{}, err
	}
	if err := dropCaches(); err != nil {
		return bootfsStart{}, err
	}
	if st.before, err = h.store.metrics(); err != nil {
		return bootfsStart{}, err
	}
	return st, nil
}

// container is the docker run of the boot image tag as name ("": the
// harness's one) on the store and the cache volume, its RSS watched.
func (st bootfsStart) container(h *harness, name, tag string) containerRun {
	return containerRun{
		name: name, image: tag, boot: true, watchRSS: true,
		env:     []string{"BOOTFS_STORE=" + st.storeURL},
		volumes: []string{h.volume + ":/.bootfs/cache"},
	}
}

// fetched returns what the store has sent since st.
func (st bootfsStart) fetched(h *harness) (counters, error) {
	after, err := h.store.metrics()
	if err != nil {
		return counters{}, err
	}
	return after.sub(st.before), nil
}

// errSkipped marks a mode that cannot run here; the report shows the
// reason instead of numbers, and it does not count as a failure.
type errSkipped string

func (e errSkipped) Error() string { return "skipped: " + string(e) }
