package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The drop-in suite: each scenario runs the same docker commands against
// an original image and against its converted image, and what a user sees
// (output, exit codes, health status and the probes it took, files after
// a restart, how a stop ended, signals, TTY and stdin, user, working
// directory, environment, volumes) must be the same.

// pair is an original image and its converted image.
type pair struct{ orig, boot string }

// scenario is one row of the drop-in table.
type scenario struct {
	name string
	// debian runs it on the postgres image instead of busybox.
	debian bool
	// user runs it on the busybox image with USER alice.
	user bool
	// origFlags are docker run flags the original side gets on top of the
	// scenario's own: the reference a converted container is compared
	// with where the two differ by design (the reason is in the row).
	origFlags []string
	run       func(s *side)
}

// side runs a scenario's docker commands against one image of a pair and
// writes what a user would see into a transcript. Commands name the image
// IMAGE and containers @name; the transcript shows them so, the same for
// both sides.
type side struct {
	t         *testing.T
	e         *env
	image     string
	boot      bool
	origFlags []string
	tag       string // of container and volume names: orig or boot
	out       strings.Builder
	created   []string // containers and volumes, removed at the end
	mu        sync.Mutex
}

// step is a docker command of a scenario.
type step struct {
	args  []string // after "docker": IMAGE and @name are replaced
	stdin string
	// stderr compares the command's standard error too; off where the
	// wording is the engine's and the two sides' engines differ (a
	// create error on the original is an exec error in the converted).
	stderr bool
	norm   func(string) string
}

func (s *side) name(n string) string {
	return fmt.Sprintf("%s-dropin-%s-%s", s.e.prefix, s.tag, n)
}

// expand replaces IMAGE and @name, and puts the side's run flags after
// "run" or "create".
func (s *side) expand(args []string) []string {
	var out []string
	for i, a := range args {
		switch {
		case a == "IMAGE":
			out = append(out, s.image)
		case strings.HasPrefix(a, "@"):
			out = append(out, s.name(a[1:]))
		default:
			out = append(out, a)
		}
		if i == 0 && (a == "run" || a == "create") {
			out = append(out, "--pull", "never", "--network", "host")
			if s.boot {
				// The node's cache, as a node that has run the image
				// has it: the original image is on the node too.
				out = append(out, s.e.runFlags...)
				out = append(out, "-v", nodeCache(s.e)+":"+"/.bootfs/cache")
			} else {
				out = append(out, s.origFlags...)
			}
		}
	}
	return out
}

// note adds an observation to the transcript.
// The side's container and volume names show as @name, the same on both
// sides.
func (s *side) note(format string, a ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.out.WriteString(strings.ReplaceAll(fmt.Sprintf(format+"\n", a...), s.name(""), "@"))
}

// fatalf ends the side's script; the transcript shows where.
func (s *side) fatalf(format string, a ...any) {
	s.note("FATAL: "+format, a...)
	runtime.Goexit()
}

// exec runs docker with st and returns its stdout, stderr and exit code,
// without writing the transcript.
func (s *side) exec(st step) (stdout, stderr string, code int) {
	args := s.expand(st.args)
	for i, a := range args {
		if (a == "--name" || a == "-v") && i+1 < len(args) && strings.HasPrefix(args[i+1], s.name("")) {
			s.created = append(s.created, strings.SplitN(args[i+1], ":", 2)[0])
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if st.stdin != "" {
		cmd.Stdin = strings.NewReader(st.stdin)
	}
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		s.fatalf("docker %s: %v", strings.Join(args, " "), err)
	}
	return o.String(), e.String(), code
}

// do runs a step and writes the command, its output and exit code.
func (s *side) do(st step) (stdout string, code int) {
	stdout, stderr, code := s.exec(st)
	norm := st.norm
	if norm == nil {
		norm = strings.TrimSpace
	}
	s.note("$ docker %s", strings.Join(st.args, " "))
	if o := norm(stdout); o != "" {
		s.note("%s", o)
	}
	if st.stderr && strings.TrimSpace(stderr) != "" {
		s.note("stderr: %s", strings.TrimSpace(stderr))
	}
	s.note("[exit %d]", code)
	return stdout, code
}

func (s *side) docker(args ...string) (string, int) { return s.do(step{args: args}) }

// start runs a detached container @name (docker run -d --name) and waits
// until its log has ready, if ready is not empty.
func (s *side) start(name, ready string, flags []string, args ...string) {
	a := append([]string{"run", "-d", "--name", "@" + name}, flags...)
	a = append(append(a, "IMAGE"), args...)
	if _, stderr, code := s.exec(step{args: a}); code != 0 {
		s.fatalf("docker run -d %s: exit %d: %s", name, code, stderr)
	}
	if ready != "" {
		s.waitLog(name, ready)
	}
}

func (s *side) logs(name string) string {
	out, errOut, _ := s.exec(step{args: []string{"logs", "@" + name}})
	return out + errOut
}

func (s *side) waitLog(name, want string) {
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if strings.Contains(s.logs(name), want) {
			return
		}
	}
	s.fatalf("container %s did not log %q; logs:\n%s", name, want, s.logs(name))
}

// restarted runs a docker command that starts container name again
// (restart, start) and waits until its log has one more want than
// before: the log keeps the earlier starts' lines.
func (s *side) restarted(name, want string, args ...string) {
	before := strings.Count(s.logs(name), want)
	s.docker(args...)
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if strings.Count(s.logs(name), want) > before {
			return
		}
	}
	s.fatalf("container %s did not log %q again; logs:\n%s", name, want, s.logs(name))
}

func (s *side) inspect(name, format string) string {
	out, _, _ := s.exec(step{args: []string{"inspect", "-f", format, "@" + name}})
	return strings.TrimSpace(out)
}

// waitHealth waits until the container's health is no longer starting
// and writes its status and how many probes it took: the timing of a
// health check in units of its interval.
func (s *side) waitHealth(name string) {
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var h struct {
			Status string
			Log    []struct{ ExitCode int }
		}
		if err := json.Unmarshal([]byte(s.inspect(name, "{{json .State.Health}}")), &h); err != nil {
			s.fatalf("health of %s: %v", name, err)
		}
		if h.Status != "starting" {
			var codes []string
			for _, l := range h.Log {
				codes = append(codes, fmt.Sprint(l.ExitCode))
			}
			s.note("health of %s: %s after %d probe(s), exit codes %s", name, h.Status, len(h.Log), strings.Join(codes, ","))
			return
		}
	}
	s.fatalf("health of %s still starting after 90s", name)
}

// stop runs docker stop with a grace period and writes how the container
// ended: its exit code, and whether it stopped before the grace period
// ran out or was killed at its end.
func (s *side) stop(name string, grace time.Duration, args ...string) {
	start := time.Now()
	a := append(append([]string{"stop", "-t", fmt.Sprint(int(grace.Seconds()))}, args...), "@"+name)
	if _, stderr, code := s.exec(step{args: a}); code != 0 {
		s.fatalf("docker stop %s: %s", name, stderr)
	}
	how := "within the grace period"
	if time.Since(start) >= grace {
		how = "killed at the end of the grace period"
	}
	s.note("stopped %s %s: exit code %s", name, how, s.inspect(name, "{{.State.ExitCode}}"))
}

// volumesOf returns the names of the volumes mounted in a container, but
// the node's cache.
func (s *side) volumesOf(name string) []string {
	vols := strings.Fields(s.inspect(name, `{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}`))
	return slices.DeleteFunc(vols, func(v string) bool { return v == nodeCache(s.e) })
}

// nodeCache is the cache volume the converted containers of the drop-in
// suite share, removed at the end.
func nodeCache(e *env) string {
	nodeCacheOnce.Do(func() {
		atExit(func() { exec.Command("docker", "volume", "rm", "-f", e.prefix+"-dropin-cache").Run() })
	})
	return e.prefix + "-dropin-cache"
}

var nodeCacheOnce sync.Once

// countLeft writes how many of the volumes still exist.
func (s *side) countLeft(what string, vols []string) {
	left := 0
	for _, v := range vols {
		if _, _, code := s.exec(step{args: []string{"volume", "inspect", v}}); code == 0 {
			left++
			s.created = append(s.created, v)
		}
	}
	s.note("%s: %d volume(s) left", what, left)
}

func (s *side) cleanup() {
	for _, c := range slices.Backward(s.created) {
		exec.Command("docker", "rm", "-f", "-v", c).Run()
		exec.Command("docker", "volume", "rm", "-f", c).Run()
	}
}

// differential runs sc on both images of p at once and fails t if the
// transcripts differ.
func differential(t *testing.T, e *env, p pair, sc scenario) {
	t.Helper()
	sides := []*side{
		{t: t, e: e, image: p.orig, tag: "orig", origFlags: sc.origFlags},
		{t: t, e: e, image: p.boot, boot: true, tag: "boot"},
	}
	var wg sync.WaitGroup
	for _, s := range sides {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc.run(s)
		}()
	}
	wg.Wait()
	for _, s := range sides {
		s.cleanup()
	}
	want, got := sides[0].out.String(), sides[1].out.String()
	if got != want {
		t.Errorf("%s: the converted image differs from the original%s\n%s\n--- original:\n%s\n--- converted:\n%s",
			sc.name, withFlags(sc.origFlags), firstDiff(want, got), want, got)
	}
}

func withFlags(f []string) string {
	if len(f) == 0 {
		return ""
	}
	return fmt.Sprintf(" (run with %s)", strings.Join(f, " "))
}

// firstDiff names the first line where got differs from want.
func firstDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := range max(len(w), len(g)) {
		var a, b string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			b = g[i]
		}
		if a != b {
			return fmt.Sprintf("first difference at line %d:\n  original:  %q\n  converted: %q", i+1, a, b)
		}
	}
	return ""
}

var (
	rootReady = regexp.MustCompile(`msg="root ready".*`)
	ptsNumber = regexp.MustCompile(`/dev/pts/\d+`)
	pidColumn = regexp.MustCompile(`(?m)^\s*\d+\s+`)
)

// normalizeTTY drops the pts number and the carriage returns a TTY adds.
func normalizeTTY(s string) string {
	return strings.TrimSpace(ptsNumber.ReplaceAllString(strings.ReplaceAll(s, "\r", ""), "/dev/pts/N"))
}

// normalizeProcs makes a process list comparable between an original
// run with --init and a converted one: no pids, and the init's line
// (docker-init, or boot) named "init".
func normalizeProcs(s string) string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(pidColumn.ReplaceAllString(s, "")), "\n") {
		switch {
		case strings.HasPrefix(l, "/sbin/docker-init "), strings.HasPrefix(l, "/.bootfs/boot "):
			l = "init"
		case strings.Contains(l, "docker-init") || strings.Contains(l, "/.bootfs/boot"):
			// docker top's columns: the init's command anywhere in it.
			l = "init"
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

// sleeper is a workload that says it is ready and waits.
var sleeper = []string{"sh", "-c", "echo ready; exec sleep 600"}

// dropinScenarios is the drop-in table. Every case that issue 17 lists
// is a row.
var dropinScenarios = []scenario{
	{name: "run is quiet", run: func(s *side) {
		s.do(step{args: []string{"run", "--rm", "IMAGE", "echo", "hi"}, stderr: true})
		s.do(step{args: []string{"run", "--rm", "-t", "IMAGE", "echo", "hi"}, stderr: true, norm: normalizeTTY})
	}},
	{name: "exit codes", run: func(s *side) {
		s.docker("run", "--rm", "IMAGE", "sh", "-c", "exit 7")
		s.docker("run", "--rm", "IMAGE", "no-such-command")
	}},
	// The workload is not PID 1, boot is, as docker-init is with --init:
	// a signal it sends itself has its default effect. (Signals from
	// outside behave as for a PID 1: see "docker kill -s".)
	{name: "a signal to itself", origFlags: []string{"--init"}, run: func(s *side) {
		s.docker("run", "--rm", "IMAGE", "sh", "-c", "kill -9 $$; echo survived")
	}},
	{name: "user, workdir and env of run", run: func(s *side) {
		s.do(step{args: []string{"run", "--rm", "-u", "1000:29", "-w", "/data", "-e", "A=b c", "IMAGE", "sh", "-c", "id; pwd; env | sort"}, norm: normalizeEnv})
		s.docker("run", "--rm", "IMAGE", "pwd")
		s.do(step{args: []string{"run", "--rm", "-u", "alice", "IMAGE", "sh", "-c", "id; echo $HOME; touch /root/x"}, stderr: true})
	}},
	{name: "tty and stdin of run", run: func(s *side) {
		s.do(step{args: []string{"run", "--rm", "-t", "IMAGE", "sh", "-c", "tty; [ -t 0 ] && echo stdin is a tty"}, norm: normalizeTTY})
		s.do(step{args: []string{"run", "--rm", "-i", "IMAGE", "sh", "-c", "wc -l; cat /dev/stdin"}, stdin: "one\ntwo\n"})
	}},
	{name: "exec runs in the workload's root", run: func(s *side) {
		s.start("c", "ready", []string{"-e", "GREETING=hi"}, "sh", "-c", "echo marked > /tmp/mark; echo ready; exec sleep 600")
		s.do(step{args: []string{"exec", "@c", "ls", "/"}, stderr: true})
		s.do(step{args: []string{"exec", "@c", "cat", "/etc/os-release", "/tmp/mark"}, stderr: true})
		s.docker("exec", "@c", "sh", "-c", "echo from-exec > /tmp/x")
		s.docker("exec", "@c", "cat", "/tmp/x")
		s.docker("exec", "@c", "sh", "-c", "grep -c '[.]bootfs' /proc/mounts; ls -a / | grep -c '[.]bootfs'")
	}},
	{name: "exec user, workdir and env", run: func(s *side) {
		s.start("c", "ready", []string{"-e", "GREETING=hi"}, sleeper...)
		s.do(step{args: []string{"exec", "@c", "sh", "-c", "id; pwd; env | sort"}, norm: normalizeEnv})
		s.do(step{args: []string{"exec", "-u", "1000", "-w", "/data", "-e", "X=1", "@c", "sh", "-c", "id; pwd; echo $HOME $X $GREETING"}, stderr: true})
		s.do(step{args: []string{"exec", "-u", "alice", "@c", "id"}, stderr: true})
	}},
	{name: "exec into a --user container", run: func(s *side) {
		s.start("c", "ready", []string{"--user", "1000"}, sleeper...)
		s.do(step{args: []string{"exec", "@c", "sh", "-c", "id; echo $HOME; pwd"}, stderr: true})
		s.do(step{args: []string{"exec", "-u", "0", "@c", "id"}, stderr: true})
		s.do(step{args: []string{"exec", "-u", "nobody", "@c", "sh", "-c", "id; touch /root/x"}, stderr: true})
	}},
	{name: "exec tty, stdin and exit codes", run: func(s *side) {
		s.start("c", "ready", nil, sleeper...)
		s.do(step{args: []string{"exec", "-t", "@c", "sh", "-c", "tty; echo hi"}, norm: normalizeTTY})
		s.do(step{args: []string{"exec", "-i", "@c", "sh", "-c", "wc -l; cat /dev/stdin"}, stdin: "one\ntwo\n"})
		s.docker("exec", "@c", "sh", "-c", "exit 3")
		s.do(step{args: []string{"exec", "@c", "no-such-command"}, stderr: true})
	}},
	// boot is the container's PID 1, as docker-init is with --init: the
	// process list is the one of the original run with --init.
	{name: "exec sees the processes", origFlags: []string{"--init"}, run: func(s *side) {
		s.start("c", "ready", nil, sleeper...)
		s.do(step{args: []string{"exec", "@c", "ps", "-o", "pid,args"}, norm: normalizeProcs})
	}},
	{name: "health check of run", run: func(s *side) {
		s.start("ok", "", []string{"--health-cmd", "cat /etc/os-release", "--health-interval", "1s", "--health-retries", "2"}, "sleep", "600")
		s.start("bad", "", []string{"--health-cmd", "ls /no/such/file", "--health-interval", "1s", "--health-retries", "2"}, "sleep", "600")
		s.waitHealth("ok")
		s.waitHealth("bad")
	}},
	{name: "files survive restart and stop/start", run: func(s *side) {
		s.start("c", "ready", nil, "sh", "-c", "echo boot >> /var-log; echo ready; exec sleep 600")
		s.docker("exec", "@c", "sh", "-c", "echo written > /etc/new && rm /data/hello && mkdir -p /srv/d && echo deep > /srv/d/f")
		s.restarted("c", "ready", "restart", "-t", "1", "@c")
		s.docker("exec", "@c", "sh", "-c", "cat /etc/new /var-log /srv/d/f; ls /data")
		s.stop("c", 2*time.Second)
		s.restarted("c", "ready", "start", "@c")
		s.docker("exec", "@c", "sh", "-c", "cat /etc/new /var-log; ls /data")
		// Killed while writing: the next start mounts over what the
		// killed one left.
		s.docker("exec", "-d", "@c", "sh", "-c", "while :; do echo x >> /grow; mv /grow /grow2; mv /grow2 /grow; done")
		time.Sleep(500 * time.Millisecond)
		s.docker("kill", "@c")
		s.restarted("c", "ready", "start", "@c")
		s.docker("exec", "@c", "sh", "-c", "cat /etc/new; { test -s /grow || test -s /grow2; } && echo grew")
	}},
	{name: "restart on failure", run: func(s *side) {
		s.start("c", "second", []string{"--restart", "on-failure:3"}, "sh", "-c", "if [ -f /once ]; then echo second; exec sleep 600; fi; touch /once; echo first; exit 1")
		s.note("logs:\n%s", strings.TrimSpace(s.logs("c")))
		s.note("restarts: %s", s.inspect("c", "{{.RestartCount}}"))
	}},
	{name: "the writable layer goes with the container", run: func(s *side) {
		s.start("c", "ready", nil, sleeper...)
		vols := s.volumesOf("c")
		s.docker("rm", "-f", "-v", "@c")
		s.countLeft("after docker rm -v", vols)
		s.start("rm", "ready", []string{"--rm"}, sleeper...)
		vols = s.volumesOf("rm")
		s.docker("stop", "-t", "1", "@rm")
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if _, _, code := s.exec(step{args: []string{"inspect", "@rm"}}); code != 0 {
				break
			}
		}
		s.countLeft("after --rm", vols)
	}},
	{name: "stop signal reaches the workload", run: func(s *side) {
		s.start("trap", "ready", nil, "sh", "-c", "trap 'echo got TERM; exit 42' TERM; echo ready; while :; do sleep 0.1; done")
		s.stop("trap", 10*time.Second)
		s.note("logs:\n%s", strings.TrimSpace(s.logs("trap")))
		// PID 1 without a handler ignores SIGTERM: killed at the end.
		s.start("plain", "", nil, "sleep", "600")
		time.Sleep(time.Second)
		s.stop("plain", 2*time.Second)
	}},
	{name: "docker kill -s", run: func(s *side) {
		s.start("c", "ready", nil, "sh", "-c", "trap 'echo got USR1' USR1; trap 'echo got HUP; exit 5' HUP; echo ready; while :; do sleep 0.1; done")
		s.docker("kill", "-s", "USR1", "@c")
		s.waitLog("c", "got USR1")
		s.docker("kill", "-s", "HUP", "@c")
		s.docker("wait", "@c")
		s.note("logs:\n%s", strings.TrimSpace(s.logs("c")))
		// No handler: PID 1 ignores it, and still runs.
		s.start("plain", "", nil, "sleep", "600")
		time.Sleep(time.Second)
		s.docker("kill", "-s", "USR1", "@plain")
		time.Sleep(time.Second)
		s.note("running after an unhandled USR1: %s", s.inspect("plain", "{{.State.Running}}"))
	}},
	{name: "init", run: func(s *side) {
		s.docker("run", "--rm", "--init", "IMAGE", "sh", "-c", "echo hi; exit 4")
		s.start("c", "", []string{"--init"}, "sleep", "600")
		time.Sleep(time.Second)
		s.stop("c", 5*time.Second)
	}},
	{name: "pause, unpause and top", origFlags: []string{"--init"}, run: func(s *side) {
		s.start("c", "ready", nil, sleeper...)
		s.docker("pause", "@c")
		s.note("state: %s", s.inspect("c", "{{.State.Status}}"))
		s.docker("unpause", "@c")
		s.docker("exec", "@c", "echo", "ok")
		s.do(step{args: []string{"top", "@c", "-o", "args"}, norm: normalizeProcs})
	}},
	{name: "logs -f and attach", run: func(s *side) {
		s.start("logs", "", nil, "sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.3; done; echo err >&2")
		s.do(step{args: []string{"logs", "-f", "@logs"}, stderr: true})
		s.start("att", "", nil, "sh", "-c", "sleep 2; echo attached; exit 3")
		s.docker("attach", "@att")
	}},
	{name: "volumes and tmpfs", run: func(s *side) {
		vol := s.name("vol")
		s.do(step{args: []string{"run", "--rm", "-v", vol + ":/data", "IMAGE", "sh", "-c", "ls -ln /data; cat /data/hello; echo kept > /data/k"}, norm: normalizeLs})
		s.docker("run", "--rm", "-v", vol+":/data", "IMAGE", "cat", "/data/k")
		s.docker("run", "--rm", "--tmpfs", "/scratch", "IMAGE", "sh", "-c", "echo x > /scratch/f && cat /scratch/f && grep -c ' /scratch tmpfs' /proc/mounts")
		s.docker("run", "--rm", "-v", "/data", "IMAGE", "cat", "/data/sub/deep")
	}},
	// Docker's masks and read-only parts of /proc hold in the converted
	// root too: it gets the container's /proc.
	{name: "masked /proc", run: func(s *side) {
		s.do(step{args: []string{"run", "--rm", "IMAGE", "sh", "-c",
			"wc -c < /proc/kcore; echo 1 > /proc/sys/vm/drop_caches; grep -c ' /proc/sys ' /proc/mounts; ls /proc/acpi | wc -l"}, stderr: true})
	}},
	{name: "read-only root", run: func(s *side) {
		s.do(step{args: []string{"run", "--rm", "--read-only", "IMAGE", "sh", "-c", "cat /data/hello; touch /f 2>&1; touch /tmp/f 2>&1; echo done"}, norm: func(s string) string {
			return strings.TrimSpace(strings.ReplaceAll(s, "Read-only file system", "read-only"))
		}})
		s.docker("run", "--rm", "--read-only", "--tmpfs", "/tmp", "IMAGE", "sh", "-c", "echo ok > /tmp/f && cat /tmp/f")
	}},

	// The image's USER (alice): the workload, docker exec and health
	// checks run as it, as with the original.
	{name: "exec and health check as the image's USER", user: true, run: func(s *side) {
		s.do(step{args: []string{"run", "--rm", "IMAGE", "sh", "-c", "id; echo $HOME; pwd; touch /root/x"}, stderr: true})
		s.start("c", "ready", []string{"--health-cmd", "test $(id -u) = 1000", "--health-interval", "1s", "--health-retries", "2"}, sleeper...)
		s.do(step{args: []string{"exec", "@c", "sh", "-c", "id; echo $HOME; pwd; touch /home/alice/mine && ls -ln /home/alice/mine"}, stderr: true, norm: normalizeLs})
		s.do(step{args: []string{"exec", "@c", "sh", "-c", "touch /root/x"}, stderr: true})
		s.do(step{args: []string{"exec", "-u", "0", "@c", "sh", "-c", "id; echo $HOME"}, stderr: true})
		s.do(step{args: []string{"exec", "-u", "nobody", "@c", "id"}, stderr: true})
		s.waitHealth("c")
		s.do(step{args: []string{"exec", "@c", "ps", "-o", "user,args"}, norm: normalizeProcs})
	}, origFlags: []string{"--init"}},
	{name: "--user over the image's USER", user: true, run: func(s *side) {
		for _, u := range []string{"0", "root", "root:wheel", "0:29", "1000:29", "4242", "nobody", "alice"} {
			s.do(step{args: []string{"run", "--rm", "-u", u, "IMAGE", "sh", "-c", "id; echo $HOME"}, stderr: true})
		}
		s.do(step{args: []string{"run", "--rm", "-u", "0", "--group-add", "29", "IMAGE", "id"}, stderr: true})
		s.do(step{args: []string{"run", "--rm", "--group-add", "wheel", "IMAGE", "id"}, stderr: true})
		s.start("root", "ready", []string{"-u", "0"}, sleeper...)
		s.do(step{args: []string{"exec", "@root", "id"}, stderr: true})
	}},
	// docker run --init puts tini in front of the setuid boot, both as
	// the image's USER: boot accepts being the child of Docker's init.
	{name: "--init with the image's USER", user: true, run: func(s *side) {
		s.do(step{args: []string{"run", "--rm", "--init", "IMAGE", "sh", "-c", "id; exit 4"}, stderr: true})
		s.do(step{args: []string{"run", "--rm", "--init", "-u", "0", "IMAGE", "id"}, stderr: true})
		s.start("c", "ready", []string{"--init"}, "sh", "-c", "trap 'echo got TERM; exit 42' TERM; echo ready; while :; do sleep 0.1; done")
		s.do(step{args: []string{"exec", "@c", "id"}, stderr: true})
		s.stop("c", 10*time.Second)
		s.note("logs:\n%s", strings.TrimSpace(s.logs("c")))
	}},

	// The postgres image (USER postgres, HEALTHCHECK pg_isready).
	{name: "postgres", debian: true, run: func(s *side) {
		s.start("db", "ready to accept connections", nil)
		s.waitHealth("db")
		s.do(step{args: []string{"exec", "@db", "pg_isready"}, stderr: true})
		// Without -u, exec runs as the image's user, postgres.
		s.docker("exec", "@db", "id")
		s.do(step{args: []string{"exec", "@db", "psql", "-Atc", "create table t (x int); insert into t values (1), (2), (3)"}, stderr: true})
		s.docker("restart", "@db")
		s.waitHealth("db")
		s.do(step{args: []string{"exec", "@db", "psql", "-Atc", "select sum(x) from t"}, stderr: true})
		s.do(step{args: []string{"exec", "-u", "root", "@db", "id"}, stderr: true})
		s.stop("db", 20*time.Second)
	}},
	{name: "debian exec", debian: true, run: func(s *side) {
		s.start("c", "ready", nil, "bash", "-c", "echo ready; exec sleep 600")
		s.do(step{args: []string{"exec", "@c", "ls", "/"}, stderr: true})
		s.do(step{args: []string{"exec", "@c", "cat", "/etc/debian_version"}, stderr: true})
		s.do(step{args: []string{"exec", "-t", "-u", "root", "@c", "bash", "-c", "echo $0 $HOME; tty; whoami"}, norm: normalizeTTY})
		s.do(step{args: []string{"exec", "-u", "root", "@c", "sh", "-c", "echo $PATH; ls -d /.bootfs 2>&1"}})
	}},
}

// TestDropIn runs the drop-in table: the busybox rows on e.bb, the Debian
// rows on a postgres image made with debootstrap.
func TestDropIn(t *testing.T) {
	e := setup(t)
	bb := pair{e.bb, e.bbBoot}
	var pg *pair
	for _, sc := range dropinScenarios {
		t.Run(sc.name, func(t *testing.T) {
			p := bb
			switch {
			case sc.debian:
				if pg == nil {
					pg = postgresPair(t, e)
				}
				p = *pg
			case sc.user:
				p = *userPair(t, e)
			}
			differential(t, e, p, sc)
		})
	}
}

// userPair makes the busybox image with USER alice (uid 1000, in the
// groups wheel and audio) and WORKDIR /home/alice, and converts it.
// The agent's tests use it too; it is made once.
func userPair(t *testing.T, e *env) *pair {
	t.Helper()
	userPairMu.Lock()
	defer userPairMu.Unlock()
	if userPairMade == nil {
		userPairMade = makeUserPair(t, e)
	}
	return userPairMade
}

var (
	userPairMu   sync.Mutex
	userPairMade *pair
)

func makeUserPair(t *testing.T, e *env) *pair {
	t.Helper()
	orig, boot := e.prefix+"/bb:user", e.prefix+"/bb:user-boot"
	if err := dockerImport(filepath.Join(e.tmp, "bb"), orig, `CMD ["/bin/sh"]`, "USER alice", "WORKDIR /home/alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.convert(orig, boot, e.store); err != nil {
		t.Fatal(err)
	}
	return &pair{orig, boot}
}

// postgresPair makes the postgres image: Debian bookworm's postgresql
// run as the postgres user on a unix socket only (the host network is
// shared), with a HEALTHCHECK of pg_isready; and converts it.
func postgresPair(t *testing.T, e *env) *pair {
	t.Helper()
	root := debianRootfs(t, "postgres", "postgresql")
	base, orig := e.prefix+"/postgres:base", e.prefix+"/postgres:orig"
	const bin = "/usr/lib/postgresql/15/bin"
	if err := dockerImport(root, base, "USER postgres", "ENV PATH="+bin+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		`CMD ["postgres", "-D", "/var/lib/postgresql/15/main", "-c", "config_file=/etc/postgresql/15/main/postgresql.conf", "-c", "listen_addresses="]`); err != nil {
		t.Fatal(err)
	}
	// docker import cannot set a HEALTHCHECK; a build from the base can.
	// An interval of 5s, as compose files often have (Docker's default
	// is 30s): the converted server takes about a second longer to start
	// (README, Limits), which a 1s interval would see.
	dockerfile := fmt.Sprintf("FROM %s\nHEALTHCHECK --interval=5s --retries=30 CMD [\"pg_isready\", \"-q\"]\n", base)
	build := exec.Command("docker", "build", "-q", "-t", orig, "-")
	build.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
	build.Stdin = strings.NewReader(dockerfile)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("docker build %s: %v\n%s", orig, err, out)
	}
	atExit(func() { exec.Command("docker", "rmi", "-f", orig).Run() })
	boot := e.prefix + "/postgres:boot"
	if _, err := e.convert(orig, boot, e.store); err != nil {
		t.Fatal(err)
	}
	// The node has run the image before: its cache holds what a start
	// of the server reads, as the original's layers are on the node.
	warm := e.run(t, true, []string{"-v", nodeCache(e) + ":/.bootfs/cache"}, boot, "bash", "-c",
		"postgres -D /var/lib/postgresql/15/main -c config_file=/etc/postgresql/15/main/postgresql.conf -c listen_addresses= & "+
			"for i in $(seq 100); do pg_isready -q && break; sleep 0.2; done; psql -Atc 'select 1'; kill -INT %1; wait")
	if warm.code != 0 {
		t.Fatalf("warming the cache with a run of %s: exit %d: %s", boot, warm.code, warm.stderr)
	}
	return &pair{orig, boot}
}

// TestDropInNoNewPrivileges: with no_new_privs the setuid bit gives the
// boot of a USER image no root; it says so and how to run it instead,
// and that way works.
func TestDropInNoNewPrivileges(t *testing.T) {
	e := setup(t)
	p := userPair(t, e)
	flags := []string{"--security-opt", "no-new-privileges", "-v", nodeCache(e) + ":/.bootfs/cache"}
	got := e.run(t, true, flags, p.boot, "id")
	if got.code == 0 || !strings.Contains(got.stderr, "no-new-privileges") || !strings.Contains(got.stderr, "--user 0 -e BOOTFS_USER=USER") {
		t.Errorf("docker run --security-opt no-new-privileges of a USER image: exit %d, %q; stderr %q; want a failure naming no-new-privileges and --user 0 -e BOOTFS_USER=USER",
			got.code, got.stdout, got.stderr)
	}
	want := e.run(t, false, []string{"--security-opt", "no-new-privileges"}, p.orig, "sh", "-c", "id; echo $HOME")
	got = e.run(t, true, append(flags, "--user", "0", "-e", "BOOTFS_USER=alice"), p.boot, "sh", "-c", "id; echo $HOME")
	if got.code != 0 || got.stdout != want.stdout {
		t.Errorf("with --user 0 -e BOOTFS_USER=alice: exit %d, %q (stderr %q); want the original's %q", got.code, got.stdout, got.stderr, want.stdout)
	}
}

// TestDropInEarlyExec measures the window at the start of a container in
// which a docker exec lands in the boot image rather than the workload's
// root (README, Limits): it starts a container and fires a docker exec
// every 10 ms from the start on, on the original and on the converted
// image, and reports how many failed and when. It asserts no timing;
// only that an exec gets either Docker's refusal of a container that is
// not running yet, the boot image (the command not found), or the whole
// workload's root, never a root half built, and that every exec after
// the window succeeds.
func TestDropInEarlyExec(t *testing.T) {
	e := setup(t)
	want := e.run(t, false, nil, e.bb, "cat", "/etc/os-release", "/data/hello").stdout
	for _, tc := range []struct {
		name  string
		image string
		flags []string
	}{
		{"original", e.bb, nil},
		// BOOTFS_LOG=debug: boot logs when the root is the container's,
		// timed from its own start.
		{"converted", e.bbBoot, append(slices.Clone(e.runFlags), "-v", nodeCache(e)+":/.bootfs/cache", "-e", "BOOTFS_LOG=debug")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("%s-early-exec-%s", e.prefix, tc.name)
			args := append([]string{"create", "--name", name, "--pull", "never", "--network", "host"}, tc.flags...)
			args = append(args, tc.image, "sleep", "600")
			t.Cleanup(func() { exec.Command("docker", "rm", "-f", "-v", name).Run() })
			if out, err := exec.Command("docker", args...).CombinedOutput(); err != nil {
				t.Fatalf("docker %s: %v: %s", strings.Join(args, " "), err, out)
			}
			type result struct {
				at   time.Duration // after docker start began
				out  string
				code int
			}
			const n, every = 60, 10 * time.Millisecond
			results := make([]result, n)
			var wg sync.WaitGroup
			start := time.Now()
			startCmd := exec.Command("docker", "start", name)
			if err := startCmd.Start(); err != nil {
				t.Fatal(err)
			}
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					time.Sleep(time.Until(start.Add(time.Duration(i) * every)))
					at := time.Since(start)
					out, err := exec.Command("docker", "exec", name, "cat", "/etc/os-release", "/data/hello").CombinedOutput()
					code := 0
					if ee, ok := err.(*exec.ExitError); ok {
						code = ee.ExitCode()
					} else if err != nil {
						code = -1
					}
					results[i] = result{at, string(out), code}
				}()
			}
			if err := startCmd.Wait(); err != nil {
				t.Fatalf("docker start: %v", err)
			}
			running := time.Since(start)
			wg.Wait()
			var notRunning, inBoot int
			var window time.Duration
			for i, r := range results {
				switch {
				case r.code == 0 && r.out == want:
				case strings.Contains(r.out, "is not running"):
					notRunning++
				case strings.Contains(r.out, "executable file not found"):
					inBoot++
					window = r.at
				default:
					t.Errorf("exec %d, %v after docker start began: exit %d: %q; want the workload's files, Docker's \"is not running\", or the boot image's \"executable file not found\"", i, r.at, r.code, r.out)
				}
			}
			t.Logf("%s: docker start returned after %v; of %d execs (one every %v from the start), %d were refused (not running yet), %d landed in the boot image (the last one started %v after the start began), %d ran in the workload's root",
				tc.name, running.Round(time.Millisecond), n, every, notRunning, inBoot, window.Round(time.Millisecond), n-notRunning-inBoot)
			if logs, _ := exec.Command("docker", "logs", name).CombinedOutput(); tc.image == e.bbBoot {
				t.Logf("boot: %s", rootReady.FindString(string(logs)))
			}
			if last := results[n-1]; last.code != 0 || last.out != want {
				t.Errorf("the last exec, %v after the start: exit %d: %q; want the workload's files", last.at, last.code, last.out)
			}
		})
	}
}
