package e2e

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bootfs/bootfs/internal/registrytest"
	"github.com/bootfs/bootfs/internal/testenv"
)

// pushSummary is what mkimage --push --json prints.
type pushSummary struct {
	convertSummary
	Chunks       int     `json:"chunks"`
	UniqueChunks int     `json:"unique_chunks"`
	Seconds      float64 `json:"seconds"`
	RuntimeStore string  `json:"runtime_store"`
	Target       string  `json:"target"`
}

// push runs mkimage --push ref src with extra flags.
func (e *env) push(t *testing.T, ref, src string, extra ...string) pushSummary {
	t.Helper()
	args := append([]string{"--push", ref, "--json", "--quiet"}, extra...)
	args = append(args, src)
	out, err := exec.Command(filepath.Join(e.bin, "mkimage"), args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("mkimage %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr)
	}
	var s pushSummary
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("mkimage --json: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", ref).Run() })
	return s
}

// pull pulls ref from a registry of the test, afresh.
func pull(t *testing.T, ref string) {
	t.Helper()
	exec.Command("docker", "rmi", "-f", ref).Run()
	if out, err := exec.Command("docker", "pull", "-q", ref).CombinedOutput(); err != nil {
		t.Fatalf("docker pull %s: %v\n%s", ref, err, out)
	}
}

// registryTree is the busybox tree plus a large file of random bytes
// that the workloads below do not read, and extra files.
func registryTree(t *testing.T, e *env, name string, bigSize int, extra map[string][]byte) string {
	t.Helper()
	tree := filepath.Join(t.TempDir(), name)
	if err := os.CopyFS(tree, os.DirFS(filepath.Join(e.tmp, "bb"))); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, bigSize)
	rand.Read(big)
	extra["data/big"] = big
	for n, b := range extra {
		if err := os.WriteFile(filepath.Join(tree, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return tree
}

func md5hex(b []byte) string {
	s := md5.Sum(b)
	return hex.EncodeToString(s[:])
}

// TestRegistryPushRun: mkimage --push to a registry, then docker pull
// and docker run of the boot image, which reads its chunks lazily from
// the same repository; boot mount reads it too; a second image uploads
// only what it adds; garbage collection after deleting it keeps what the
// first needs; damaged packs give EIO, never wrong bytes.
func TestRegistryPushRun(t *testing.T) {
	e := setup(t)
	testenv.LookPath(t, registrytest.Binary)
	r := registrytest.Start(t, registrytest.Config{})
	other := make([]byte, 4<<20)
	rand.Read(other)
	tree1 := registryTree(t, e, "app1", 24<<20, map[string][]byte{})
	tree2 := registryTree(t, e, "app2", 0, map[string][]byte{"data/other": other})
	// app2 keeps app1's big file: the same bytes, so the same chunks.
	big, err := os.ReadFile(filepath.Join(tree1, "data/big"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(tree2, "data/big"), big, 0o644)
	orig1 := e.prefix + "/reg-app:1"
	if err := dockerImport(tree1, orig1, `CMD ["/bin/sh"]`); err != nil {
		t.Fatal(err)
	}
	repo := r.Host + "/registry-e2e/app"
	index := filepath.Join(t.TempDir(), "app1.caidx")
	s1 := e.push(t, repo+":1", orig1, "--index-out", index)
	s2 := e.push(t, repo+":2", "dir:"+tree2)
	t.Logf("push app:1: %d bytes, %d chunks, %d new, %d bytes written, %.2fs; push app:2 (+4 MiB): %d bytes, %d chunks, %d new (%d bytes), %d written, %.2fs",
		s1.Bytes, s1.Chunks, s1.NewChunks, s1.BytesWritten, s1.Seconds, s2.Bytes, s2.Chunks, s2.NewChunks, s2.NewBytes, s2.BytesWritten, s2.Seconds)
	if s2.NewBytes > 6<<20 || s2.NewChunks >= s2.Chunks/2 {
		t.Errorf("the second push uploaded %d chunks (%d bytes) of %d; want little more than its new 4 MiB", s2.NewChunks, s2.NewBytes, s2.Chunks)
	}
	if !strings.HasPrefix(s1.RuntimeStore, "oci://"+repo+"@sha256:") {
		t.Errorf("runtime store %q, want the repository with its chunk map pinned", s1.RuntimeStore)
	}

	// docker pull fetches only the boot image.
	ref := repo + ":1"
	pull(t, ref)
	out, err := exec.Command("docker", "image", "inspect", "--format", "{{.Size}}", ref).Output()
	if err != nil {
		t.Fatal(err)
	}
	var size int64
	fmt.Sscan(string(out), &size)
	if size > 16<<20 || size >= s1.Bytes/2 {
		t.Errorf("the pulled boot image is %d bytes; the archive is %d: chunks were pulled with it", size, s1.Bytes)
	}

	// docker run reads the chunks lazily: only what the workload needs.
	r.ResetLog()
	statsDir := t.TempDir()
	want := e.run(t, false, nil, orig1, "cat", "/data/hello")
	got := e.run(t, true, []string{"-v", statsDir + ":/stats", "-e", "BOOTFS_STATS=/stats/s.json"}, ref, "cat", "/data/hello")
	if got.code != 0 || got.stdout != want.stdout {
		t.Fatalf("docker run %s cat /data/hello: exit %d, stdout %q, stderr %s; want %q", ref, got.code, got.stdout, got.stderr, want.stdout)
	}
	st := readStats(t, filepath.Join(statsDir, "s.json"))
	gets := r.BlobGets()
	t.Logf("cat /data/hello: boot fetched %d chunks (%d bytes) of %d; the registry served %d blob GETs", st.ChunksFetched, st.BytesFetched, s1.Chunks, len(gets))
	// At most one GET for the chunk map and one per chunk fetched (boot
	// reads neighbouring chunks of a pack with one Range GET, so usually
	// fewer); boot writes its figures at exit, when a read-ahead fetch or
	// two may still be on the wire uncounted (readAheadSlack). More means
	// chunks boot never asked for were sent.
	const readAheadSlack = 4
	if n := uint64(len(gets)); n < 2 || n > st.ChunksFetched+1+readAheadSlack {
		t.Errorf("registry served %d blob GETs for %d chunks fetched (+1 map, +%d read-ahead in flight at exit): it sent chunks boot did not ask for", len(gets), st.ChunksFetched, readAheadSlack)
	}
	if st.BytesFetched > uint64(s1.Bytes)/4 {
		t.Errorf("cat /data/hello fetched %d of %d bytes: the 24 MiB file it never read was fetched", st.BytesFetched, s1.Bytes)
	}
	// Setuid boot (docker run --user) reads a registry anonymously too.
	if got := e.run(t, true, []string{"--user", "1000"}, ref, "sh", "-c", "id -u; cat /data/hello"); got.code != 0 || got.stdout != "1000\n"+want.stdout {
		t.Errorf("docker run --user 1000 %s: exit %d, %q, stderr %s", ref, got.code, got.stdout, got.stderr)
	}
	wantBig := md5hex(big)
	if got := e.run(t, true, nil, ref, "md5sum", "/data/big"); got.code != 0 || !strings.HasPrefix(got.stdout, wantBig) {
		t.Fatalf("md5sum /data/big in the boot image: exit %d, %q, stderr %s; want %s", got.code, got.stdout, got.stderr, wantBig)
	}

	// boot mount reads the repository, whole or by tag.
	for _, store := range []string{"oci://" + repo, "oci://" + repo + ":1"} {
		data := bootMountRead(t, e, store, index, nil, "data/hello", "data/big")
		if string(data["data/hello"]) != want.stdout || md5hex(data["data/big"]) != wantBig {
			t.Errorf("boot mount --store %s: hello %q, big md5 %s; want %q, %s", store, data["data/hello"], md5hex(data["data/big"]), want.stdout, wantBig)
		}
	}

	// Delete app:2 and its keep-alive manifest, collect garbage: app:1
	// still runs cold, with an empty cache, and reads every byte.
	deleteManifest(t, r, "registry-e2e/app", s2.ImageID)
	deleteManifest(t, r, "registry-e2e/app", headManifest(t, r, "registry-e2e/app", "sha256-"+strings.TrimPrefix(s2.ImageID, "sha256:")+".bootfs"))
	gc := r.GarbageCollect(t)
	if !strings.Contains(gc, "blob eligible for deletion") {
		t.Errorf("garbage-collect deleted nothing of app:2:\n%s", gc)
	}
	pull(t, ref)
	got = e.run(t, true, []string{"-e", "BOOTFS_CACHE=none"}, ref, "sh", "-c", "md5sum /data/big; cat /data/hello")
	if got.code != 0 || got.stdout != wantBig+"  /data/big\n"+want.stdout {
		t.Errorf("after garbage-collect: exit %d, stdout %q, stderr %s", got.code, got.stdout, got.stderr)
	}

	// A pack altered in the registry's storage: EIO for the reads it
	// serves, a log line, and never wrong bytes.
	packs := packBlobs(t, r)
	if len(packs) == 0 {
		t.Fatal("no packs in the registry's storage")
	}
	for _, p := range packs {
		b, _ := os.ReadFile(p)
		for i := len(b) / 2; i < len(b)/2+64 && i < len(b); i++ {
			b[i] ^= 0xff
		}
		os.WriteFile(p, b, 0o644)
	}
	got = e.run(t, true, []string{"-e", "BOOTFS_CACHE=none"}, ref, "sh", "-c", "md5sum /data/big; echo rc=$?")
	if strings.Contains(got.stdout, wantBig) || strings.Contains(got.stdout, "rc=0") || !strings.Contains(got.stderr, "Input/output error") {
		t.Errorf("with altered packs: exit %d, stdout %q, stderr %s; want md5sum to fail with EIO", got.code, got.stdout, got.stderr)
	}
	if n := strings.Count(got.stderr, "read failed: chunk unavailable"); n != 1 || !strings.Contains(got.stderr, "content hashes to") {
		t.Errorf("with altered packs, boot logged %d unavailable chunks, want one line naming the checksum failure:\n%s", n, got.stderr)
	}
	// Missing packs: the same, quickly.
	for _, p := range packs {
		os.Remove(p)
	}
	got = e.run(t, true, []string{"-e", "BOOTFS_CACHE=none"}, ref, "sh", "-c", "md5sum /data/big; echo rc=$?")
	if strings.Contains(got.stdout, wantBig) || strings.Contains(got.stdout, "rc=0") || !strings.Contains(got.stderr, "not in the repository") || got.took > time.Minute {
		t.Errorf("with missing packs: exit %d after %v, stdout %q, stderr %s; want md5sum to fail with EIO naming the missing pack", got.code, got.took, got.stdout, got.stderr)
	}
}

// bootMountRead mounts index from store with boot mount (extra flags
// before the index) and returns the content of files.
func bootMountRead(t *testing.T, e *env, store, index string, extra []string, files ...string) map[string][]byte {
	t.Helper()
	mnt := t.TempDir()
	args := append([]string{"mount", "--store", store}, extra...)
	args = append(args, index, mnt)
	cmd := exec.Command(filepath.Join(e.bin, "boot"), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			exec.Command("umount", "-l", mnt).Run()
		}
	}()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(mnt, files[0])); err == nil {
			break
		}
		if time.Now().After(deadline) || cmd.ProcessState != nil {
			t.Fatalf("boot %s did not mount: %s", strings.Join(args, " "), stderr.String())
		}
	}
	out := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(mnt, f))
		if err != nil {
			t.Errorf("read %s through boot mount --store %s: %v\n%s", f, store, err, stderr.String())
		}
		out[f] = b
	}
	return out
}

// bootMountError runs boot mount and returns its error output, which it
// must fail with.
func bootMountError(t *testing.T, e *env, store, index string, extra ...string) string {
	t.Helper()
	args := append([]string{"mount", "--store", store}, extra...)
	args = append(args, index, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(e.bin, "boot"), args...).CombinedOutput()
	if err == nil {
		t.Fatalf("boot %s succeeded, want an error", strings.Join(args, " "))
	}
	return string(out)
}

func registryRequest(t *testing.T, r *registrytest.Registry, method, path string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+r.Host+path, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func headManifest(t *testing.T, r *registrytest.Registry, repo, tag string) string {
	t.Helper()
	resp := registryRequest(t, r, http.MethodHead, "/v2/"+repo+"/manifests/"+tag)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD manifest %s:%s: %s", repo, tag, resp.Status)
	}
	return resp.Header.Get("Docker-Content-Digest")
}

func deleteManifest(t *testing.T, r *registrytest.Registry, repo, digest string) {
	t.Helper()
	if resp := registryRequest(t, r, http.MethodDelete, "/v2/"+repo+"/manifests/"+digest); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE manifest %s@%s: %s", repo, digest, resp.Status)
	}
}

// packBlobs returns the storage files of the packs: the blobs that are
// zstd frames.
func packBlobs(t *testing.T, r *registrytest.Registry) []string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(r.Storage, "docker/registry/v2/blobs/sha256/*/*/data"))
	var packs []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil && bytes.HasPrefix(b, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
			packs = append(packs, f)
		}
	}
	return packs
}

// TestRegistryAuth: a TLS registry with htpasswd users and one behind
// token auth. mkimage pushes with credentials from a config.json file,
// boot mount reads with them (and, behind token auth, anonymously);
// without credentials, or with the wrong CA, the error says what to give.
func TestRegistryAuth(t *testing.T) {
	e := setup(t)
	testenv.LookPath(t, registrytest.Binary)
	tree := registryTree(t, e, "auth", 6<<20, map[string][]byte{})
	big, err := os.ReadFile(filepath.Join(tree, "data/big"))
	if err != nil {
		t.Fatal(err)
	}
	users := map[string]string{"alice": "correct horse"}

	t.Run("TLS+htpasswd", func(t *testing.T) {
		r := registrytest.Start(t, registrytest.Config{TLS: true, Users: users})
		auth := r.WriteAuthFile(t, t.TempDir(), "alice", users["alice"])
		index := filepath.Join(t.TempDir(), "auth.caidx")
		repo := r.Host + "/registry-e2e/auth"
		e.push(t, repo+":1", "dir:"+tree, "--registry-auth", auth, "--ca-file", r.CAFile, "--index-out", index)
		creds := []string{"--registry-auth", auth, "--ca-file", r.CAFile}
		data := bootMountRead(t, e, "oci://"+repo+":1", index, creds, "data/hello", "data/big")
		if !bytes.Equal(data["data/big"], big) {
			t.Errorf("boot mount with credentials read %d bytes of /data/big that differ from the image's", len(data["data/big"]))
		}
		if msg := bootMountError(t, e, "oci://"+repo, index, "--ca-file", r.CAFile); !strings.Contains(msg, "BOOTFS_REGISTRY_AUTH") {
			t.Errorf("boot mount without credentials: %s; want an error naming BOOTFS_REGISTRY_AUTH", msg)
		}
		other := registrytest.Start(t, registrytest.Config{TLS: true})
		if msg := bootMountError(t, e, "oci://"+repo, index, "--registry-auth", auth, "--ca-file", other.CAFile); !strings.Contains(msg, "--ca-file") {
			t.Errorf("boot mount with the wrong CA: %s; want an error naming --ca-file", msg)
		}

		// In a container, boot takes the file from BOOTFS_REGISTRY_AUTH.
		// Docker pulls the boot image from a plain registry of the test
		// (this engine trusts no test CA); BOOTFS_STORE points boot at the
		// TLS one, which holds the same chunks.
		plain := registrytest.Start(t, registrytest.Config{})
		ref := plain.Host + "/registry-e2e/auth:1"
		e.push(t, ref, "dir:"+tree)
		pull(t, ref)
		files := t.TempDir()
		for name, from := range map[string]string{"config.json": auth, "ca.pem": r.CAFile} {
			b, err := os.ReadFile(from)
			if err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(files, name), b)
		}
		flags := []string{"-v", files + ":/auth:ro", "-e", "BOOTFS_CACHE=none", "-e", "BOOTFS_STORE=oci://" + repo + ":1", "-e", "BOOTFS_CA_FILE=/auth/ca.pem"}
		got := e.run(t, true, append(flags, "-e", "BOOTFS_REGISTRY_AUTH=/auth/config.json"), ref, "md5sum", "/data/big")
		if got.code != 0 || !strings.HasPrefix(got.stdout, md5hex(big)) {
			t.Errorf("docker run with BOOTFS_REGISTRY_AUTH: exit %d, %q, stderr %s", got.code, got.stdout, got.stderr)
		}
		got = e.run(t, true, flags, ref, "md5sum", "/data/big")
		if got.code == 0 || !strings.Contains(got.stderr, "BOOTFS_REGISTRY_AUTH") {
			t.Errorf("docker run without credentials: exit %d, stderr %s; want a failure naming BOOTFS_REGISTRY_AUTH", got.code, got.stderr)
		}
	})
	t.Run("token", func(t *testing.T) {
		r := registrytest.Start(t, registrytest.Config{Token: true, Users: users})
		auth := r.WriteAuthFile(t, t.TempDir(), "alice", users["alice"])
		index := filepath.Join(t.TempDir(), "auth.caidx")
		repo := r.Host + "/registry-e2e/token"
		e.push(t, repo+":1", "dir:"+tree, "--registry-auth", auth, "--index-out", index)
		for _, creds := range [][]string{{"--registry-auth", auth}, nil} {
			data := bootMountRead(t, e, "oci://"+repo+":1", index, creds, "data/big")
			if !bytes.Equal(data["data/big"], big) {
				t.Errorf("boot mount %q behind token auth read %d bytes of /data/big that differ from the image's", creds, len(data["data/big"]))
			}
		}
		// Anonymous tokens pull, they do not push.
		args := []string{"--push", repo + ":2", "--registry-auth", "", "--quiet", "dir:" + tree}
		out, err := exec.Command(filepath.Join(e.bin, "mkimage"), args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "--registry-auth") {
			t.Errorf("anonymous mkimage --push behind token auth: %v, %s; want an error naming --registry-auth", err, out)
		}
	})
}

// minbaseOf derives a Debian minbase tree from the cached python one
// (bench/rootfs.sh) by purging python3 and what it brought, offline: the
// machine reaches no Debian mirror to debootstrap minbase itself.
func minbaseOf(t *testing.T, pyRoot string) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "minbase")
	if out, err := exec.Command("cp", "-a", pyRoot, root).CombinedOutput(); err != nil {
		t.Fatalf("copy %s: %v\n%s", pyRoot, err, out)
	}
	purge := []string{"--purge", "libpython3-stdlib", "python3", "python3.11", "python3-minimal", "python3.11-minimal",
		"libpython3.11-stdlib", "libpython3.11-minimal", "media-types", "libexpat1", "libncursesw6", "libreadline8",
		"readline-common", "libsqlite3-0", "tzdata"}
	// dpkg may refuse some (others depend on them); what it removes is
	// enough, and python3 must be gone.
	exec.Command("chroot", append([]string{root, "dpkg"}, purge...)...).Run()
	if _, err := os.Lstat(filepath.Join(root, "usr/bin/python3")); err == nil {
		t.Fatalf("python3 is still in the derived minbase tree %s", root)
	}
	return root
}

// TestRegistryDebianSharedBase pushes Debian minbase, then minbase with
// python3, into one repository: the second uploads only the chunks the
// first did not have, as many as a chunk store would take, and the
// pushed python image runs python as the original does.
func TestRegistryDebianSharedBase(t *testing.T) {
	e := setup(t)
	testenv.LookPath(t, registrytest.Binary)
	pyRoot := debianRootfs(t, "python", "python3")
	minRoot := minbaseOf(t, pyRoot)
	r := registrytest.Start(t, registrytest.Config{})
	repo := r.Host + "/registry-e2e/debian"

	pushTimed := func(ref, root string) (pushSummary, time.Duration, int) {
		r.ResetLog()
		start := time.Now()
		s := e.push(t, ref, "dir:"+root)
		took := time.Since(start)
		return s, took, strings.Count(r.Log(), `"PUT /v2/`) + strings.Count(r.Log(), `"PATCH /v2/`) + strings.Count(r.Log(), `"POST /v2/`)
	}
	min, minTook, minReqs := pushTimed(repo+":min", minRoot)
	py, pyTook, pyReqs := pushTimed(repo+":python", pyRoot)
	t.Logf("push minbase: %d bytes, %d chunks, %d new, %d written, %d upload requests, %v", min.Bytes, min.Chunks, min.NewChunks, min.BytesWritten, minReqs, minTook.Round(time.Millisecond))
	t.Logf("push +python3: %d bytes, %d chunks, %d new (%d bytes), %d written, %d upload requests, %v", py.Bytes, py.Chunks, py.NewChunks, py.NewBytes, py.BytesWritten, pyReqs, pyTook.Round(time.Millisecond))
	mapDigest := py.RuntimeStore[strings.LastIndex(py.RuntimeStore, "@")+1:]
	t.Logf("the python image's chunk map: %s bytes", registryRequest(t, r, http.MethodHead, "/v2/registry-e2e/debian/blobs/"+mapDigest).Header.Get("Content-Length"))
	if shared := py.Bytes - py.NewBytes; shared < min.Bytes/2 {
		t.Errorf("the python push reused %d bytes of the %d-byte base, want at least half", shared, min.Bytes)
	}

	// The same two into a chunk store: the registry takes no more.
	store := filepath.Join(t.TempDir(), "store")
	for _, c := range []struct {
		root string
		want pushSummary
	}{{minRoot, min}, {pyRoot, py}} {
		out, err := exec.Command(filepath.Join(e.bin, "mkimage"), "--store", store, "--json", "--quiet", "dir:"+c.root).Output()
		if err != nil {
			t.Fatal(err)
		}
		var s convertSummary
		json.Unmarshal(out, &s)
		if s.NewChunks != c.want.NewChunks {
			t.Errorf("%s: the chunk store took %d new chunks, the registry %d", c.root, s.NewChunks, c.want.NewChunks)
		}
	}

	pyImg := e.prefix + "/reg-debian-python:orig"
	if err := dockerImport(pyRoot, pyImg, `CMD ["/bin/bash"]`); err != nil {
		t.Fatal(err)
	}
	prog := "import json, sqlite3; print(json.dumps({'sqlite': sqlite3.sqlite_version}))"
	want := e.run(t, false, nil, pyImg, "python3", "-c", prog)
	pull(t, repo+":python")
	got := e.run(t, true, nil, repo+":python", "python3", "-c", prog)
	if want.code != 0 || got.code != 0 || got.stdout != want.stdout {
		t.Errorf("python3 in the pushed image: exit %d, %q, stderr %s; the original: exit %d, %q", got.code, got.stdout, got.stderr, want.code, want.stdout)
	}
}
