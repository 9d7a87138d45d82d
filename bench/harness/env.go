package harness

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/boot"
)

// prefix names every container, image and volume the harness makes, so
// that it never touches anyone else's: bootfs-bench, or BENCH_PREFIX so
// that two runs on one engine keep out of each other's way.
var prefix = cmp.Or(os.Getenv("BENCH_PREFIX"), "bootfs-bench")

// validPrefix is what Docker takes as the first part of a repository.
var validPrefix = regexp.MustCompile(`^[a-z0-9]+(?:[._-][a-z0-9]+)*$`)

// cleanups is a stack of undo functions, run in reverse at the end of Run
// whatever happened, Ctrl-C included.
type cleanups struct {
	mu sync.Mutex
	fs []func()
}

func (c *cleanups) add(f func()) {
	c.mu.Lock()
	c.fs = append(c.fs, f)
	c.mu.Unlock()
}

func (c *cleanups) run() {
	c.mu.Lock()
	fs := c.fs
	c.fs = nil
	c.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

// command runs name with args and returns its standard output; an error
// carries the command line and its standard error.
func command(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, tail(stderr.String(), 2000))
	}
	return stdout.String(), nil
}

// tail returns at most the last n bytes of s.
func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// docker runs the Docker CLI. Cleanup calls pass context.Background so
// that they still run after Ctrl-C.
func docker(ctx context.Context, args ...string) (string, error) {
	return command(ctx, "docker", args...)
}

// dropCaches writes back dirty pages and drops the page cache, dentries
// and inodes, so that the next run reads from disk.
func dropCaches() error {
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		return fmt.Errorf("drop the page cache: %w (the harness needs root on a machine that allows it)", err)
	}
	return nil
}

// freeAddr returns a free 127.0.0.1 address.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// storeServer is a `chunkstore serve --http` on loopback.
type storeServer struct {
	url string
	cmd *exec.Cmd
	log bytes.Buffer
}

// serveStore starts chunkstore serve over dir on a free loopback port;
// it stops at cleanup.
func (h *harness) serveStore(dir string) (*storeServer, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	s := &storeServer{url: "http://" + addr}
	s.cmd = exec.Command(filepath.Join(h.opts.Bin, "chunkstore"), "serve", "--dir", dir, "--http", addr, "--log-level", "warn")
	s.cmd.Stdout, s.cmd.Stderr = &s.log, &s.log
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start chunkstore serve: %w", err)
	}
	h.clean.add(func() { s.cmd.Process.Kill(); s.cmd.Wait() })
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := s.metrics(); err == nil {
			return s, nil
		}
	}
	return nil, fmt.Errorf("chunkstore serve --dir %s --http %s did not come up: %s", dir, addr, s.log.String())
}

// counters are what a store server has sent.
type counters struct {
	Requests int64 // read requests: GET, HEAD and batch POSTs
	Bytes    int64 // response body bytes
	// scrape is the size of the metrics body these were read from: the
	// server counts that request and its bytes once it has answered.
	scrape int64
}

// sub returns what the server sent between the scrapes d and c, less
// the scrape d itself.
func (c counters) sub(d counters) counters {
	return counters{Requests: c.Requests - d.Requests - 1, Bytes: c.Bytes - d.Bytes - d.scrape}
}

func (s *storeServer) metrics() (counters, error) {
	resp, err := http.Get(s.url + "/metrics")
	if err != nil {
		return counters{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return counters{}, fmt.Errorf("GET %s/metrics: %s", s.url, resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return counters{}, err
	}
	c, err := parseMetrics(bytes.NewReader(body))
	c.scrape = int64(len(body))
	return c, err
}

// parseMetrics reads chunkstore's Prometheus text: the read requests of
// every status (GET, HEAD, and POST, which is only the batch read: many
// chunks in one request) and the body bytes sent.
func parseMetrics(r io.Reader) (counters, error) {
	var c counters
	seen := false
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		switch {
		case name == "bootfs_chunkstore_http_sent_bytes_total":
			n, err := strconv.ParseInt(strings.TrimSpace(value), 10, 64)
			if err != nil {
				return c, fmt.Errorf("metrics line %q: %w", line, err)
			}
			c.Bytes = n
			seen = true
		case strings.HasPrefix(name, "bootfs_chunkstore_http_requests_total{") &&
			(strings.Contains(name, `method="GET"`) || strings.Contains(name, `method="HEAD"`) || strings.Contains(name, `method="POST"`)):
			n, err := strconv.ParseInt(strings.TrimSpace(value), 10, 64)
			if err != nil {
				return c, fmt.Errorf("metrics line %q: %w", line, err)
			}
			c.Requests += n
		}
	}
	if err := sc.Err(); err != nil {
		return c, err
	}
	if !seen {
		return c, errors.New("no bootfs_chunkstore_http_sent_bytes_total in the metrics: is this a chunkstore server?")
	}
	return c, nil
}

// peakRSS returns VmHWM of pid in bytes, or 0 when it is gone.
func peakRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	return parseVmHWM(string(b))
}

// peakTreeRSS returns the VmHWM of pid and of every descendant, summed.
func peakTreeRSS(pid int) int64 {
	sum := peakRSS(pid)
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if child, err := strconv.Atoi(f); err == nil {
				sum += peakTreeRSS(child)
			}
		}
	}
	return sum
}

func parseVmHWM(status string) int64 {
	for line := range strings.SplitSeq(status, "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(v)
			if len(f) == 2 && f[1] == "kB" {
				n, err := strconv.ParseInt(f[0], 10, 64)
				if err == nil {
					return n << 10
				}
			}
		}
	}
	return 0
}

// rssWatcher samples a process's peak RSS every 10 ms until stopped.
// VmHWM only grows, so the last sample is the peak up to that moment.
type rssWatcher struct {
	peak int64
	stop chan struct{}
	done chan struct{}
}

// watchRSS starts sampling the process pid() names once it is non-zero.
func watchRSS(pid func() int) *rssWatcher { return watchPeak(pid, peakRSS) }

// watchTreeRSS samples the peaks of pid() and all its descendants,
// summed: the node agent is a holder process and the worker it runs.
// The sum of each process's peak is at least the peak of their sum.
func watchTreeRSS(pid func() int) *rssWatcher { return watchPeak(pid, peakTreeRSS) }

func watchPeak(pid func() int, peakRSS func(int) int64) *rssWatcher {
	w := &rssWatcher{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		p := 0
		for {
			if p == 0 {
				p = pid()
			}
			if p > 0 {
				if v := peakRSS(p); v > w.peak {
					w.peak = v
				}
			}
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
		}
	}()
	return w
}

// Stop ends sampling and returns the peak seen, in bytes.
func (w *rssWatcher) Stop() int64 {
	close(w.stop)
	<-w.done
	return w.peak
}

// containerPid returns the host pid of a running container's init, or 0.
func containerPid(name string) int {
	out, err := exec.Command("docker", "inspect", "-f", "{{.State.Pid}}", name).Output()
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return n
}

// isMountpoint reports whether dir is a mount point in this namespace.
func isMountpoint(dir string) bool {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	mounts, err := boot.ParseMountInfo(f)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(mounts, func(m boot.MountInfo) bool { return m.Point == abs })
}

// unmount detaches dir if it is mounted.
func unmount(dir string) {
	for isMountpoint(dir) {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			return
		}
	}
}

// dirSize returns the total size of the regular files under dir.
func dirSize(dir string) (bytes int64, err error) {
	err = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			bytes += fi.Size()
		}
		return nil
	})
	return bytes, err
}

// memTotal returns the machine's memory in bytes, or 0.
func memTotal() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			f := strings.Fields(v)
			if len(f) == 2 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n << 10
			}
		}
	}
	return 0
}
