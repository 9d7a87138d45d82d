package boot

import (
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestInitOptionsFromEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    func(InitOptions) bool
		wantErr bool
	}{
		{name: "empty", env: nil, want: func(o InitOptions) bool {
			return o.Store == "" && o.LogLevel == slog.LevelWarn && !o.Background && o.Credentials.SSHKeys == nil
		}},
		{name: "all", env: map[string]string{
			EnvStore: " http://a,http://b ", EnvCache: "/c", EnvUpper: "/u", EnvLog: "debug", EnvStats: "/s.json",
			EnvBackground: "1", EnvSSHKey: "/k1, /k2", EnvSSHKnownHosts: "/kh", EnvTimeout: "5s", EnvUser: "alice:wheel",
			EnvRecord: "/r.list", EnvCAFile: "/ca.pem",
		}, want: func(o InitOptions) bool {
			return o.Store == "http://a,http://b" && o.Cache == "/c" && o.Upper == "/u" && o.LogLevel == slog.LevelDebug && o.Stats == "/s.json" &&
				o.Record == "/r.list" && o.Credentials.CAFile == "/ca.pem" &&
				o.Background && slices.Equal(o.Credentials.SSHKeys, []string{"/k1", "/k2"}) && o.Credentials.SSHKnownHosts == "/kh" &&
				o.Retry.Timeout == 5*time.Second && o.User == "alice:wheel"
		}},
		{name: "stats", env: map[string]string{EnvStats: "/s.json"}, want: func(o InitOptions) bool { return o.LogLevel == slog.LevelInfo }},
		{name: "info", env: map[string]string{EnvLog: "info"}, want: func(o InitOptions) bool { return o.LogLevel == slog.LevelInfo }},
		{name: "bad log", env: map[string]string{EnvLog: "trace"}, wantErr: true},
		{name: "bad background", env: map[string]string{EnvBackground: "yes"}, wantErr: true},
		{name: "bad timeout", env: map[string]string{EnvTimeout: "-1s"}, wantErr: true},
		{name: "cache max", env: map[string]string{EnvCacheMax: "2g"}, want: func(o InitOptions) bool { return o.CacheMax == 2<<30 }},
		{name: "bad cache max", env: map[string]string{EnvCacheMax: "2 GB"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := InitOptionsFromEnv(func(k string) string { return tt.env[k] })
			if tt.wantErr {
				if err == nil {
					t.Errorf("InitOptionsFromEnv(%v) = %+v, want an error", tt.env, o)
				}
				return
			}
			if err != nil || !tt.want(o) {
				t.Errorf("InitOptionsFromEnv(%v) = %+v, %v", tt.env, o, err)
			}
		})
	}
	if o := (InitOptions{Cache: "none"}).withDefaults(); o.Cache != "" || o.Config != "/.bootfs/config.json" {
		t.Errorf("withDefaults(Cache none) = %+v, want no cache and the standard config", o)
	}
}

func TestWorkloadEnv(t *testing.T) {
	tests := []struct {
		name           string
		env, imageEnv  []string
		home, rootHome string
		want           []string
	}{
		{name: "root's home from the boot image's passwd replaced", env: []string{"HOME=/root"}, home: "/home/alice", rootHome: "/root",
			want: []string{"HOME=/home/alice"}},
		{name: "root's home kept for root", env: []string{"HOME=/root"}, home: "/root", rootHome: "/root", want: []string{"HOME=/root"}},
		{name: "image sets root's home", env: []string{"HOME=/root"}, imageEnv: []string{"HOME=/root"}, home: "/home/alice", rootHome: "/root",
			want: []string{"HOME=/root"}},
		{name: "runtime default home replaced", env: []string{"PATH=/bin", "HOSTNAME=h", "BOOTFS_STORE=x", "HOME=/"}, home: "/root",
			want: []string{"PATH=/bin", "HOSTNAME=h", "HOME=/root"}},
		{name: "home from -e kept", env: []string{"HOME=/elsewhere", "BOOTFS_LOG=debug"}, home: "/root", want: []string{"HOME=/elsewhere"}},
		{name: "image sets HOME=/", env: []string{"HOME=/"}, imageEnv: []string{"HOME=/"}, home: "/root", want: []string{"HOME=/"}},
		{name: "no home", env: []string{"A=1"}, home: "/home/alice", want: []string{"A=1", "HOME=/home/alice"}},
		{name: "user home is /", env: []string{"HOME=/"}, home: "/", want: []string{"HOME=/"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := workloadEnv(tt.env, tt.imageEnv, tt.home, tt.rootHome); !slices.Equal(got, tt.want) {
				t.Errorf("workloadEnv(%q, %q, %q, %q) = %q, want %q", tt.env, tt.imageEnv, tt.home, tt.rootHome, got, tt.want)
			}
		})
	}
}

func TestResolveIn(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"usr/lib", "var"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	os.Symlink("/usr/lib", filepath.Join(root, "lib"))
	os.Symlink("../../..", filepath.Join(root, "usr/lib/up"))
	os.Symlink("../run", filepath.Join(root, "var/run"))
	os.Symlink("loop", filepath.Join(root, "loop"))
	tests := []struct {
		name, path, want string
		wantErr          bool
	}{
		{name: "plain", path: "/usr/lib", want: "/usr/lib"},
		{name: "absolute link", path: "/lib/x", want: "/usr/lib/x"},
		{name: "relative link to missing", path: "/var/run/docker.sock", want: "/run/docker.sock"},
		{name: "dotdot clamps", path: "/lib/up/etc", want: "/etc"},
		{name: "missing", path: "/a/b/c", want: "/a/b/c"},
		{name: "loop", path: "/loop/x", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := resolveIn(root, tt.path)
			if tt.wantErr {
				if !errors.Is(err, ErrRootfs) {
					t.Errorf("resolveIn(%q) = %q, %v; want an ErrRootfs error", tt.path, got, err)
				}
				return
			}
			if want := filepath.Join(root, tt.want); err != nil || got != want {
				t.Errorf("resolveIn(%q) = %q, %v; want %q", tt.path, got, err, want)
			}
		})
	}
}

func TestCopyTree(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("copyTree keeps owners: needs root")
	}
	src, dst := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(src, "d/e"), 0o750)
	os.WriteFile(filepath.Join(src, "d/f"), []byte("content"), 0o4755)
	os.Symlink("d/f", filepath.Join(src, "link"))
	unix.Mkfifo(filepath.Join(src, "fifo"), 0o600)
	os.Chown(filepath.Join(src, "d/f"), 1000, 29)
	os.Chmod(filepath.Join(src, "d/f"), os.ModeSetuid|0o755)
	old := time.Date(2001, 2, 3, 4, 5, 6, 7, time.UTC)
	os.Chtimes(filepath.Join(src, "d/e"), old, old)
	os.Chmod(src, 0o711)
	if err := copyTree(src, dst, nil); err != nil {
		t.Fatal(err)
	}
	check := func(name string, mode os.FileMode, uid, gid uint32) {
		t.Helper()
		fi, err := os.Lstat(filepath.Join(dst, name))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode() != mode || st.Uid != uid || st.Gid != gid {
			t.Errorf("copy of %s: mode %v, owner %d:%d; want %v, %d:%d", name, fi.Mode(), st.Uid, st.Gid, mode, uid, gid)
		}
	}
	check(".", os.ModeDir|0o711, 0, 0)
	check("d/f", os.ModeSetuid|0o755, 1000, 29)
	check("d/e", os.ModeDir|0o750, 0, 0)
	check("link", os.ModeSymlink|0o777, 0, 0)
	check("fifo", os.ModeNamedPipe|0o600, 0, 0)
	if b, _ := os.ReadFile(filepath.Join(dst, "d/f")); string(b) != "content" {
		t.Errorf("copy of d/f = %q, want %q", b, "content")
	}
	if fi, _ := os.Stat(filepath.Join(dst, "d/e")); !fi.ModTime().Equal(old) {
		t.Errorf("copy of d/e mtime = %v, want %v", fi.ModTime(), old)
	}
}

// TestSupervise: signals sent to init reach the workload, SIGUSR1 runs
// the stats hook too, and the workload's status comes back, 128+n for a
// signal.
func TestSupervise(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	tests := []struct {
		name   string
		script string
		send   []syscall.Signal
		want   int
		usr1   int
	}{
		{name: "exit code", script: "exit 7", want: 7},
		{name: "trapped TERM", script: `trap 'exit 42' TERM; while :; do sleep 0.05; done`, send: []syscall.Signal{syscall.SIGTERM}, want: 42},
		{name: "USR1 forwarded and reported", script: `trap 'exit 9' USR1; while :; do sleep 0.05; done`, send: []syscall.Signal{syscall.SIGUSR1}, want: 9, usr1: 1},
		{name: "killed by HUP", script: `while :; do sleep 0.05; done`, send: []syscall.Signal{syscall.SIGHUP}, want: 128 + int(syscall.SIGHUP)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &workload{sigc: make(chan os.Signal, 64)}
			signal.Notify(w.sigc, append(forwarded(), unix.SIGCHLD)...)
			cmd := exec.Command(sh, "-c", tt.script)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			w.pid = cmd.Process.Pid
			go func() {
				time.Sleep(300 * time.Millisecond) // for the trap to be set
				for _, s := range tt.send {
					syscall.Kill(os.Getpid(), s)
				}
			}()
			usr1 := 0
			done := make(chan int)
			go func() { done <- w.supervise(func() { usr1++ }, nil) }()
			select {
			case got := <-done:
				if got != tt.want || usr1 != tt.usr1 {
					t.Errorf("supervise(%q) = %d with %d stats reports, want %d with %d", tt.script, got, usr1, tt.want, tt.usr1)
				}
			case <-time.After(20 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("supervise(%q) did not return", tt.script)
			}
		})
	}
}
