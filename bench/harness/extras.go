package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/mkimage"
)

// extras runs the measurements besides the mode table. A failure is
// noted in the report and does not stop the others.
func (h *harness) extras(ctx context.Context) {
	for _, x := range h.opts.Extras {
		if ctx.Err() != nil {
			return
		}
		var err error
		switch x {
		case "convert":
			err = h.extraConvert(ctx)
		case "dedup":
			h.extraDedup()
		case "chunkers":
			err = h.extraChunkers(ctx)
		case "fuse":
			err = h.extraFUSE(ctx)
		case "pgversion":
			err = h.extraPgVersion(ctx)
		case "node":
			err = h.extraNode(ctx)
		}
		if err != nil {
			h.logf("%s: %v", x, err)
			h.report.Notes = append(h.report.Notes, fmt.Sprintf("%s: failed: %v", x, err))
		}
	}
}

// ConvertRow is one tool's conversion of one tree.
type ConvertRow struct {
	Tool    string
	Seconds float64
	MBps    float64
}

var benchLine = regexp.MustCompile(`^BenchmarkConvertDir/(\S+)-\d+\s+\d+\s+([\d.]+) ns/op\s+([\d.]+) MB/s`)

// parseConvertBench reads go test -bench output of BenchmarkConvertDir.
func parseConvertBench(out string) []ConvertRow {
	var rows []ConvertRow
	for line := range strings.SplitSeq(out, "\n") {
		m := benchLine.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		ns, _ := strconv.ParseFloat(m[2], 64)
		mbps, _ := strconv.ParseFloat(m[3], 64)
		rows = append(rows, ConvertRow{Tool: m[1], Seconds: ns / 1e9, MBps: mbps})
	}
	return rows
}

// extraConvert runs bench's BenchmarkConvertDir (mkimage, casync make,
// desync's tar pipeline) once on the largest selected tree.
func (h *harness) extraConvert(ctx context.Context) error {
	if _, err := exec.LookPath("go"); err != nil {
		return fmt.Errorf("the conversion benchmark needs the Go toolchain: %w", err)
	}
	var big *image
	for _, im := range h.images {
		if big == nil || im.conv.Bytes > big.conv.Bytes {
			big = im
		}
	}
	if big == nil {
		return nil
	}
	h.logf("conversion throughput on %s", big.rootfs)
	cmd := exec.CommandContext(ctx, "go", "test", "-run", "^$", "-bench", "^BenchmarkConvertDir$", "-benchtime", "1x", "-count", "1", "./bench")
	cmd.Dir = h.opts.Module
	cmd.Env = append(os.Environ(), "BENCH_ROOTFS="+big.rootfs)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go test -bench BenchmarkConvertDir: %w: %s", err, tail(string(out), 2000))
	}
	rows := parseConvertBench(string(out))
	if len(rows) == 0 {
		return fmt.Errorf("no BenchmarkConvertDir results in: %s", tail(string(out), 2000))
	}
	h.report.ConvertTree = big.wl.Name
	h.report.Convert = rows
	return nil
}

// extraDedup reports what the conversions stored: per image and for the
// whole bootfs and casync stores against the docker save archives.
func (h *harness) extraDedup() {
	d := &DedupReport{}
	for _, im := range h.images {
		d.Rows = append(d.Rows, DedupRow{Image: im.wl.Name, SaveBytes: im.origSize, CatarBytes: im.conv.Bytes,
			Chunks: im.conv.Chunks, Written: im.conv.BytesWritten, StoreBytes: im.storeBytes, CasyncBytes: im.casStoreBytes})
		d.SaveTotal += im.origSize
	}
	d.Store, _ = dirSize(h.storeDir())
	d.Casync, _ = dirSize(h.casStoreDir())
	h.report.Dedup = d
}

// ChunkerRow compares one chunking algorithm over every selected tree.
type ChunkerRow struct {
	Chunker       string
	Seconds       float64
	CatarBytes    int64 // archive bytes chunked
	Distinct      int   // distinct chunks
	DistinctBytes int64 // their uncompressed size
	StoreBytes    int64 // the store on disk
}

// extraChunkers converts every tree (dir: source) into a fresh store per
// chunker, one after the other.
func (h *harness) extraChunkers(ctx context.Context) error {
	for _, c := range []string{"buzhash", "rabin"} {
		dir := filepath.Join(h.opts.Work, "chunkers", c)
		row := ChunkerRow{Chunker: c}
		ids := map[casync.ChunkID]bool{}
		for _, im := range h.images {
			h.logf("chunkers: %s with %s", im.wl.Name, c)
			if err := dropCaches(); err != nil {
				return err
			}
			index := filepath.Join(dir, im.wl.Name+".caidx")
			out, err := command(ctx, filepath.Join(h.opts.Bin, "mkimage"), "--store", filepath.Join(dir, "store"),
				"--index-out", index, "--chunker", c, "--json", "--quiet", "dir:"+im.rootfs)
			if err != nil {
				return err
			}
			var s mkimage.Summary
			if err := json.Unmarshal([]byte(out), &s); err != nil {
				return fmt.Errorf("mkimage --json: %w", err)
			}
			row.Seconds += s.Seconds
			row.CatarBytes += s.Bytes
			f, err := os.Open(index)
			if err != nil {
				return err
			}
			x, err := casync.ReadIndex(f)
			f.Close()
			if err != nil {
				return err
			}
			for _, ch := range x.Chunks {
				if !ids[ch.ID] {
					ids[ch.ID] = true
					row.Distinct++
					row.DistinctBytes += int64(ch.Size)
				}
			}
		}
		var err error
		if row.StoreBytes, err = dirSize(filepath.Join(dir, "store")); err != nil {
			return err
		}
		os.RemoveAll(dir)
		h.report.Chunkers = append(h.report.Chunkers, row)
	}
	return nil
}

// FUSERow is one filesystem's metadata walk and sequential read of a tree.
type FUSERow struct {
	System      string
	Runs        int // Find and Read are medians over this many
	Entries     int
	Find        time.Duration
	ReadBytes   int64
	Read        time.Duration
	RSS         int64
	ColdRead    time.Duration // boot only: the first read, over HTTP
	ColdFetched int64
}

// fuseRuns is how many times extraFUSE measures native and boot mount.
const fuseRuns = 3

// extraFUSE compares `find` and a sequential read of every file on the
// native tree, `boot mount` with a warm cache and `casync mount` of the
// local casync store (its nearest thing to a warm cache), each after the
// page cache was dropped.
func (h *harness) extraFUSE(ctx context.Context) error {
	im := h.images[0]
	for _, c := range h.images {
		if c.wl.Name == "postgres" {
			im = c
		}
	}
	h.report.FUSEImage = im.wl.Name
	// measure times find and the read, each after dropping the page
	// cache, runs times, and keeps each one's median: single runs on a
	// shared virtual machine vary by a fifth.
	measure := func(system, root string, runs int, rss func() int64) (FUSERow, error) {
		row := FUSERow{System: system, Runs: runs}
		var finds, reads []time.Duration
		for range runs {
			if err := dropCaches(); err != nil {
				return row, err
			}
			start := time.Now()
			n, err := countFind(ctx, root)
			if err != nil {
				return row, err
			}
			finds, row.Entries = append(finds, time.Since(start)), n
			if err := dropCaches(); err != nil {
				return row, err
			}
			start = time.Now()
			if row.ReadBytes, err = readTree(root); err != nil {
				return row, err
			}
			reads = append(reads, time.Since(start))
		}
		row.Find, row.Read = median(finds), median(reads)
		if rss != nil {
			row.RSS = rss()
		}
		return row, nil
	}
	h.logf("fuse: native %s", im.rootfs)
	native, err := measure("native", im.rootfs, fuseRuns, nil)
	if err != nil {
		return err
	}
	h.report.FUSE = append(h.report.FUSE, native)

	h.logf("fuse: boot mount")
	mnt := filepath.Join(h.opts.Work, "fuse", "bootfs")
	cache := filepath.Join(h.opts.Work, "fuse", "cache")
	for _, d := range []string{mnt, cache} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	var log bytes.Buffer
	cmd := exec.Command(filepath.Join(h.opts.Bin, "boot"), "mount", "--store", h.store.url, "--cache", cache, "--log-level", "warn", im.index, mnt)
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopBoot := sync.OnceFunc(func() {
		syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		unmount(mnt)
	})
	defer stopBoot()
	for deadline := time.Now().Add(time.Minute); !isMountpoint(mnt); time.Sleep(5 * time.Millisecond) {
		select {
		case err := <-done:
			done <- err
			return fmt.Errorf("boot mount exited: %v: %s", err, tail(log.String(), 1000))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("boot mount did not mount %s: %s", mnt, tail(log.String(), 1000))
		}
	}
	before, err := h.store.metrics()
	if err != nil {
		return err
	}
	if err := dropCaches(); err != nil {
		return err
	}
	start := time.Now()
	if _, err := readTree(mnt); err != nil {
		return fmt.Errorf("cold read of the boot mount: %w", err)
	}
	coldRead := time.Since(start)
	after, err := h.store.metrics()
	if err != nil {
		return err
	}
	pid := cmd.Process.Pid
	row, err := measure("boot mount (warm cache)", mnt, fuseRuns, func() int64 { return peakRSS(pid) })
	if err != nil {
		return err
	}
	row.ColdRead, row.ColdFetched = coldRead, after.sub(before).Bytes
	h.report.FUSE = append(h.report.FUSE, row)
	stopBoot()

	if im.casIndex == "" {
		return nil
	}
	h.logf("fuse: casync mount")
	cmnt := filepath.Join(h.opts.Work, "fuse", "casync")
	if err := os.MkdirAll(cmnt, 0o755); err != nil {
		return err
	}
	ccmd, cdone, err := h.mountCasync(ctx, im.casIndex, h.casStoreDir(), cmnt)
	if err != nil {
		return err
	}
	defer stopCasync(ccmd, cdone, cmnt)
	cpid := ccmd.Process.Pid
	// One run: casync mount reads at a few MB/s, and is only the
	// anchor.
	row, err = measure("casync mount (local store)", cmnt, 1, func() int64 { return peakRSS(cpid) })
	if err != nil {
		return err
	}
	h.report.FUSE = append(h.report.FUSE, row)
	return nil
}

// countFind runs find on root and counts the lines it prints.
func countFind(ctx context.Context, root string) (int, error) {
	cmd := exec.CommandContext(ctx, "find", root)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	buf := make([]byte, 64<<10)
	n := 0
	for {
		k, err := out.Read(buf)
		n += bytes.Count(buf[:k], []byte{'\n'})
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, err
		}
	}
	if err := cmd.Wait(); err != nil {
		return 0, fmt.Errorf("find %s: %w: %s", root, err, tail(stderr.String(), 500))
	}
	return n, nil
}

// readTree reads every regular file under root once, in walk order, and
// returns the bytes read.
func readTree(root string) (int64, error) {
	var total int64
	buf := make([]byte, 1<<20)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		n, err := io.CopyBuffer(io.Discard, f, buf)
		f.Close()
		total += n
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		return nil
	})
	return total, err
}

// PgVersionRow is `postgres --version` from an empty cache on loopback.
type PgVersionRow struct {
	System     string
	Took       time.Duration
	Bytes      int64
	Requests   int64
	ImageStore int64 // the image's bytes in that store
	RSS        int64
}

// extraPgVersion runs `postgres --version` with bootfs (empty cache) and
// casync mount + chroot, both over loopback HTTP.
func (h *harness) extraPgVersion(ctx context.Context) error {
	i := slices.IndexFunc(h.images, func(im *image) bool { return im.wl.Name == "postgres" })
	if i < 0 {
		return nil
	}
	im := *h.images[i]
	im.wl.Ready, im.wl.Want = nil, "PostgreSQL"
	im.wl.Argv = []string{postgresBin, "--version"}
	h.logf("pgversion: bootfs")
	docker(context.Background(), "rm", "-f", "-v", h.container)
	docker(context.Background(), "volume", "rm", "-f", h.volume)
	// bootfs-registry removes every boot image before its pull; this
	// measures the store, not the image's arrival.
	if _, err := docker(ctx, "image", "inspect", im.boot); err != nil {
		lo, _ := network("loopback")
		if err := h.clearBoots(ctx, lo); err != nil {
			return err
		}
		pulled, _, err := h.pullBoot(ctx, lo, h.images[i], "boot")
		if err != nil {
			return err
		}
		if err := keepBoot(ctx, pulled, im.boot); err != nil {
			return err
		}
	}
	if err := dropCaches(); err != nil {
		return err
	}
	before, err := h.store.metrics()
	if err != nil {
		return err
	}
	start := time.Now()
	took, rss, err := h.runContainer(ctx, im.wl, containerRun{image: im.boot, boot: true, watchRSS: true,
		env: []string{"BOOTFS_STORE=" + h.store.url}, volumes: []string{h.volume + ":/.bootfs/cache"}}, start)
	if err != nil {
		return err
	}
	after, err := h.store.metrics()
	if err != nil {
		return err
	}
	d := after.sub(before)
	h.report.PgVersion = append(h.report.PgVersion, PgVersionRow{System: "bootfs", Took: took, Bytes: d.Bytes, Requests: d.Requests, ImageStore: im.storeBytes, RSS: rss})
	if im.casIndex == "" {
		return nil
	}
	h.logf("pgversion: casync mount")
	if err := dropCaches(); err != nil {
		return err
	}
	before, err = h.casStore.metrics()
	if err != nil {
		return err
	}
	took, rss, err = h.runCasync(ctx, &im, h.casStore.url+"/", time.Now())
	if err != nil {
		return err
	}
	after, err = h.casStore.metrics()
	if err != nil {
		return err
	}
	d = after.sub(before)
	h.report.PgVersion = append(h.report.PgVersion, PgVersionRow{System: "casync mount + chroot", Took: took, Bytes: d.Bytes, Requests: d.Requests, ImageStore: im.casStoreBytes, RSS: rss})
	return nil
}
