package boot

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/bootfs/bootfs/chunkstore/opener"
	"github.com/bootfs/bootfs/internal/atomicfile"
	"github.com/bootfs/bootfs/internal/bootconfig"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("takes another user's rights on files: needs root")
	}
}

// TestCallerFiles: files boot reads or writes for a Caller get the
// Caller's permission checks, not root's.
func TestCallerFiles(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	mine := filepath.Join(dir, "mine")
	os.Mkdir(mine, 0o755)
	os.Chown(mine, 1000, 1000)
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte("x"), 0o600)
	c := &Caller{UID: 1000, GID: 1000}

	if err := c.do(func() error { return atomicfile.WriteFile(filepath.Join(dir, "f"), []byte("no")) }); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("write into root's directory as uid 1000: %v, want permission denied", err)
	}
	if err := c.do(func() error { return atomicfile.WriteFile(filepath.Join(mine, "f"), []byte("yes")) }); err != nil {
		t.Errorf("write into uid 1000's directory: %v", err)
	} else if fi, err := os.Stat(filepath.Join(mine, "f")); err != nil || fi.Sys().(*syscall.Stat_t).Uid != 1000 {
		t.Errorf("file written for uid 1000: %v, %v; want owned by 1000", fi, err)
	}
	if f, err := c.openFile(secret); !errors.Is(err, fs.ErrPermission) {
		if f != nil {
			f.Close()
		}
		t.Errorf("open root's 0600 file as uid 1000: %v, want permission denied", err)
	}
	// The thread got root's rights back.
	if f, err := os.Open(secret); err != nil {
		t.Errorf("open as root afterwards: %v", err)
	} else {
		f.Close()
	}
	ents, _ := os.ReadDir(mine)
	if len(ents) != 1 {
		t.Errorf("%s holds %d entries, want only f (no temporary file left)", mine, len(ents))
	}
}

func TestConfineToCaller(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	public := filepath.Join(dir, "ca.pem")
	os.WriteFile(public, []byte("pem"), 0o644)
	secret := filepath.Join(dir, "key")
	os.WriteFile(secret, []byte("key"), 0o600)
	c := &Caller{UID: 1000, GID: 1000}
	tests := []struct {
		name    string
		opts    InitOptions
		wantErr string
	}{
		{name: "nothing set", opts: InitOptions{}},
		{name: "cache none", opts: InitOptions{Cache: "none"}},
		{name: "default cache", opts: InitOptions{Cache: "/.bootfs/cache/"}},
		{name: "readable CA file", opts: InitOptions{Credentials: opener.Credentials{CAFile: public}}},
		{name: "user", opts: InitOptions{User: "0"}, wantErr: "BOOTFS_USER is not allowed"},
		{name: "upper", opts: InitOptions{Upper: "/tmp"}, wantErr: "BOOTFS_UPPER is not allowed"},
		{name: "other cache", opts: InitOptions{Cache: "/etc"}, wantErr: "BOOTFS_CACHE is not allowed"},
		{name: "root's key", opts: InitOptions{Credentials: opener.Credentials{SSHKeys: []string{public, secret}}}, wantErr: "BOOTFS_SSH_KEY: open " + secret + ": permission denied"},
		{name: "root's known_hosts", opts: InitOptions{Credentials: opener.Credentials{SSHKnownHosts: secret}}, wantErr: "permission denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.opts
			o.Caller = c
			closeFiles, err := o.ConfineToCaller()
			defer closeFiles()
			if tt.wantErr != "" {
				if !strings.Contains(errText(err), tt.wantErr) {
					t.Errorf("ConfineToCaller(%+v) = %v, want an error saying %q", tt.opts, err, tt.wantErr)
				}
				if err := o.checkCallerStore("http://x"); err == nil {
					t.Errorf("checkCallerStore after a refusal = nil, want an error")
				}
				return
			}
			if err != nil {
				t.Fatalf("ConfineToCaller(%+v) = %v", tt.opts, err)
			}
			if tt.opts.Credentials.CAFile != "" {
				b, err := os.ReadFile(o.Credentials.CAFile)
				if !strings.HasPrefix(o.Credentials.CAFile, "/proc/self/fd/") || err != nil || string(b) != "pem" {
					t.Errorf("CAFile = %q (%q, %v), want an open file of %s", o.Credentials.CAFile, b, err, tt.opts.Credentials.CAFile)
				}
			}
			if err := o.checkCallerStore("http://x,/store"); err != nil {
				t.Errorf("checkCallerStore(http) = %v", err)
			}
			if err := o.checkCallerStore("ssh://h/store"); err == nil || !strings.Contains(err.Error(), EnvSSHKnownHosts) {
				t.Errorf("checkCallerStore(ssh) without keys = %v, want an error naming %s", err, EnvSSHKnownHosts)
			}
		})
	}
	// Without a Caller nothing changes.
	o := InitOptions{User: "0", Upper: "/u", Credentials: opener.Credentials{CAFile: secret}}
	if _, err := o.ConfineToCaller(); err != nil || o.Credentials.CAFile != secret {
		t.Errorf("ConfineToCaller without a Caller = %v, CAFile %q", err, o.Credentials.CAFile)
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestCallerSpec(t *testing.T) {
	tests := []struct {
		name string
		c    Caller
		want string
	}{
		{name: "uid only", c: Caller{UID: 1000}, want: "1000"},
		{name: "uid and gid", c: Caller{UID: 1000, GID: 29}, want: "1000:29"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.c.spec(); got != tt.want {
				t.Errorf("%+v.spec() = %q, want %q", tt.c, got, tt.want)
			}
		})
	}
}

func TestWithoutSecureTraceback(t *testing.T) {
	tests := []struct {
		name     string
		in, want []string
	}{
		{"added by the runtime", []string{"PATH=/bin", "GOTRACEBACK=none"}, []string{"PATH=/bin"}},
		{"the container's own", []string{"GOTRACEBACK=none", "PATH=/bin"}, []string{"GOTRACEBACK=none", "PATH=/bin"}},
		{"another value", []string{"GOTRACEBACK=all", "GOTRACEBACK=none"}, []string{"GOTRACEBACK=all", "GOTRACEBACK=none"}},
		{"none", []string{"PATH=/bin"}, []string{"PATH=/bin"}},
		{"empty", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := withoutSecureTraceback(tt.in); !slices.Equal(got, tt.want) {
				t.Errorf("withoutSecureTraceback(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// TestCheckInit: a setuid boot makes itself root only as a container's
// init: PID 1, or the child of docker run --init's init.
func TestCheckInit(t *testing.T) {
	exe := func(s string, err error) func() (string, error) { return func() (string, error) { return s, err } }
	tests := []struct {
		name      string
		pid, ppid int
		pid1Exe   func() (string, error)
		ok        bool
	}{
		{name: "PID 1", pid: 1, ppid: 0, pid1Exe: exe("", errors.New("not asked")), ok: true},
		{name: "under --init", pid: 7, ppid: 1, pid1Exe: exe("/sbin/docker-init", nil), ok: true},
		{name: "docker exec", pid: 12, ppid: 0, pid1Exe: exe("/sbin/docker-init", nil)},
		{name: "child of another PID 1", pid: 7, ppid: 1, pid1Exe: exe("/bin/sh", nil)},
		{name: "PID 1 unreadable", pid: 7, ppid: 1, pid1Exe: exe("", fs.ErrPermission)},
		{name: "grandchild", pid: 9, ppid: 7, pid1Exe: exe("/sbin/docker-init", nil)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Caller{UID: 999, GID: 999}
			err := c.checkInit(tt.pid, tt.ppid, tt.pid1Exe)
			if tt.ok != (err == nil) || err != nil && (!errors.Is(err, ErrSetuid) || !strings.Contains(err.Error(), "uid 999")) {
				t.Errorf("checkInit(pid %d, ppid %d) = %v, want ok %v (or an ErrSetuid naming uid 999)", tt.pid, tt.ppid, err, tt.ok)
			}
		})
	}
}

// TestCallerReadlink: boot, root without CAP_SYS_PTRACE, reads
// /proc/1/exe of an init that runs as the Caller with the Caller's
// rights; here a child of the test as uid 1000 stands in for the init.
// (The test runs with CAP_SYS_PTRACE, which the container lacks, so it
// cannot show that root's own rights would be refused: the drop-in
// suite's --init rows do.)
func TestCallerReadlink(t *testing.T) {
	requireRoot(t)
	cmd := exec.Command("/bin/sleep", "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1000, Gid: 1000}}
	if err := cmd.Start(); err != nil {
		t.Skipf("start a process as uid 1000: %v", err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	c := &Caller{UID: 1000, GID: 1000}
	got, err := c.readlink(fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid))
	if err != nil || !strings.HasSuffix(got, "sleep") {
		t.Errorf("readlink of uid 1000's /proc/PID/exe as uid 1000 = %q, %v; want its sleep binary", got, err)
	}
}

// TestWorkloadImageUser: the workload runs as the user Docker started
// boot as, never the config's USER in its place: Docker resolved the
// boot image's USER (the original's) or --user already. A root start is
// --user 0 (or an image without USER) and runs as root, unless
// BOOTFS_USER says otherwise.
func TestWorkloadImageUser(t *testing.T) {
	self, err := startedAs()
	if err != nil {
		t.Fatal(err)
	}
	img := bootconfig.Image{User: "postgres", WorkingDir: "/var/lib/postgresql"}
	tests := []struct {
		name       string
		opts       InitOptions
		wantUser   string
		wantGroups []int
	}{
		{name: "image USER, started as it", opts: InitOptions{Caller: &Caller{UID: 999, GID: 105, Groups: []int{105, 110}}},
			wantUser: "999:105", wantGroups: []int{110}},
		{name: "--user UID", opts: InitOptions{Caller: &Caller{UID: 1000, GID: 0}}, wantUser: "1000"},
		{name: "--user 0", opts: InitOptions{}, wantUser: self.spec(), wantGroups: slices.DeleteFunc(slices.Clone(self.Groups), func(g int) bool { return g == self.GID })},
		{name: "BOOTFS_USER as root", opts: InitOptions{User: "alice:wheel"}, wantUser: "alice:wheel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, groups, err := tt.opts.workloadImage(img)
			if err != nil || got.User != tt.wantUser || !slices.Equal(groups, tt.wantGroups) || got.WorkingDir != img.WorkingDir {
				t.Errorf("workloadImage(%+v) = user %q, groups %v, workdir %q, %v; want %q, %v, %q",
					tt.opts, got.User, groups, got.WorkingDir, err, tt.wantUser, tt.wantGroups, img.WorkingDir)
			}
		})
	}
}
