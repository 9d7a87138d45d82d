package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// registry is a Debian docker-registry (distribution) on 127.0.0.1 with
// its own configuration and storage under the scratch directory. Its
// access log, one line per request, is how the harness counts what a
// pull fetched from it.
type registry struct {
	addr string // host:port
	log  string // the file its output goes to
	cmd  *exec.Cmd
}

// registryConfig is distribution's configuration: filesystem storage,
// plain HTTP on addr, and the access log on.
const registryConfig = `version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`

// startRegistry starts docker-registry on a free loopback port; it stops
// at cleanup.
func (h *harness) startRegistry(ctx context.Context) (*registry, error) {
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		return nil, fmt.Errorf("the registry modes need Debian's docker-registry (apt-get install docker-registry, or scripts/setup.sh): %w", err)
	}
	dir := filepath.Join(h.opts.Work, "registry")
	if err := os.MkdirAll(filepath.Join(dir, "storage"), 0o755); err != nil {
		return nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(conf, fmt.Appendf(nil, registryConfig, filepath.Join(dir, "storage"), addr), 0o644); err != nil {
		return nil, err
	}
	r := &registry{addr: addr, log: filepath.Join(dir, "access.log")}
	out, err := os.Create(r.log)
	if err != nil {
		return nil, err
	}
	r.cmd = exec.Command(bin, "serve", conf)
	r.cmd.Stdout, r.cmd.Stderr = out, out
	if err := r.cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start docker-registry: %w", err)
	}
	out.Close()
	h.clean.add(func() { r.cmd.Process.Kill(); r.cmd.Wait() })
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v2/", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return r, nil
			}
		}
	}
	b, _ := os.ReadFile(r.log)
	return nil, fmt.Errorf("docker-registry serve %s did not answer on %s: %s", conf, addr, tail(string(b), 1000))
}

// ref names repo:tag in the registry as reached through host (the
// registry itself or a proxy in front of it).
func ref(host, repo, tag string) string {
	return strings.TrimPrefix(host, "http://") + "/" + repo + ":" + tag
}

// mark is a position in the access log.
func (r *registry) mark() int64 {
	fi, err := os.Stat(r.log)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// accessLine is the combined log format's request, status, size and
// user agent: 127.0.0.1 - - [date] "GET /v2/… HTTP/1.1" 200 1234 "referer" "agent".
var accessLine = regexp.MustCompile(`"([A-Z]+) (\S+) [^"]*" (\d{3}) (\d+|-)(?: "[^"]*" "([^"]*)")?`)

// access is what the registry's log says it served: the GET and HEAD
// requests of Docker (its user agent starts with docker/: an image pull)
// and of every other client (boot reading chunks, ctr-remote, the
// snapshotter), and the other requests (a push's POST, PATCH and PUT).
type access struct {
	Docker, Others counters
	Uploads        int64
}

// reads is every GET and HEAD, whoever sent it.
func (a access) reads() counters {
	return counters{Requests: a.Docker.Requests + a.Others.Requests, Bytes: a.Docker.Bytes + a.Others.Bytes}
}

// since returns the GET and HEAD requests and body bytes the registry
// served after mark.
func (r *registry) since(mark int64) (counters, error) {
	a, err := r.accessSince(mark)
	return a.reads(), err
}

// accessSince returns what the registry served after mark. The log is
// written as each response ends, so it waits a moment for the last lines.
func (r *registry) accessSince(mark int64) (access, error) {
	time.Sleep(200 * time.Millisecond)
	f, err := os.Open(r.log)
	if err != nil {
		return access{}, err
	}
	defer f.Close()
	if _, err := f.Seek(mark, 0); err != nil {
		return access{}, err
	}
	return parseAccessLog(f)
}

func parseAccessLog(f *os.File) (access, error) {
	var a access
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m := accessLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue // the registry's own log lines
		}
		if m[1] != http.MethodGet && m[1] != http.MethodHead {
			a.Uploads++
			continue
		}
		c := &a.Others
		if strings.HasPrefix(m[5], "docker/") {
			c = &a.Docker
		}
		c.Requests++
		if n, err := strconv.ParseInt(m[4], 10, 64); err == nil {
			c.Bytes += n
		}
	}
	return a, sc.Err()
}

// push tags the local image tag as repo:tag of the registry and pushes it
// over loopback, unshaped: this is setup, not the measured pull.
func (h *harness) push(ctx context.Context, tag, repo, rtag string) error {
	dst := ref(h.registry.addr, repo, rtag)
	if _, err := docker(ctx, "tag", tag, dst); err != nil {
		return err
	}
	defer docker(context.Background(), "rmi", dst)
	_, err := docker(ctx, "push", dst)
	return err
}

// pullCold removes im's original and every tag of its pull, so that the
// node has none of its layers, drops the page cache, then starts the
// clock and pulls it through network n. It returns the pulled reference
// (the caller removes it), where the registry's log was and the start.
func (h *harness) pullCold(ctx context.Context, im *image, n Network) (pulled string, mark int64, start time.Time, err error) {
	host, err := h.url(n, "http://"+h.registry.addr)
	if err != nil {
		return "", 0, time.Time{}, err
	}
	pulled = ref(host, im.repo(), "orig")
	for _, t := range []string{im.orig, pulled} {
		if err := removeImage(ctx, t); err != nil {
			return "", 0, time.Time{}, err
		}
	}
	if err := dropCaches(); err != nil {
		return "", 0, time.Time{}, err
	}
	mark = h.registry.mark()
	start = time.Now()
	if _, err := docker(ctx, "pull", "-q", pulled); err != nil {
		return pulled, 0, time.Time{}, err
	}
	return pulled, mark, start, nil
}

// clearBoots readies a node with no boot image at all, as a user's node
// before its first bootfs start: every boot image shares its first
// layer (boot), which a pull would otherwise skip. It removes every
// image's boot images, local and pulled through network n, and runs
// before a start's clock does.
func (h *harness) clearBoots(ctx context.Context, n Network) error {
	if h.registry == nil {
		return nil
	}
	host, err := h.url(n, "http://"+h.registry.addr)
	if err != nil {
		return err
	}
	host = strings.TrimPrefix(host, "http://")
	for _, im := range h.images {
		for _, t := range []string{im.boot, im.prefetch, ref(host, ociRepo, im.wl.Name), ref(host, im.repo(), "boot"), ref(host, im.repo(), "prefetch")} {
			if err := removeImage(ctx, t); err != nil {
				return err
			}
		}
	}
	return nil
}

// pullBoot brings im's boot image to the node as a user's node gets it:
// docker pull of its registry tag rtag (im's repository) through network
// n, after clearBoots. It returns the reference pulled, which the timed
// docker run uses as a user's would, and what the registry sent for the
// pull; keepBoot then names it as the harness's local tag.
func (h *harness) pullBoot(ctx context.Context, n Network, im *image, rtag string) (string, counters, error) {
	if h.registry == nil {
		return "", counters{}, errors.New("no registry to pull the boot image from")
	}
	host, err := h.url(n, "http://"+h.registry.addr)
	if err != nil {
		return "", counters{}, err
	}
	pulled := ref(strings.TrimPrefix(host, "http://"), im.repo(), rtag)
	mark := h.registry.mark()
	if _, err := docker(ctx, "pull", "-q", pulled); err != nil {
		return "", counters{}, err
	}
	got, err := h.registry.since(mark)
	return pulled, got, err
}

// keepBoot tags the pulled boot image as tag, the name the warm mode and
// the extras run, and drops the pulled name; after the timed start.
func keepBoot(ctx context.Context, pulled, tag string) error {
	if _, err := docker(ctx, "tag", pulled, tag); err != nil {
		return err
	}
	return removeImage(ctx, pulled)
}

// runRegistryPull: from a node without the image, docker pull through the
// network's link, then docker run, as a user without bootfs would.
func (h *harness) runRegistryPull(ctx context.Context, j job, s *Sample) error {
	docker(context.Background(), "rm", "-f", "-v", h.container)
	pulled, mark, start, err := h.pullCold(ctx, j.im, j.net)
	if pulled != "" {
		defer removeImage(context.Background(), pulled)
	}
	if err != nil {
		return err
	}
	s.Ready, _, err = h.runContainer(ctx, j.im.wl, containerRun{image: pulled}, start)
	got, lerr := h.registry.since(mark)
	if err == nil && lerr != nil {
		return lerr
	}
	s.ImageBytes, s.Requests = got.Bytes, got.Requests
	return err
}
