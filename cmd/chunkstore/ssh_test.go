package main

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/opener"
	"github.com/bootfs/bootfs/internal/testenv"
)

// TestServeSSH runs `chunkstore serve --ssh` and reads a chunk through our
// SSH client, with key auth and a known_hosts check.
func TestServeSSH(t *testing.T) {
	l, ids := storeWith(t, 2)
	dir := t.TempDir()
	hostKey, hostPub := testenv.WriteSSHKey(t, dir, "host_key")
	clientKey, clientPub := testenv.WriteSSHKey(t, dir, "id_ed25519")
	authorized := filepath.Join(dir, "authorized_keys")
	os.WriteFile(authorized, ssh.MarshalAuthorizedKey(clientPub), 0o600)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := &pipeLog{lines: make(chan string, 100)}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--dir", l.Dir(), "--ssh", "127.0.0.1:0",
			"--host-key", hostKey, "--authorized-keys", authorized,
			"--ssh-max-sessions", "4", "--ssh-idle-timeout", "0"}, io.Discard, log)
	}()
	var addr string
	re := regexp.MustCompile(`addr=(127\.0\.0\.1:\d+)`)
	for addr == "" {
		select {
		case line := <-log.lines:
			if m := re.FindStringSubmatch(line); m != nil {
				addr = m[1]
				if !regexp.MustCompile(`max_sessions=4 .*idle_timeout=-1ns`).MatchString(line) {
					t.Errorf("serve log %q does not show the --ssh-* limits given", line)
				}
			}
		case code := <-done:
			t.Fatalf("serve exited with %d", code)
		case <-time.After(10 * time.Second):
			t.Fatal("serve did not log its SSH address")
		}
	}

	knownHosts := filepath.Join(dir, "known_hosts")
	os.WriteFile(knownHosts, []byte(knownhosts.Line([]string{knownhosts.Normalize(addr)}, hostPub)+"\n"), 0o600)
	o, err := opener.Open(ctx, "ssh://root@"+addr+l.Dir(), opener.Options{Credentials: opener.Credentials{
		SSHKeys:       []string{clientKey},
		SSHKnownHosts: knownHosts,
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	client := o.Store
	if _, err := client.GetChunk(ctx, ids[0]); err != nil {
		t.Errorf("GetChunk over SSH from chunkstore serve = %v", err)
	}
	missing := ids[0]
	missing[0] ^= 0xff
	if _, err := client.GetChunk(ctx, missing); !errors.Is(err, chunkstore.ErrNotFound) {
		t.Errorf("GetChunk(missing) over SSH = %v, want ErrNotFound", err)
	}

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("serve after cancel exited %d, want 0", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop on cancel")
	}
}

func TestServeSSHNeedsKeys(t *testing.T) {
	code, _, stderr := runCmd(t, "serve", "--dir", t.TempDir(), "--ssh", "127.0.0.1:0")
	if code != 2 || !regexp.MustCompile(`--host-key and --authorized-keys`).MatchString(stderr) {
		t.Errorf("serve --ssh without keys: exit %d, stderr %q; want 2 and a message naming the flags", code, stderr)
	}
}

func TestServeSSHLimitFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--http", "127.0.0.1:0", "--ssh-max-sessions", "4"}, `--ssh-max-sessions is for --ssh`},
		{[]string{"--ssh", "127.0.0.1:0", "--host-key", "k", "--authorized-keys", "a", "--ssh-max-conns", "-1"}, `--ssh-max-conns -1: want a count`},
		{[]string{"--ssh", "127.0.0.1:0", "--host-key", "k", "--authorized-keys", "a", "--ssh-keepalive", "-1s"}, `--ssh-keepalive -1s: want a positive duration`},
		{[]string{"--ssh", "127.0.0.1:0", "--host-key", "k", "--authorized-keys", "a", "--ssh-handshake-timeout", "0"}, `--ssh-handshake-timeout 0`},
	} {
		code, _, stderr := runCmd(t, append([]string{"serve", "--dir", t.TempDir()}, tt.args...)...)
		if code != 2 || !regexp.MustCompile(tt.want).MatchString(stderr) {
			t.Errorf("serve %v: exit %d, stderr %q; want 2 and %q", tt.args, code, stderr, tt.want)
		}
	}
}
