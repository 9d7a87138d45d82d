package harness

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/bootfs/bootfs/boot"
)

// The eStargz modes run the reference lazy-pull system a user would pick
// instead of bootfs: images converted with stargz-snapshotter's
// ctr-remote, pulled lazily by its snapshotter as the proxy snapshotter of
// a private containerd, and run with ctr. The private containerd has its
// own socket, root, state and configuration under the scratch directory;
// the Docker engine's containerd is never touched.

// ctrNamespace is the private containerd's namespace for everything the
// harness makes in it.
var ctrNamespace = prefix

// estargzCompression is the gzip level of the converted layers: docker
// push's (gzip's default), so that bytes compare with the registry pull.
// ctr-remote's own default, 9, takes minutes per image on a 2-core
// machine for a percent or two fewer bytes.
const estargzCompression = "6"

// daemon is a background process whose output goes to a log file.
type daemon struct {
	name string
	cmd  *exec.Cmd
	done chan error
	log  string
}

func startDaemon(name, log string, args ...string) (*daemon, error) {
	out, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	d := &daemon{name: filepath.Base(name), cmd: exec.Command(name, args...), done: make(chan error, 1), log: log}
	d.cmd.Stdout, d.cmd.Stderr = out, out
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	return d, nil
}

// exited returns the daemon's exit error if it has ended.
func (d *daemon) exited() (error, bool) {
	select {
	case err := <-d.done:
		d.done <- err
		return err, true
	default:
		return nil, false
	}
}

// stop ends the daemon with SIGTERM, and SIGKILL after grace.
func (d *daemon) stop(grace time.Duration) {
	if _, ok := d.exited(); ok {
		return
	}
	syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(grace):
		syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.done
	}
}

// logTail is the end of the daemon's log, for an error message.
func (d *daemon) logTail() string {
	b, _ := os.ReadFile(d.log)
	return tail(string(b), 1500)
}

// stargzNode is a node with a private containerd whose proxy snapshotter
// "stargz" is stargz-snapshotter, both started and stopped by the harness.
type stargzNode struct {
	dir         string // everything of the node: config, sockets, state, logs
	snapshotter string // the binary built from bench/estargz
	ctd, sgz    *daemon
}

func (n *stargzNode) socket() string    { return filepath.Join(n.dir, "containerd.sock") }
func (n *stargzNode) sgzSocket() string { return filepath.Join(n.dir, "stargz.sock") }
func (n *stargzNode) stateDirs() []string {
	return []string{filepath.Join(n.dir, "containerd-root"), filepath.Join(n.dir, "containerd-state"), filepath.Join(n.dir, "stargz-root")}
}

// containerdConfig is the private containerd's configuration (version 2,
// containerd 1.6): its own paths, no CRI, and the proxy snapshotter.
const containerdConfig = `version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  address = ""
[metrics]
  address = ""
[proxy_plugins]
  [proxy_plugins.stargz]
    type = "snapshot"
    address = %q
`

// estargzTools says why the eStargz modes cannot run here, or "".
func estargzTools() string {
	for _, t := range []struct{ bin, pkg string }{
		{"containerd", "containerd"}, {"ctr", "containerd"}, {"ctr-remote", "stargz-snapshotter"}, {"runc", "runc"},
		{"containerd-shim-runc-v2", "containerd"},
	} {
		if _, err := exec.LookPath(t.bin); err != nil {
			return fmt.Sprintf("not available: no %s (apt-get install %s, or scripts/setup.sh)", t.bin, t.pkg)
		}
	}
	return ""
}

// newStargzNode builds the snapshotter (bench/estargz, a module of its
// own) and writes the private containerd's configuration.
func (h *harness) newStargzNode(ctx context.Context) (*stargzNode, error) {
	n := &stargzNode{dir: filepath.Join(h.opts.Work, "estargz")}
	if err := os.MkdirAll(n.dir, 0o755); err != nil {
		return nil, err
	}
	n.snapshotter = filepath.Join(n.dir, "stargz-snapshotter")
	h.logf("build the stargz snapshotter (bench/estargz)")
	if _, err := command(ctx, "go", "build", "-C", filepath.Join(h.opts.Module, "bench", "estargz"), "-o", n.snapshotter, "."); err != nil {
		return nil, fmt.Errorf("build bench/estargz (its module is fetched from the Go module proxy the first time): %w", err)
	}
	conf := fmt.Sprintf(containerdConfig, n.stateDirs()[0], n.stateDirs()[1], n.socket(), n.socket()+".ttrpc", n.sgzSocket())
	if err := os.WriteFile(filepath.Join(n.dir, "containerd.toml"), []byte(conf), 0o644); err != nil {
		return nil, err
	}
	h.clean.add(n.stop)
	return n, nil
}

// start starts the snapshotter and containerd and waits until both answer.
func (n *stargzNode) start(ctx context.Context) error {
	var err error
	if n.sgz, err = startDaemon(n.snapshotter, filepath.Join(n.dir, "stargz.log"), "-address", n.sgzSocket(), "-root", n.stateDirs()[2], "-log-level", "warn"); err != nil {
		return err
	}
	if err := waitFor(ctx, n.sgz, func() bool { _, err := os.Stat(n.sgzSocket()); return err == nil }); err != nil {
		return err
	}
	if n.ctd, err = startDaemon("containerd", filepath.Join(n.dir, "containerd.log"), "--config", filepath.Join(n.dir, "containerd.toml"), "--log-level", "warn"); err != nil {
		return err
	}
	return waitFor(ctx, n.ctd, func() bool { _, err := n.ctr(ctx, "version"); return err == nil })
}

// waitFor polls ready until it holds, d exits or 30 s pass.
func waitFor(ctx context.Context, d *daemon, ready func() bool) error {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		if ready() {
			return nil
		}
		if err, ok := d.exited(); ok {
			return fmt.Errorf("%s exited (%v): %s", d.name, err, d.logTail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s did not come up in 30 s: %s", d.name, d.logTail())
}

// ctr runs ctr (or with bin, ctr-remote) against the private containerd.
func (n *stargzNode) ctr(ctx context.Context, args ...string) (string, error) {
	return n.ctrBin(ctx, "ctr", args...)
}

func (n *stargzNode) ctrBin(ctx context.Context, bin string, args ...string) (string, error) {
	return command(ctx, bin, append([]string{"--address", n.socket(), "--namespace", ctrNamespace}, args...)...)
}

// stop kills the node's tasks, stops containerd and the snapshotter (which
// unmounts its layers) and detaches any mount left under the node.
func (n *stargzNode) stop() {
	if n.ctd != nil {
		if _, ok := n.ctd.exited(); !ok {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			out, _ := n.ctr(ctx, "tasks", "ls", "-q")
			for _, id := range strings.Fields(out) {
				n.ctr(ctx, "tasks", "kill", "-s", "SIGKILL", id)
				n.ctr(ctx, "tasks", "delete", "-f", id)
			}
			cancel()
		}
		n.ctd.stop(10 * time.Second)
		n.ctd = nil
	}
	if n.sgz != nil {
		n.sgz.stop(10 * time.Second)
		n.sgz = nil
	}
	unmountUnder(n.dir)
}

// wipe stops the node and removes its state, so that the next start is a
// node that has never pulled anything.
func (n *stargzNode) wipe() error {
	n.stop()
	for _, d := range n.stateDirs() {
		if err := os.RemoveAll(d); err != nil {
			return fmt.Errorf("wipe the eStargz node: %w", err)
		}
	}
	return nil
}

// unmountUnder detaches every mount at or below dir, deepest first.
func unmountUnder(dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	mounts, err := boot.ParseMountInfo(f)
	f.Close()
	if err != nil {
		return
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		if p := mounts[i].Point; p == dir || strings.HasPrefix(p, dir+"/") {
			syscall.Unmount(p, syscall.MNT_DETACH)
		}
	}
}

// prepareEstargz puts the eStargz conversions of the original image in the
// registry: not optimized, and optimized for the workload (ctr-remote runs
// it once and puts the files it read first, behind a landmark). A
// conversion takes minutes, so it is kept in the tree cache (see
// estargzCache) and later runs import it instead. The node is left wiped.
func (h *harness) prepareEstargz(ctx context.Context, im *image) error {
	n := h.stargz
	if err := n.wipe(); err != nil {
		return err
	}
	if err := n.start(ctx); err != nil {
		return err
	}
	defer n.wipe()
	reg := h.registry.addr
	orig := ref(reg, im.repo(), "orig")
	cache := h.estargzCache(ctx, im)
	pulled := false
	w := im.wl
	for _, v := range []struct {
		tag  string
		args []string
	}{
		{"estargz", []string{"--no-optimize"}},
		{"estargz-opt", optimizeArgs(w)},
	} {
		dst := ref(reg, im.repo(), v.tag)
		// The cached archive names the image without the registry, whose
		// port changes from run to run.
		cached := prefix + ".cache/" + w.Name + ":" + v.tag
		archive := ""
		if cache != "" {
			archive = filepath.Join(cache, v.tag+".tar")
		}
		if _, err := os.Stat(archive); archive != "" && err == nil {
			h.logf("%s: %s from the cache %s", w.Name, v.tag, archive)
			// The name inside is the one of the run that made it, whose
			// BENCH_PREFIX may differ from this one's.
			if cached, err = archiveImageName(archive); err != nil {
				return err
			}
			if _, err := n.ctr(ctx, "images", "import", "--no-unpack", archive); err != nil {
				return err
			}
			if _, err := n.ctr(ctx, "images", "tag", "--force", cached, dst); err != nil {
				return err
			}
		} else {
			if !pulled {
				if _, err := n.ctr(ctx, "images", "pull", "--plain-http", orig); err != nil {
					return err
				}
				pulled = true
			}
			h.logf("%s: convert to %s with ctr-remote", w.Name, v.tag)
			args := append([]string{"image", "optimize", "--oci", "--estargz-compression-level", estargzCompression}, v.args...)
			cmd := exec.CommandContext(ctx, "ctr-remote", append(append([]string{"--address", n.socket(), "--namespace", ctrNamespace}, args...), orig, dst)...)
			if w.Stdin != "" && v.tag == "estargz-opt" {
				cmd.Stdin = strings.NewReader(w.Stdin)
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("ctr-remote %s: %w: %s", strings.Join(args, " "), err, tail(string(out), 1500))
			}
			if archive != "" {
				if err := n.export(ctx, dst, cached, archive); err != nil {
					// The run goes on; only the next one converts again.
					h.logf("%s: keep %s in the cache: %v", w.Name, v.tag, err)
				}
			}
		}
		if _, err := n.ctr(ctx, "images", "push", "--plain-http", dst); err != nil {
			return err
		}
	}
	im.estargz = true
	return nil
}

// estargzCache returns the directory that keeps im's eStargz conversions,
// beside its cached tree, or "" when there is none (the busybox tree is
// made anew each run). Its name is a digest of everything a conversion
// depends on: the tree (rootfs.sh's completion stamp, which a rebuild
// renews), the workload, the gzip level and ctr-remote's version. The
// converted layers include another run's runMarker, which nothing reads.
func (h *harness) estargzCache(ctx context.Context, im *image) string {
	if im.wl.Rootfs == "" {
		return ""
	}
	stamp, err := os.Stat(filepath.Join(im.rootfs, ".bootfs-complete"))
	if err != nil {
		return ""
	}
	version, err := command(ctx, "ctr-remote", "--version")
	if err != nil {
		return ""
	}
	wl, _ := json.Marshal(im.wl)
	sum := sha256.Sum256(fmt.Appendf(nil, "%s\n%d\n%s\n%s\n%s", im.rootfs, stamp.ModTime().UnixNano(), wl, estargzCompression, version))
	return filepath.Join(filepath.Dir(im.rootfs), fmt.Sprintf("estargz-%s-%x", im.wl.Name, sum[:8]))
}

// export writes image, named as name, to archive: a temporary file renamed
// into place, so that a cut-off export is never taken for a conversion.
func (n *stargzNode) export(ctx context.Context, image, name, archive string) error {
	if err := os.MkdirAll(filepath.Dir(archive), 0o755); err != nil {
		return err
	}
	if _, err := n.ctr(ctx, "images", "tag", "--force", image, name); err != nil {
		return err
	}
	tmp := archive + ".part"
	if _, err := n.ctr(ctx, "images", "export", tmp, name); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, archive)
}

// optimizeArgs are ctr-remote optimize's flags that run the workload as
// the benchmark does: its command, its stdin, the host's network.
func optimizeArgs(w Workload) []string {
	entry, _ := json.Marshal(w.Argv[:1])
	args, _ := json.Marshal(w.Argv[1:])
	a := []string{"--net-host", "--entrypoint", string(entry), "--args", string(args)}
	if w.Stdin != "" {
		a = append(a, "-i")
	}
	return a
}

// runEstargz: a cold node (daemons restarted, their state wiped, page
// cache dropped), then ctr-remote rpull of the eStargz image through the
// network's link (it fetches the manifest, the config and each layer's
// table of contents; the snapshotter mounts the layers lazily) and ctr
// run until ready. Bytes and requests come from the registry's log, up
// to ready; RSS is the snapshotter's, the FUSE daemon of this mode.
func (h *harness) runEstargz(ctx context.Context, j job, m string, s *Sample) error {
	if h.estargz != "" {
		return errSkipped(h.estargz)
	}
	if !j.im.estargz {
		return errSkipped("no eStargz image (see the notes)")
	}
	tag := "estargz"
	if m == ModeEstargzOpt {
		tag = "estargz-opt"
	}
	defer h.stargz.wipe()
	st, err := h.startEstargz(ctx, j.im, j.net, tag)
	if err != nil {
		return err
	}
	s.Ready, err = h.stargz.run(ctx, j.im.wl, st.image, prefix+"-run", st.start)
	got, lerr := h.registry.since(st.mark)
	s.RSS = st.rss.Stop()
	if err == nil && lerr != nil {
		return lerr
	}
	s.ImageBytes, s.Requests = got.Bytes, got.Requests
	return err
}

// estargzStart is an eStargz image rpulled on a cold node: its reference
// through the link, the watch of the snapshotter's RSS, where the
// registry's log was and when the clock started.
type estargzStart struct {
	image string
	rss   *rssWatcher
	mark  int64
	start time.Time
}

// startEstargz makes the node cold (both daemons stopped, their state
// wiped, started again, the page cache dropped), then starts the clock
// and rpulls im's tag through network n. The caller wipes the node
// after, and stops the RSS watch.
func (h *harness) startEstargz(ctx context.Context, im *image, n Network, tag string) (estargzStart, error) {
	node := h.stargz
	if err := node.wipe(); err != nil {
		return estargzStart{}, err
	}
	if err := node.start(ctx); err != nil {
		return estargzStart{}, err
	}
	host, err := h.url(n, "http://"+h.registry.addr)
	if err != nil {
		return estargzStart{}, err
	}
	st := estargzStart{image: ref(host, im.repo(), tag)}
	if err := dropCaches(); err != nil {
		return estargzStart{}, err
	}
	pid := node.sgz.cmd.Process.Pid
	st.rss = watchRSS(func() int { return pid })
	st.mark = h.registry.mark()
	st.start = time.Now()
	if _, err := node.ctrBin(ctx, "ctr-remote", "image", "rpull", "--plain-http", st.image); err != nil {
		st.rss.Stop()
		return estargzStart{}, err
	}
	return st, nil
}

// run runs the workload with ctr on the stargz snapshotter as container
// id and returns its time to ready counted from start.
func (n *stargzNode) run(ctx context.Context, w Workload, image, id string, start time.Time) (time.Duration, error) {
	args := []string{"--address", n.socket(), "--namespace", ctrNamespace, "run", "--rm", "--snapshotter", "stargz", "--net-host"}
	argv := w.Argv
	if w.Stdin != "" {
		file := filepath.Join(n.dir, id+".stdin")
		if err := os.WriteFile(file, []byte(w.Stdin), 0o644); err != nil {
			return 0, err
		}
		defer os.Remove(file)
		var m []string
		m, argv = stdinFromFile(file, w.Argv)
		args = append(args, m...)
		w.Stdin = ""
	}
	cmd := exec.CommandContext(ctx, "ctr", append(append(args, image, id), argv...)...)
	p, err := startProcess(cmd, w)
	if err != nil {
		return 0, err
	}
	p.stop = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		n.ctr(ctx, "tasks", "kill", "-s", "SIGINT", id)
	}
	return await(ctx, w, p, start)
}

// ctrStdin is where stdinFromFile mounts the workload's stdin.
const ctrStdin = "/.bootfs-bench-stdin"

// stdinFromFile returns ctr run's flags and the command that give argv
// the contents of file as its stdin, read-only bind-mounted into the
// container, instead of ctr's own stdin: ctr 1.6 closes the task's stdin
// only if its own reaches EOF after the task was created, and a short
// input that ends sooner (as soon as the shim opens the FIFO, which an
// image whose files are all prefetched does at once) leaves the workload
// waiting on stdin for ever.
func stdinFromFile(file string, argv []string) (flags, cmd []string) {
	flags = []string{"--mount", "type=bind,src=" + file + ",dst=" + ctrStdin + ",options=rbind:ro"}
	cmd = append([]string{"sh", "-c", `exec "$@" <` + ctrStdin, "sh"}, argv...)
	return flags, cmd
}

// archiveImageName returns the name ctr images import gives the image of
// an OCI archive of ctr images export: the io.containerd.image.name of
// its index.json's one manifest.
func archiveImageName(archive string) (string, error) {
	f, err := os.Open(archive)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err != nil {
			return "", fmt.Errorf("%s: no index.json (%v): not an archive of ctr images export; delete its directory to convert again", archive, err)
		}
		if path.Clean(hdr.Name) != "index.json" {
			continue
		}
		var index struct {
			Manifests []struct {
				Annotations map[string]string `json:"annotations"`
			} `json:"manifests"`
		}
		if err := json.NewDecoder(tr).Decode(&index); err != nil {
			return "", fmt.Errorf("%s: index.json: %w", archive, err)
		}
		if len(index.Manifests) != 1 || index.Manifests[0].Annotations["io.containerd.image.name"] == "" {
			return "", fmt.Errorf("%s: index.json names %d images, want one with io.containerd.image.name; delete its directory to convert again", archive, len(index.Manifests))
		}
		return index.Manifests[0].Annotations["io.containerd.image.name"], nil
	}
}
