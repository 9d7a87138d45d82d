package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// boot ships in every image: it must stay a small static binary that
// links neither desync nor the Docker client.
func TestBinarySizeAndDeps(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	deps, err := exec.Command(gobin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, bad := range []string{"github.com/folbricht/desync", "github.com/docker/docker", "github.com/bootfs/bootfs/mkimage"} {
		for _, d := range strings.Fields(string(deps)) {
			if d == bad || strings.HasPrefix(d, bad+"/") {
				t.Errorf("cmd/boot depends on %s", d)
			}
		}
	}

	out := filepath.Join(t.TempDir(), "boot")
	cmd := exec.Command(gobin, "build", "-trimpath", "-ldflags=-s -w", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	st, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	const limit = 10 << 20
	t.Logf("static boot binary: %d bytes", st.Size())
	if st.Size() > limit {
		t.Errorf("boot binary is %d bytes, want at most %d", st.Size(), limit)
	}
}

func TestRunUsage(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{name: "no command", args: nil, wantCode: 2, wantErr: "usage: boot"},
		{name: "unknown command", args: []string{"frobnicate"}, wantCode: 2, wantErr: `unknown command "frobnicate"`},
		{name: "help", args: []string{"help"}, wantCode: 0},
		{name: "mount without args", args: []string{"mount", "--store", "/x"}, wantCode: 2, wantErr: "want INDEX and MOUNTPOINT"},
		{name: "mount without store", args: []string{"mount", "a.caidx", "/mnt"}, wantCode: 2, wantErr: "--store is required"},
		{name: "mount bad flag", args: []string{"mount", "--nope"}, wantCode: 2, wantErr: "flag provided but not defined"},
		{name: "mount bad log level", args: []string{"mount", "--store", "/x", "--log-level", "loud", "a", "b"}, wantCode: 2, wantErr: "bad --log-level"},
		{name: "mount missing index", args: []string{"mount", "--store", "/x", "/nonexistent.caidx", "/mnt"}, wantCode: 1, wantErr: "open index"},
		{name: "mount help", args: []string{"mount", "-h"}, wantCode: 0, wantErr: "usage: boot mount"},
		{name: "mount bad cache max", args: []string{"mount", "--store", "/x", "--cache", "/c", "--cache-max", "lots", "a", "b"}, wantCode: 2, wantErr: "bad --cache-max"},
		{name: "mount cache max without cache", args: []string{"mount", "--store", "/x", "--cache-max", "1g", "a", "b"}, wantCode: 2, wantErr: "--cache-max needs --cache"},
		{name: "mount help names --record and --ca-file", args: []string{"mount", "-h"}, wantCode: 0, wantErr: "-ca-file FILE"},
		{name: "exec is gone: docker exec does it", args: []string{"exec", "--", "true"}, wantCode: 2, wantErr: `unknown command "exec"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tc.args, &stdout, &stderr)
			if code != tc.wantCode || !strings.Contains(stderr.String(), tc.wantErr) {
				t.Errorf("run(%q) = %d, stderr %q; want %d and %q", tc.args, code, stderr.String(), tc.wantCode, tc.wantErr)
			}
		})
	}
}
