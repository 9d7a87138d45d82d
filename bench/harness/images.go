package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/mkimage"
)

// image is one workload's images and the files made from them.
type image struct {
	wl     Workload
	rootfs string
	// Tags: the original, its boot image and the boot image with a
	// prefetch list.
	orig, boot, prefetch string
	// docker save archives under the tar server, and their sizes.
	origTar, bootTar, prefetchTar string
	origSize, bootSize            int64
	// index is the bootfs caidx (with index.toc), casIndex casync make's.
	index, casIndex string
	conv            mkimage.Summary // mkimage --json
	// ociStore is the store URL of its boot image in the registry
	// (mkimage --push into ociRepo), "" when there is none.
	ociStore string
	// estargz says the registry holds its eStargz conversions, tags
	// estargz and estargz-opt.
	estargz bool
	// storeBytes are the stored (compressed) bytes of the image's distinct
	// chunks in the bootfs store, casStoreBytes in casync's.
	storeBytes, casStoreBytes int64
}

// repo is the image's repository in the registry.
func (im *image) repo() string { return prefix + "/" + im.wl.Name }

// rootfsOf returns the workload's root filesystem: bench/rootfs.sh's
// cached debootstrap, or a fresh busybox tree.
func (h *harness) rootfsOf(ctx context.Context, w Workload) (string, error) {
	if w.Rootfs == "" {
		dir := filepath.Join(h.opts.Work, "busybox-rootfs")
		return dir, busyboxTree(dir)
	}
	out, err := command(ctx, filepath.Join(h.opts.Module, "bench", "rootfs.sh"), w.Rootfs, w.Packages)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// busyboxTree writes a busybox-static root filesystem at root.
func busyboxTree(root string) error {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("quick mode needs busybox (apt-get install busybox-static): %w", err)
	}
	os.RemoveAll(root)
	for _, d := range []string{"bin", "dev", "etc", "proc", "tmp", "root", "usr/share/doc"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o1777); err != nil {
		return err
	}
	b, err := os.ReadFile(bb)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), b, 0o755); err != nil {
		return err
	}
	list, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for c := range strings.FieldsSeq(string(list)) {
		if c != "busybox" {
			if err := os.Symlink("busybox", filepath.Join(root, "bin", c)); err != nil {
				return err
			}
		}
	}
	files := map[string]string{
		"etc/passwd":     "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":      "root:x:0:\nnogroup:x:65534:\n",
		"etc/os-release": "NAME=\"bootfs bench busybox\"\nID=busybox\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	// Some bulk for the store and read measurements: 8 MiB of
	// pseudo-random text in files of several sizes.
	seed := uint64(1)
	for i := range 32 {
		buf := make([]byte, (i%8+1)<<16)
		for j := range buf {
			seed = seed*6364136223846793005 + 1442695040888963407
			buf[j] = 'a' + byte(seed>>59)
		}
		if err := os.WriteFile(filepath.Join(root, "usr/share/doc", fmt.Sprintf("f%02d", i)), buf, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// runMarker is a file added to every original image, different in every
// run: it makes the image's layer the run's own. Without it a layer
// imported from the same cached tree by anyone else on the machine (a
// demo, a test) is already in Docker, and a registry pull skips it.
const runMarker = "etc/bootfs-bench-run"

// dockerImport imports the tree at dir as tag with docker import's
// changes; with marker, the file runMarker under marker is added to it.
func dockerImport(ctx context.Context, dir, tag string, changes []string, marker string) error {
	args := []string{"import"}
	for _, c := range changes {
		args = append(args, "-c", c)
	}
	args = append(args, "-", tag)
	targs := []string{"-C", dir, "--numeric-owner", "-c", "."}
	if marker != "" {
		targs = append(targs, "-C", marker, "./"+runMarker)
	}
	tar := exec.CommandContext(ctx, "tar", targs...)
	imp := exec.CommandContext(ctx, "docker", args...)
	pipe, err := tar.StdoutPipe()
	if err != nil {
		return err
	}
	imp.Stdin = pipe
	var out strings.Builder
	imp.Stdout, imp.Stderr = &out, &out
	if err := tar.Start(); err != nil {
		return err
	}
	if err := imp.Run(); err != nil {
		tar.Wait()
		return fmt.Errorf("docker import %s: %w: %s", tag, err, tail(out.String(), 1000))
	}
	return tar.Wait()
}

// prepare builds, converts and archives one workload's images.
func (h *harness) prepare(ctx context.Context, w Workload) (*image, error) {
	im := &image{wl: w,
		orig:     prefix + "/" + w.Name + ":orig",
		boot:     prefix + "/" + w.Name + ":boot",
		prefetch: prefix + "/" + w.Name + ":prefetch",
	}
	var err error
	if im.rootfs, err = h.rootfsOf(ctx, w); err != nil {
		return nil, err
	}
	h.logf("%s: import %s as %s", w.Name, im.rootfs, im.orig)
	h.removeImageAtEnd(im.orig)
	if err := dockerImport(ctx, im.rootfs, im.orig, w.Changes, h.marker); err != nil {
		return nil, err
	}
	im.origTar = w.Name + "-orig.tar"
	if im.origSize, err = h.save(ctx, im.orig, im.origTar); err != nil {
		return nil, err
	}
	if h.registry != nil {
		h.logf("%s: push %s to the registry", w.Name, im.orig)
		if err := h.push(ctx, im.orig, im.repo(), "orig"); err != nil {
			return nil, err
		}
	}
	if h.stargz != nil {
		if err := h.prepareEstargz(ctx, im); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			h.logf("%s: eStargz conversion: %v", w.Name, err)
			h.report.Notes = append(h.report.Notes, fmt.Sprintf("%s: no eStargz images: %s", w.Name, oneLine(err.Error())))
		}
	}

	h.logf("%s: convert with mkimage", w.Name)
	im.index = filepath.Join(h.opts.Work, "index", w.Name+".caidx")
	h.removeImageAtEnd(im.boot)
	out, err := command(ctx, filepath.Join(h.opts.Bin, "mkimage"), "--store", h.storeDir(),
		"--runtime-store", h.store.url, "--index-out", im.index, "--json", "--quiet", im.orig, im.boot)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(out), &im.conv); err != nil {
		return nil, fmt.Errorf("mkimage --json: %w: %q", err, tail(out, 500))
	}
	im.bootTar = w.Name + "-boot.tar"
	if im.bootSize, err = h.save(ctx, im.boot, im.bootTar); err != nil {
		return nil, err
	}
	if h.registry != nil {
		if err := h.push(ctx, im.boot, im.repo(), "boot"); err != nil {
			return nil, err
		}
	}
	if im.storeBytes, err = indexStoreBytes(im.index, h.storeDir()); err != nil {
		return nil, err
	}

	if h.registry != nil && slices.Contains(h.opts.Modes, ModeBootfsRegistry) {
		if err := h.pushBoot(ctx, im); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			h.logf("%s: mkimage --push: %v", w.Name, err)
			h.report.Notes = append(h.report.Notes, fmt.Sprintf("%s: no boot image in the registry: %s", w.Name, oneLine(err.Error())))
		}
	}

	if h.needCasync() {
		h.logf("%s: casync make", w.Name)
		im.casIndex = filepath.Join(h.opts.Work, "index", w.Name+"-casync.caidx")
		args := append([]string{"make", "--store=" + h.casStoreDir()}, casync.CasyncMakeArgs...)
		if _, err := command(ctx, "casync", append(args, im.casIndex, im.rootfs)...); err != nil {
			return nil, err
		}
		if im.casStoreBytes, err = indexStoreBytes(im.casIndex, h.casStoreDir()); err != nil {
			return nil, err
		}
	}
	return im, nil
}

// save writes `docker save tag` to name under the tar directory and
// returns its size.
func (h *harness) save(ctx context.Context, tag, name string) (int64, error) {
	file := filepath.Join(h.tarDir(), name)
	if _, err := docker(ctx, "save", "-o", file, tag); err != nil {
		return 0, err
	}
	fi, err := os.Stat(file)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func (h *harness) removeImageAtEnd(tag string) {
	if h.opts.Keep {
		return
	}
	h.clean.add(func() { docker(context.Background(), "rmi", "-f", tag) })
}

// indexStoreBytes returns the stored size of the distinct chunks index
// references in the local store dir.
func indexStoreBytes(index, dir string) (int64, error) {
	ids, err := chunkstore.ReadKeepSet(index)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", index, err)
	}
	var n int64
	for id := range ids {
		fi, err := os.Stat(filepath.Join(dir, filepath.FromSlash(chunkstore.ChunkPath(id))))
		if err != nil {
			return 0, fmt.Errorf("chunk %s of %s: %w", id, index, err)
		}
		n += fi.Size()
	}
	return n, nil
}

// serveTars serves the docker save archives over HTTP on loopback.
func (h *harness) serveTars() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: http.FileServer(http.Dir(h.tarDir()))}
	go srv.Serve(ln)
	h.clean.add(func() { srv.Close() })
	return "http://" + ln.Addr().String(), nil
}

// load fetches a docker save archive from url and pipes it into docker
// load, like a pull without a registry. It returns the bytes received.
func load(ctx context.Context, url string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("fetch %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("fetch %s: %s", url, resp.Status)
	}
	cmd := exec.CommandContext(ctx, "docker", "load", "-q")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return 0, err
	}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	n, copyErr := io.Copy(stdin, resp.Body)
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		return n, fmt.Errorf("docker load of %s: %w: %s", url, err, tail(out.String(), 1000))
	}
	if copyErr != nil {
		return n, fmt.Errorf("fetch %s: %w", url, copyErr)
	}
	return n, nil
}

// prefetchSupport says why mode bootfs-prefetch cannot run, or "".
func (h *harness) prefetchSupport(ctx context.Context) string {
	help, _ := exec.CommandContext(ctx, filepath.Join(h.opts.Bin, "mkimage"), "-h").CombinedOutput()
	if !strings.Contains(string(help), "-prefetch") {
		return "not available: this mkimage has no --prefetch flag"
	}
	help, _ = exec.CommandContext(ctx, filepath.Join(h.opts.Bin, "boot"), "help").CombinedOutput()
	if !strings.Contains(string(help), "BOOTFS_RECORD") {
		return "not available: this boot does not know BOOTFS_RECORD"
	}
	return ""
}
