package boot

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/bootfs/bootfs/chunkstore/opener"
	"github.com/bootfs/bootfs/internal/atomicfile"
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
