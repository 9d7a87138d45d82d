package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// agentProc is a bootfs-agent the harness started on the host for one
// run: its own socket directory and an empty node cache.
type agentProc struct {
	sock, log string
	cmd       *exec.Cmd
	done      chan error
	once      sync.Once
}

// startAgent starts bin/bootfs-agent reading store, with a fresh cache
// and socket directory under the scratch directory, and waits for its
// socket. It is stopped at cleanup if the run does not stop it.
func (h *harness) startAgent(store string) (*agentProc, error) {
	bin := filepath.Join(h.opts.Bin, "bootfs-agent")
	if _, err := os.Stat(bin); err != nil {
		return nil, errSkipped(fmt.Sprintf("no %s (run make build)", bin))
	}
	dir := filepath.Join(h.opts.Work, "agent")
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	a := &agentProc{sock: filepath.Join(dir, "sock"), log: filepath.Join(dir, "agent.log"), done: make(chan error, 1)}
	for _, d := range []string{a.sock, filepath.Join(dir, "cache")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	out, err := os.Create(a.log)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	a.cmd = exec.Command(bin, "--socket-dir", a.sock, "--cache", filepath.Join(dir, "cache"), "--store", store)
	a.cmd.Stdout, a.cmd.Stderr = out, out
	if err := a.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start bootfs-agent: %w", err)
	}
	go func() { a.done <- a.cmd.Wait() }()
	h.clean.add(a.stop)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(a.sock, "agent.sock")); err == nil {
			return a, nil
		}
		select {
		case err := <-a.done:
			a.done <- err
			return nil, fmt.Errorf("bootfs-agent exited: %v: %s", err, a.tail())
		default:
		}
		if time.Now().After(deadline) {
			a.stop()
			return nil, fmt.Errorf("bootfs-agent made no socket in %s in 10s: %s", a.sock, a.tail())
		}
	}
}

func (a *agentProc) tail() string {
	b, _ := os.ReadFile(a.log)
	return tail(string(b), 1000)
}

func (a *agentProc) pid() int { return a.cmd.Process.Pid }

// volume is the docker run -v of a container that uses the agent.
func (a *agentProc) volume() string { return a.sock + ":/run/bootfs" }

// stop signals the agent, which exits once its containers have ended,
// and kills it if it is still there after 10 s.
func (a *agentProc) stop() {
	a.once.Do(func() {
		a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-a.done:
			a.done <- err
		case <-time.After(10 * time.Second):
			a.cmd.Process.Kill()
		}
	})
}

// agentStart is a cold start through a fresh agent: the bootfs-cold
// state (image and cache gone, page cache dropped) and the agent started
// on the shaped store, its RSS watched.
type agentStart struct {
	bootfsStart
	agent *agentProc
	rss   *rssWatcher
}

func (h *harness) startAgentRun(ctx context.Context, im *image, n Network) (agentStart, error) {
	st, err := h.startBootfs(ctx, n, im.boot, true)
	if err != nil {
		return agentStart{}, err
	}
	a, err := h.startAgent(st.storeURL)
	if err != nil {
		return agentStart{}, err
	}
	return agentStart{bootfsStart: st, agent: a, rss: watchTreeRSS(a.pid)}, nil
}

// end stops watching and the agent, and returns its peak RSS.
func (st agentStart) end() int64 {
	rss := st.rss.Stop()
	st.agent.stop()
	return rss
}

// container is the unprivileged docker run of the boot image through
// the agent's socket: no FUSE flags, no cache volume, no store.
func (st agentStart) container(name, tag string) containerRun {
	return containerRun{name: name, image: tag, volumes: []string{st.agent.volume()}}
}

// runBootfsAgent (bootfs-agent): bootfs cold through a node agent
// started for the run; the RSS is the agent's, the FUSE daemon here.
func (h *harness) runBootfsAgent(ctx context.Context, j job, s *Sample) error {
	docker(context.Background(), "rm", "-f", "-v", h.container)
	st, err := h.startAgentRun(ctx, j.im, j.net)
	if err != nil {
		return err
	}
	start := time.Now()
	pulled, got, err := h.pullBoot(ctx, j.net, j.im, "boot")
	if err != nil {
		st.end()
		return err
	}
	s.ImageBytes, s.Requests = got.Bytes, got.Requests
	s.InDocker = time.Since(start)
	s.Ready, _, err = h.runContainer(ctx, j.im.wl, st.container("", pulled), start)
	s.RSS = st.end()
	err = errors.Join(err, keepBoot(context.Background(), pulled, j.im.boot))
	d, merr := st.fetched(h)
	if err == nil && merr != nil {
		return merr
	}
	s.StoreBytes = d.Bytes
	s.Requests += d.Requests
	if err != nil {
		return fmt.Errorf("%w; agent log: %s", err, st.agent.tail())
	}
	return nil
}

// nodeAgent: one agent for the node, the boot image loaded once, every
// unprivileged docker run at once through the agent's socket.
func (h *harness) nodeAgent(ctx context.Context, im *image, n Network, row *NodeRow) error {
	st, err := h.startAgentRun(ctx, im, n)
	if err != nil {
		return err
	}
	start := time.Now()
	pulled, got, err := h.pullBoot(ctx, n, im, "boot")
	if err != nil {
		st.end()
		return err
	}
	row.Bytes, row.Requests = got.Bytes, got.Requests
	row.Ready, _, err = atOnce(func(i int) (time.Duration, int64, error) {
		return h.runContainer(ctx, im.wl, st.container(h.nodeName(i), pulled), start)
	})
	row.RSS = st.end()
	err = errors.Join(err, keepBoot(context.Background(), pulled, im.boot))
	d, merr := st.fetched(h)
	row.Bytes += d.Bytes
	row.Requests += d.Requests
	if err != nil {
		err = fmt.Errorf("%w; agent log: %s", err, st.agent.tail())
	}
	return errors.Join(err, merr)
}
