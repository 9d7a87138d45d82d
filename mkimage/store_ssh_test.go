package mkimage

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/sshstore"
	"github.com/bootfs/bootfs/internal/testenv"
)

// sshStoreServer serves a new local store over SSH on loopback, with one
// key that may write and one that may only read. It sets
// BOOTFS_SSH_KNOWN_HOSTS to trust the server and returns the store URL,
// the store directory and the two key files.
func sshStoreServer(t *testing.T) (url, dir, writerKey, readerKey string) {
	t.Helper()
	tmp := t.TempDir()
	dir = filepath.Join(tmp, "store")
	local, err := chunkstore.NewLocal(dir, chunkstore.LocalOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	hostKey, hostPub := testenv.WriteSSHKey(t, tmp, "host_key")
	writerKey, writerPub := testenv.WriteSSHKey(t, tmp, "writer")
	readerKey, readerPub := testenv.WriteSSHKey(t, tmp, "reader")
	readers := filepath.Join(tmp, "authorized_keys")
	writers := filepath.Join(tmp, "write_authorized_keys")
	if err := os.WriteFile(readers, ssh.MarshalAuthorizedKey(readerPub), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(writers, ssh.MarshalAuthorizedKey(writerPub), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := sshstore.NewServer(local, sshstore.ServerOptions{
		HostKeyFile:             hostKey,
		AuthorizedKeysFile:      readers,
		WriteAuthorizedKeysFile: writers,
		StorePath:               dir,
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	addr := l.Addr().String()
	known := filepath.Join(tmp, "known_hosts")
	if err := os.WriteFile(known, []byte(knownhosts.Line([]string{addr}, hostPub)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(envSSHKnownHosts, known)
	return "ssh://mkimage@" + addr + dir, dir, writerKey, readerKey
}

// TestConvertToSSHStore converts a tree into a store behind our SSH
// server and checks that the server's directory ends up holding exactly
// what a conversion into a local directory writes, verified, and that a
// second conversion writes nothing new.
func TestConvertToSSHStore(t *testing.T) {
	url, dir, writerKey, _ := sshStoreServer(t)
	t.Setenv(envSSHKey, writerKey)
	tmp := t.TempDir()
	root := filepath.Join(tmp, "root")
	writeTree(t, root)

	index := filepath.Join(tmp, "ssh.caidx")
	sum := convert(t, Source{Kind: "dir", Path: root}, Options{Store: url, IndexOut: index, Jobs: 2})
	if sum.NewChunks != sum.UniqueChunks || sum.BytesWritten == 0 {
		t.Errorf("Convert into an empty SSH store: %d new chunks (%d bytes written), want %d", sum.NewChunks, sum.BytesWritten, sum.UniqueChunks)
	}
	vs, err := chunkstore.Verify(context.Background(), dir, false, chunkstore.MaintenanceOptions{})
	if err != nil || vs.Bad != 0 || vs.Chunks != int64(sum.UniqueChunks) {
		t.Errorf("Verify(%s) = %v, %v; want %d chunks, none bad", dir, vs, err, sum.UniqueChunks)
	}

	localDir := filepath.Join(tmp, "local")
	localIndex := filepath.Join(tmp, "local.caidx")
	convert(t, Source{Kind: "dir", Path: root}, Options{Store: localDir, IndexOut: localIndex, Jobs: 2})
	if a, b := readAll(t, index), readAll(t, localIndex); !bytes.Equal(a, b) {
		t.Errorf("index written with an SSH store differs from the one with a local store")
	}
	if got, want := chunkFiles(t, dir), chunkFiles(t, localDir); !reflect.DeepEqual(got, want) {
		t.Errorf("SSH store holds %d chunk files, local store %d; want the same ones", len(got), len(want))
	}

	again := convert(t, Source{Kind: "dir", Path: root}, Options{Store: url, Jobs: 2})
	if again.NewChunks != 0 || again.BytesWritten != 0 {
		t.Errorf("second conversion into the SSH store wrote %d chunks (%d bytes), want 0", again.NewChunks, again.BytesWritten)
	}
}

// TestConvertToSSHStoreReadOnlyKey checks that a key the server lets only
// read makes Convert fail with a message that says so.
func TestConvertToSSHStoreReadOnlyKey(t *testing.T) {
	url, dir, _, readerKey := sshStoreServer(t)
	t.Setenv(envSSHKey, readerKey)
	root := filepath.Join(t.TempDir(), "root")
	writeTree(t, root)
	_, err := Convert(context.Background(), Source{Kind: "dir", Path: root}, Options{Store: url, Jobs: 2})
	if err == nil || !strings.Contains(err.Error(), "may read but not write") {
		t.Fatalf("Convert with a read-only key = %v, want an error saying the key may not write", err)
	}
	if files := chunkFiles(t, dir); len(files) != 0 {
		t.Errorf("refused conversion left %d chunks in the store", len(files))
	}
}

func TestSSHClientOptions(t *testing.T) {
	tests := []struct {
		name      string
		env       map[string]string
		wantKeys  []string
		wantHosts string
	}{
		{name: "defaults", env: nil},
		{name: "one key", env: map[string]string{envSSHKey: "/k/id"}, wantKeys: []string{"/k/id"}},
		{name: "list", env: map[string]string{envSSHKey: "/k/a, /k/b,", envSSHKnownHosts: "/k/known"},
			wantKeys: []string{"/k/a", "/k/b"}, wantHosts: "/k/known"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := sshClientOptions(func(k string) string { return tt.env[k] })
			if !slices.Equal(o.IdentityFiles, tt.wantKeys) || o.KnownHostsFile != tt.wantHosts || !o.TrustWrites {
				t.Errorf("sshClientOptions(%v) = keys %q, known_hosts %q, trust %v; want %q, %q, true",
					tt.env, o.IdentityFiles, o.KnownHostsFile, o.TrustWrites, tt.wantKeys, tt.wantHosts)
			}
		})
	}
}

func readAll(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// chunkFiles lists the chunk files of a store directory, relative to it.
func chunkFiles(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*", "*.cacnk"))
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range files {
		files[i] = strings.TrimPrefix(f, dir+"/")
	}
	slices.Sort(files)
	return files
}
