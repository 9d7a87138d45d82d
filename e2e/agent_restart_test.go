package e2e

import (
	"bytes"
	"crypto/md5"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// workerPID returns the PID of the agent's worker, the holder's one
// child, once it is not old (0: any) and serves as the holder's restarts-th
// restart.
func (a *agent) workerPID(t *testing.T, old, restarts int) int {
	t.Helper()
	holder := a.cmd.Process.Pid
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var kids []int
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", holder))
		for _, f := range tasks {
			b, _ := os.ReadFile(f)
			for _, s := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(s); err == nil {
					kids = append(kids, pid)
				}
			}
		}
		if len(kids) == 1 && kids[0] != old {
			// Serving once it answers /metrics, after it has taken
			// the running containers over.
			if n, err := a.tryMetric("worker_restarts_total"); err == nil && n == float64(restarts) {
				return kids[0]
			}
		}
	}
	t.Fatalf("the agent (pid %d) has no new worker besides %d in 20s; log:\n%s", holder, old, a.log.String())
	return 0
}

// tryMetric is metric, failing with an error.
func (a *agent) tryMetric(name string) (float64, error) {
	resp, err := http.Get("http://" + a.metrics + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "bootfs_agent_"+name+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("no metric %s", name)
}

// TestAgentRestartNoFailedReads: a container reads files it has not read
// before, one after the other, while the agent's worker is killed
// (kill -9) and replaced (SIGHUP to bootfs-agent, after the binary on disk
// was replaced, as an upgrade does) three times each: no read fails,
// every file's bytes are the original's, each new worker runs the binary
// on disk, and a new container starts after each restart.
func TestAgentRestartNoFailedReads(t *testing.T) {
	e := setup(t)
	root := filepath.Join(t.TempDir(), "many")
	if err := busyboxTree(root, filepath.Join(e.tmp, "bb", "bin", "busybox")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "many"), 0o755); err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for i := range 300 {
		name := fmt.Sprintf("many/f%03d", i)
		data := bytes.Repeat([]byte(fmt.Sprintf("%s %d ", name, i*7919)), 64<<10/12)
		if err := os.WriteFile(filepath.Join(root, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&want, "%x  /%s\n", md5.Sum(data), name)
	}
	orig := e.prefix + "/many-restart:orig"
	if err := dockerImport(root, orig, `CMD ["/bin/sh"]`); err != nil {
		t.Fatal(err)
	}
	img := e.prefix + "/many-restart:boot"
	if _, err := e.convert(orig, img, e.store); err != nil {
		t.Fatal(err)
	}
	// The agent runs from a directory of its own, where the test
	// replaces it as an upgrade would (a new file renamed over it).
	ae := *e
	ae.bin = t.TempDir()
	upgrade := func() uint64 {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(e.bin, "bootfs-agent"))
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(ae.bin, "bootfs-agent")
		if err := os.WriteFile(dst+".new", b, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(dst+".new", dst); err != nil {
			t.Fatal(err)
		}
		return inode(t, dst)
	}
	onDisk := upgrade()
	a := startAgent(t, &ae, e.storeURL)
	worker := a.workerPID(t, 0, 0)
	name := e.prefix + "-agent-restart"
	startDetached(t, name, a.flags(), img, "sh", "-c", "echo start; for f in /many/*; do md5sum $f || echo FAIL $f; sleep 0.05; done; echo DONE")
	waitLog(t, name, "start")

	for i, how := range []string{"kill", "hup", "kill", "hup", "kill", "hup"} {
		time.Sleep(500 * time.Millisecond) // some files read meanwhile
		switch how {
		case "kill":
			syscall.Kill(worker, syscall.SIGKILL)
		case "hup":
			onDisk = upgrade()
			a.cmd.Process.Signal(syscall.SIGHUP)
		}
		worker = a.workerPID(t, worker, i+1)
		if got := inode(t, fmt.Sprintf("/proc/%d/exe", worker)); got != onDisk {
			t.Errorf("restart %d (%s): the new worker runs inode %d, not the binary on disk (%d)", i+1, how, got, onDisk)
		}
		if got := e.run(t, false, a.flags(), e.bbBoot, "cat", "/data/hello"); got.code != 0 || got.stdout != "hello from the image\n" {
			t.Errorf("a new container after restart %d (%s): exit %d, %q; stderr: %s", i+1, how, got.code, got.stdout, got.stderr)
		}
	}
	if logs, _ := exec.Command("docker", "logs", name).CombinedOutput(); bytes.Contains(logs, []byte("DONE")) {
		t.Fatalf("the container read every file before the last restart: the test proves nothing; make it read more")
	}
	waitLog(t, name, "DONE")
	logs, _ := exec.Command("docker", "logs", name).CombinedOutput()
	got := strings.TrimSuffix(strings.TrimPrefix(string(logs), "start\n"), "DONE\n")
	if got != want.String() {
		t.Errorf("the container's reads across 6 restarts of the worker:\n%s\nwant the original's %d checksums", got, strings.Count(want.String(), "\n"))
	}
	if n := a.metric(t, "worker_restarts_total"); n != 6 {
		t.Errorf("worker_restarts_total = %v, want 6", n)
	}
}

// inode returns the inode number of the file name names.
func inode(t *testing.T, name string) uint64 {
	t.Helper()
	fi, err := os.Stat(name)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}
