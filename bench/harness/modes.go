package harness

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/bench/shaper"
	"github.com/bootfs/bootfs/boot"
)

// Sample is one run of one workload in one mode on one network.
type Sample struct {
	Image, Network, Mode string
	// Ready is the time from the start of the pull (or mount) until the
	// workload exited successfully or a server logged that it was ready.
	Ready time.Duration
	// ImageBytes were received by docker load; StoreBytes and Requests
	// were served by the chunk store.
	ImageBytes, StoreBytes, Requests int64
	// InDocker is the time from the start until the boot image was in
	// Docker (loaded or pulled), for the bootfs modes that start
	// without it; the rest of Ready is docker run.
	InDocker time.Duration `json:",omitempty"`
	// RSS is the peak resident set of the FUSE process (boot or casync);
	// 0 where there is none.
	RSS int64
	// Boot is boot's own stats line, for the bootfs modes whose boot
	// runs in the container (not through the agent); nil where there is
	// none.
	Boot *BootStats `json:",omitempty"`
	// Err says why the run failed; Skipped why the mode cannot run here.
	Err, Skipped string
}

// Fetched is everything that crossed the network.
func (s Sample) Fetched() int64 { return s.ImageBytes + s.StoreBytes }

// runTimeout bounds one workload run.
const runTimeout = 5 * time.Minute

// url returns the address of upstream as seen over network n: upstream
// itself on loopback, else a shaping proxy in front of it. Every proxy of
// one network shares that network's link, as the servers of one node do.
func (h *harness) url(n Network, upstream string) (string, error) {
	if !n.Shaped() {
		return upstream, nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	key := n.Name + " " + upstream
	if p, ok := h.proxies[key]; ok {
		return "http://" + p.Addr(), nil
	}
	link, ok := h.links[n.Name]
	if !ok {
		var err error
		if link, err = shaper.NewNetwork(n.Options()); err != nil {
			return "", err
		}
		h.links[n.Name] = link
	}
	p, err := link.Listen("127.0.0.1:0", strings.TrimPrefix(upstream, "http://"))
	if err != nil {
		return "", err
	}
	h.proxies[key] = p
	h.clean.add(func() { p.Close() })
	return "http://" + p.Addr(), nil
}

// output collects a run's combined output, keeps its last 64 KiB and
// signals when a line matches the workload's ready pattern.
type output struct {
	mu    sync.Mutex
	buf   []byte
	ready chan struct{}
	once  sync.Once
}

func watchOutput(r io.Reader, w Workload) *output {
	o := &output{ready: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			o.mu.Lock()
			o.buf = append(o.buf, line...)
			o.buf = append(o.buf, '\n')
			if len(o.buf) > 64<<10 {
				o.buf = o.buf[len(o.buf)-64<<10:]
			}
			o.mu.Unlock()
			if w.Ready != nil && w.Ready.MatchString(line) {
				o.once.Do(func() { close(o.ready) })
			}
		}
		io.Copy(io.Discard, r)
	}()
	return o
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return string(o.buf)
}

// process is a started workload: a docker run or a chroot.
type process struct {
	wait <-chan error
	out  *output
	stop func() // ends a server gracefully
}

// startProcess starts cmd with w's stdin, watching its combined output
// for w's ready line.
func startProcess(cmd *exec.Cmd, w Workload) (process, error) {
	if w.Stdin != "" {
		cmd.Stdin = strings.NewReader(w.Stdin)
	}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	out := watchOutput(pr, w)
	if err := cmd.Start(); err != nil {
		pw.Close()
		return process{}, err
	}
	wait := make(chan error, 1)
	go func() { err := cmd.Wait(); pw.Close(); wait <- err }()
	return process{wait: wait, out: out}, nil
}

// await waits until the workload is ready (a server) or has exited
// successfully, and returns the time since start. A server is then stopped.
func await(ctx context.Context, w Workload, p process, start time.Time) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, runTimeout)
	defer cancel()
	if w.Ready != nil {
		select {
		case <-p.out.ready:
			took := time.Since(start)
			p.stop()
			select {
			case <-p.wait:
			case <-time.After(30 * time.Second):
			}
			return took, nil
		case err := <-p.wait:
			return 0, fmt.Errorf("%s exited before it was ready (%v): %s", w.Name, err, tail(p.out.String(), 1500))
		case <-ctx.Done():
			p.stop()
			return 0, fmt.Errorf("%s not ready: %w: %s", w.Name, ctx.Err(), tail(p.out.String(), 1500))
		}
	}
	select {
	case err := <-p.wait:
		took := time.Since(start)
		if err != nil {
			return 0, fmt.Errorf("%s failed: %v: %s", w.Name, err, tail(p.out.String(), 1500))
		}
		// The reader may still hold the last lines for a moment.
		for i := 0; i < 100 && !strings.Contains(p.out.String(), w.Want); i++ {
			time.Sleep(5 * time.Millisecond)
		}
		if !strings.Contains(p.out.String(), w.Want) {
			return 0, fmt.Errorf("%s printed no %q: %s", w.Name, w.Want, tail(p.out.String(), 1500))
		}
		return took, nil
	case <-ctx.Done():
		p.stop()
		return 0, fmt.Errorf("%s did not finish: %w (the limit is %v)", w.Name, ctx.Err(), runTimeout)
	}
}

// containerRun is one docker run of a workload.
type containerRun struct {
	name     string // the container's name; "" is the harness's one
	image    string
	boot     bool // a boot image: add the FUSE privilege flags
	env      []string
	volumes  []string
	watchRSS bool
	// stats, if set, receives boot's stats line (the caller sets
	// BOOTFS_LOG=info); it is left nil when boot printed none.
	stats **BootStats
}

// runContainer runs the workload in a container and returns its time to
// ready counted from start and, if asked, the peak RSS of the container's
// init (boot).
func (h *harness) runContainer(ctx context.Context, w Workload, c containerRun, start time.Time) (time.Duration, int64, error) {
	name := c.name
	if name == "" {
		name = h.container
	}
	// -v: the anonymous cache volume of a boot image run without one
	// (through the agent) goes with its container.
	docker(context.Background(), "rm", "-f", "-v", name)
	defer docker(context.Background(), "rm", "-f", "-v", name)
	args := []string{"run", "--name", name, "--pull", "never", "--network", "host"}
	if w.Stdin != "" {
		args = append(args, "-i")
	}
	if c.boot {
		args = append(args, h.runFlags...)
	}
	for _, e := range c.env {
		args = append(args, "-e", e)
	}
	for _, v := range c.volumes {
		args = append(args, "-v", v)
	}
	args = append(append(args, c.image), w.Argv...)
	cmd := exec.CommandContext(ctx, "docker", args...)
	p, err := startProcess(cmd, w)
	if err != nil {
		return 0, 0, err
	}
	var rw *rssWatcher
	if c.watchRSS {
		var last time.Time
		rw = watchRSS(func() int {
			if time.Since(last) < 50*time.Millisecond {
				return 0
			}
			last = time.Now()
			return containerPid(name)
		})
	}
	p.stop = func() { docker(context.Background(), "stop", "-t", "20", name) }
	took, err := await(ctx, w, p, start)
	if c.stats != nil {
		if b, ok := parseBootStats(p.out.String()); ok {
			*c.stats = &b
		}
	}
	var rss int64
	if rw != nil {
		rss = rw.Stop()
	}
	return took, rss, err
}

// casyncRun holds the mounts of one casync mount + chroot run.
type casyncRun struct {
	dir             string
	mnt, rw, merged string
	casync          *exec.Cmd
	casyncDone      chan error
}

// mountCasync starts `casync mount` of index from store and waits until
// the mount is there.
func (h *harness) mountCasync(ctx context.Context, index, store, mnt string) (*exec.Cmd, chan error, error) {
	cmd := exec.Command("casync", "mount", "--store="+store, index, mnt)
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start casync mount: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(2 * time.Minute)
	for !isMountpoint(mnt) {
		select {
		case err := <-done:
			done <- err
			return nil, nil, fmt.Errorf("casync mount --store=%s %s exited: %v: %s", store, index, err, tail(log.String(), 1000))
		case <-ctx.Done():
			stopCasync(cmd, done, mnt)
			return nil, nil, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stopCasync(cmd, done, mnt)
			return nil, nil, fmt.Errorf("casync mount of %s did not appear on %s", index, mnt)
		}
	}
	return cmd, done, nil
}

func stopCasync(cmd *exec.Cmd, done chan error, mnt string) {
	unmount(mnt)
	syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// runCasync mounts the image's casync index from store, puts a tmpfs
// overlay over it (a server needs to write), binds /dev and mounts /proc,
// and runs the workload with chroot as the image's user. It returns the
// time to ready counted from start and casync's peak RSS.
func (h *harness) runCasync(ctx context.Context, im *image, store string, start time.Time) (time.Duration, int64, error) {
	r := &casyncRun{dir: filepath.Join(h.opts.Work, "casync-run")}
	r.mnt, r.rw, r.merged = filepath.Join(r.dir, "mnt"), filepath.Join(r.dir, "rw"), filepath.Join(r.dir, "merged")
	for _, d := range []string{r.mnt, r.rw, r.merged} {
		unmount(d)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return 0, 0, err
		}
	}
	var rw *rssWatcher
	defer func() {
		if rw != nil {
			rw.Stop()
		}
		for _, d := range []string{filepath.Join(r.merged, "proc"), filepath.Join(r.merged, "dev"), r.merged, r.rw} {
			unmount(d)
		}
		if r.casync != nil {
			stopCasync(r.casync, r.casyncDone, r.mnt)
		}
	}()
	var err error
	if r.casync, r.casyncDone, err = h.mountCasync(ctx, im.casIndex, store, r.mnt); err != nil {
		return 0, 0, err
	}
	pid := r.casync.Process.Pid
	rw = watchRSS(func() int { return pid })
	if err := unix.Mount("tmpfs", r.rw, "tmpfs", 0, "mode=0755"); err != nil {
		return 0, 0, fmt.Errorf("mount tmpfs on %s: %w", r.rw, err)
	}
	for _, d := range []string{"upper", "work"} {
		if err := os.Mkdir(filepath.Join(r.rw, d), 0o755); err != nil {
			return 0, 0, err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s/upper,workdir=%s/work", r.mnt, r.rw, r.rw)
	if err := unix.Mount("overlay", r.merged, "overlay", 0, opts); err != nil {
		return 0, 0, fmt.Errorf("mount overlay %s on %s: %w", opts, r.merged, err)
	}
	for _, d := range []string{"dev", "proc"} {
		if err := os.MkdirAll(filepath.Join(r.merged, d), 0o755); err != nil {
			return 0, 0, err
		}
	}
	if err := unix.Mount("/dev", filepath.Join(r.merged, "dev"), "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return 0, 0, fmt.Errorf("bind /dev into %s: %w", r.merged, err)
	}
	if err := unix.Mount("proc", filepath.Join(r.merged, "proc"), "proc", 0, ""); err != nil {
		return 0, 0, fmt.Errorf("mount /proc in %s: %w", r.merged, err)
	}
	w := im.wl
	args := []string{}
	home := "/root"
	if w.User != "" {
		u, err := imageUser(im.rootfs, w.User)
		if err != nil {
			return 0, 0, err
		}
		groups := make([]string, len(u.Groups))
		for i, g := range u.Groups {
			groups[i] = strconv.Itoa(g)
		}
		args = append(args, fmt.Sprintf("--userspec=%d:%d", u.UID, u.GID), "--groups="+strings.Join(groups, ","))
		home = u.Home
	}
	args = append(append(args, r.merged), w.Argv...)
	cmd := exec.CommandContext(ctx, "chroot", args...)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + home}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p, err := startProcess(cmd, w)
	if err != nil {
		return 0, 0, err
	}
	pg := cmd.Process.Pid
	stop := func() {
		syscall.Kill(-pg, syscall.SIGINT)
		go func() {
			time.Sleep(20 * time.Second)
			syscall.Kill(-pg, syscall.SIGKILL)
		}()
	}
	p.stop = stop
	took, err := await(ctx, w, p, start)
	if err != nil {
		syscall.Kill(-pg, syscall.SIGKILL)
	}
	rss := rw.Stop()
	rw = nil
	return took, rss, err
}

// imageUser resolves a USER of the image whose root filesystem is rootfs
// from its /etc/passwd and /etc/group, as Docker and boot do.
func imageUser(rootfs, spec string) (boot.User, error) {
	passwd, err := os.Open(filepath.Join(rootfs, "etc/passwd"))
	if err != nil {
		return boot.User{}, err
	}
	defer passwd.Close()
	group, err := os.Open(filepath.Join(rootfs, "etc/group"))
	if err != nil {
		return boot.User{}, err
	}
	defer group.Close()
	return boot.ResolveUser(spec, passwd, group)
}
