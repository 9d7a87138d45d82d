// Command mkimage converts a root filesystem into bootfs form: chunks in a
// casync chunk store, a caidx index and a TOC. See README.md.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"golang.org/x/term"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/opener"
	"github.com/bootfs/bootfs/chunkstore/registry"
	"github.com/bootfs/bootfs/mkimage"
)

const usage = `usage: mkimage [flags] SOURCE [TARGET]

SOURCE is a Docker image reference (read through the Engine API),
dir:PATH (a root filesystem directory), tar:PATH (a rootfs
tarball, e.g. from docker export) or tar:- (the tarball on standard input).

TARGET is the tag of the boot image to load into Docker. Without TARGET
(and without --output or --push) mkimage makes no boot image: it stores
the chunks in --store and writes the index only where --index-out says.

--push REGISTRY/REPOSITORY:TAG stores the chunks in that registry
repository and pushes the boot image there, reading its chunks from the
same repository: docker run REGISTRY/REPOSITORY:TAG on any node is then
all it takes.

Flags:
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	var (
		opts      mkimage.Options
		store     string
		creds     opener.Credentials
		chunkSize = fs.String("chunk-size", "16k:64k:256k", "chunk sizes `min:avg:max`, in bytes or with a k/m suffix")
		chunker   = fs.String("chunker", "buzhash", "chunking `algorithm`: buzhash (casync's) or rabin (restic's)")
		digest    = fs.String("digest", "sha512-256", "chunk ID `hash`: sha512-256 or sha256")
		quiet     = fs.Bool("quiet", false, "print nothing but errors")
		asJSON    = fs.Bool("json", false, "print the summary as JSON")
		debug     = fs.Bool("debug", false, "log debug messages")
		output    = fs.String("output", "", "write the boot image to docker-archive:`FILE` instead of loading it into Docker")
		prefetch  = fs.String("prefetch", "", "`FILE` listing what boot fetches first, as boot's BOOTFS_RECORD writes it: a line an absolute image path (the whole file), or a Go-quoted path followed by OFFSET+LENGTH byte ranges (only the chunks holding them)")
		boot      mkimage.BootImageOptions
		push      = fs.String("push", "", "push the boot image to `REGISTRY/REPOSITORY:TAG`, with the chunks in that repository")
	)
	fs.StringVar(&creds.TokenFile, "token-file", "", "`FILE` holding the bearer token for writing to an HTTP store (chunkstore serve --write-token-file)")
	fs.StringVar(&creds.RegistryAuthFile, "registry-auth", defaultRegistryAuth(), "docker config.json-format `FILE` with the credentials of oci:// stores and --push")
	fs.BoolVar(&creds.RegistryPlainHTTP, "registry-plain-http", false, "allow plain HTTP to a registry that is not on a loopback address")
	fs.StringVar(&boot.RuntimeStore, "runtime-store", "", "store `URL` that boot reads at run time (default: --store)")
	fs.StringVar(&boot.BootBinary, "boot-binary", "", "static boot `binary` for the image (default: boot next to mkimage)")
	fs.StringVar(&store, "store", "", "chunk store `URL` the chunks go to: a directory, http(s)://…, ssh://… or oci://host[:port]/repository")
	fs.StringVar(&creds.CAFile, "ca-file", "", "PEM `FILE` of CA certificates trusted for an https store or registry")
	fs.StringVar(&opts.IndexOut, "index-out", "", "write the caidx to `FILE` and the TOC to FILE.toc")
	fs.StringVar(&opts.CatarOut, "catar-out", "", "also write the plain catar archive to `FILE`")
	fs.BoolVar(&opts.Pull, "pull", false, "pull a SOURCE image that the Docker engine does not have")
	fs.StringVar(&opts.TempDir, "tmpdir", "", "`directory` for the payload spill file of a tar source (default $TMPDIR)")
	fs.Func("tmp-max", "bound the spill file to `SIZE` bytes (k, m, g or t suffix; sparse files count in full, their holes take no disk; 0: no limit; default: the free space of --tmpdir)", func(s string) error {
		n, err := casync.ParseSize(s)
		if err != nil {
			return err
		}
		if n > math.MaxInt64 {
			return fmt.Errorf("size %q: too large", s)
		}
		opts.TempMax = int64(n)
		if n == 0 {
			opts.TempMax = -1
		}
		return nil
	})
	fs.IntVar(&opts.Jobs, "j", 0, "`N` goroutines hash, compress and upload chunks (default: number of CPUs)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() < 1 || fs.NArg() > 2 {
		fmt.Fprintln(stderr, "mkimage: want SOURCE and an optional TARGET")
		fs.Usage()
		return 2
	}
	target := fs.Arg(1)
	if target != "" {
		boot.Tags = []string{target}
	}
	if *output != "" {
		name, err := mkimage.ParseOutput(*output)
		if err != nil {
			return usageError(stderr, "--output", err)
		}
		boot.Output = name
	}
	if *push != "" {
		if target != "" || boot.Output != "" || store != "" {
			return usageError(stderr, "--push", errors.New("the chunks and the boot image go to the pushed repository: drop TARGET, --output and --store"))
		}
		s, err := mkimage.PushStore(*push)
		if err != nil {
			return usageError(stderr, "--push", err)
		}
		store = s
	}
	makeImage := target != "" || boot.Output != "" || *push != ""
	if makeImage && store == "" {
		return usageError(stderr, "--store", errors.New("a boot image needs a chunk store to read from: give --store"))
	}
	if creds.TokenFile != "" {
		if _, err := chunkstore.ReadTokenFile(creds.TokenFile); err != nil {
			return usageError(stderr, "--token-file", err)
		}
	}
	// An ssh:// store logs in with the keys in BOOTFS_SSH_KEY and checks
	// the host key against BOOTFS_SSH_KNOWN_HOSTS, as boot does; each
	// defaults to the files in ~/.ssh. The server must let the key write
	// (chunkstore serve --write-authorized-keys).
	creds = creds.WithSSHFromEnv(os.Getenv)
	if *prefetch != "" {
		if !makeImage {
			return usageError(stderr, "--prefetch", errors.New("the prefetch list goes into a boot image: give TARGET, --output or --push"))
		}
		paths, err := mkimage.ReadPrefetchPaths(*prefetch)
		if err != nil {
			return usageError(stderr, "--prefetch", err)
		}
		boot.Prefetch = paths
	}
	var err error
	if opts.ChunkSize, err = casync.ParseChunkSize(*chunkSize); err != nil {
		return usageError(stderr, "--chunk-size", err)
	}
	if opts.Chunker, err = casync.ParseChunkerKind(*chunker); err != nil {
		return usageError(stderr, "--chunker", err)
	}
	if opts.Digest, err = casync.ParseDigest(*digest); err != nil {
		return usageError(stderr, "--digest", err)
	}
	src, err := mkimage.ParseSource(fs.Arg(0))
	if err != nil {
		return usageError(stderr, "SOURCE", err)
	}
	if !makeImage && store == "" && opts.IndexOut == "" && opts.CatarOut == "" {
		fmt.Fprintln(stderr, "mkimage: nothing to write: give --store, --index-out, --catar-out, TARGET or --output")
		fs.Usage()
		return 2
	}

	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	if *quiet {
		level = slog.LevelError
	}
	opts.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	boot.Log = opts.Log
	if store == "" && opts.IndexOut != "" {
		opts.Log.Warn("no --store: the index is written, but its chunks are stored nowhere", "index", opts.IndexOut)
	}
	var bar *progressBar
	if !*quiet && !*asJSON && isTerminal(stderr) {
		bar = newProgressBar(stderr)
		opts.Progress = bar.update
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A pushed repository's keep-alive manifest waits for the boot image,
	// its subject (see mkimage.PushBootImage).
	oo := opener.Options{
		Credentials: creds, Digest: opts.Digest, Write: true, Logger: opts.Log,
		Registry: registry.Options{DeferKeepAlive: *push != "", Jobs: max(opts.Jobs, 4), TempDir: opts.TempDir},
	}
	sum, err := convert(ctx, src, store, oo, opts)
	if bar != nil {
		bar.finish(err == nil)
	}
	if err != nil {
		fmt.Fprintf(stderr, "mkimage: %v\n", err)
		return 1
	}
	if boot.RuntimeStore == "" {
		// The URL the store's commit gave (an oci:// store with its
		// chunk map pinned), else --store.
		boot.RuntimeStore = cmp.Or(sum.RuntimeStore, store)
	}
	var res result
	res.Summary = sum
	if makeImage {
		var info mkimage.BootImageInfo
		if *push != "" {
			info, err = mkimage.PushBootImage(ctx, sum, opts, boot, *push, oo.RegistryOptions())
			target = *push
		} else {
			info, err = mkimage.MakeBootImage(ctx, sum, opts, boot)
		}
		if err != nil {
			fmt.Fprintf(stderr, "mkimage: boot image: %v\n", err)
			return 1
		}
		res.Target, res.Output, res.ImageID, res.ImageSize = target, boot.Output, info.ImageID, info.ArchiveSize
		if *push != "" {
			res.Output, res.ImageID = "", info.ManifestDigest
		}
	}
	switch {
	case *asJSON:
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			fmt.Fprintf(stderr, "mkimage: %v\n", err)
			return 1
		}
	case !*quiet:
		printSummary(stdout, sum)
		if res.ImageID != "" {
			fmt.Fprintf(stdout, "boot image    %s %s (%s)\n", res.ImageID, strings.TrimSpace(target+" "+res.Output), humanBytes(res.ImageSize))
		}
	}
	return 0
}

// result is the --json summary: the conversion and the boot image.
type result struct {
	*mkimage.Summary
	Target    string `json:"target,omitempty"`
	Output    string `json:"output,omitempty"`
	ImageID   string `json:"image_id,omitempty"`
	ImageSize int64  `json:"image_size,omitempty"`
}

func usageError(w io.Writer, what string, err error) int {
	fmt.Fprintf(w, "mkimage: %s: %v\n", what, err)
	return 2
}

func printSummary(w io.Writer, s *mkimage.Summary) {
	fmt.Fprintf(w, "source        %s\n", s.Source)
	fmt.Fprintf(w, "entries       %d\n", s.Entries)
	fmt.Fprintf(w, "bytes         %d (%s)\n", s.Bytes, humanBytes(s.Bytes))
	fmt.Fprintf(w, "chunks        %d (%d distinct)\n", s.Chunks, s.UniqueChunks)
	if s.Store != "" {
		fmt.Fprintf(w, "new chunks    %d (%s uncompressed)\n", s.NewChunks, humanBytes(s.NewBytes))
		fmt.Fprintf(w, "written       %s to %s\n", humanBytes(s.BytesWritten), s.Store)
	}
	fmt.Fprintf(w, "dedup         %.1f%% of the archive was not stored again\n", 100*s.DedupRatio)
	if s.IndexOut != "" {
		fmt.Fprintf(w, "index         %s (TOC %s.toc, %s)\n", s.IndexOut, s.IndexOut, s.TOCDigest)
	}
	fmt.Fprintf(w, "time          %.2fs (%s/s)\n", s.Seconds, humanBytes(int64(float64(s.Bytes)/max(s.Seconds, 1e-9))))
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progressBar draws mkimage's progress on a terminal: a bar when the
// archive's size can be estimated, a spinner otherwise, with the bytes,
// the throughput, the chunks cut and how many of them were new.
type progressBar struct {
	w    io.Writer
	p    *mpb.Progress
	bar  *mpb.Bar
	last atomic.Pointer[mkimage.Progress]
}

func newProgressBar(w io.Writer) *progressBar {
	return &progressBar{w: w}
}

// update takes a snapshot; mkimage.Convert never calls it concurrently.
func (b *progressBar) update(p mkimage.Progress) {
	b.last.Store(&p)
	if b.bar == nil {
		b.p = mpb.New(mpb.WithOutput(b.w), mpb.WithWidth(30), mpb.WithAutoRefresh())
		counts := decor.Any(func(decor.Statistics) string {
			p := b.last.Load()
			return fmt.Sprintf("%d chunks, %d new, %s written", p.Chunks, p.NewChunks, humanBytes(p.BytesWritten))
		})
		speed := decor.AverageSpeed(decor.SizeB1024(0), "% .1f", decor.WCSyncSpace)
		if p.Total > 0 {
			b.bar = b.p.New(p.Total, mpb.BarStyle(),
				mpb.PrependDecorators(decor.CountersKibiByte("% .1f / % .1f")),
				mpb.AppendDecorators(speed, decor.Name("  "), counts))
		} else {
			b.bar = b.p.New(0, mpb.SpinnerStyle(),
				mpb.PrependDecorators(decor.CurrentKibiByte("% .1f")),
				mpb.AppendDecorators(speed, decor.Name("  "), counts))
		}
	}
	if p.Total > 0 && p.Bytes >= p.Total {
		// The estimate was short; keep the bar just short of full.
		b.bar.SetTotal(p.Bytes+1, false)
	}
	b.bar.SetCurrent(p.Bytes)
}

// finish completes the bar (or drops it after a failure) and waits until
// it is drawn, so that nothing is printed over it.
func (b *progressBar) finish(ok bool) {
	if b.bar == nil {
		return
	}
	if ok {
		b.bar.SetTotal(-1, true)
	} else {
		b.bar.Abort(false)
	}
	b.p.Wait()
}

// convert opens the store that spec names ("" for none) for writing,
// with oo, and converts src into it. Chunk IDs are computed from the very
// bytes that are stored, so the stores do not hash them again; every
// reader verifies.
func convert(ctx context.Context, src mkimage.Source, spec string, oo opener.Options, opts mkimage.Options) (*mkimage.Summary, error) {
	if spec == "" {
		return mkimage.Convert(ctx, src, nil, opts)
	}
	if err := checkRegistryList(spec); err != nil {
		return nil, err
	}
	o, err := opener.Open(ctx, spec, oo)
	if err != nil {
		return nil, err
	}
	defer o.Close()
	return mkimage.Convert(ctx, src, o.Store, opts)
}

// checkRegistryList refuses an oci:// store inside a --store list: its
// chunks are published by a commit (chunkstore.Committer) that a
// failover list cannot pass on.
func checkRegistryList(spec string) error {
	locs, err := chunkstore.ParseURLs(spec)
	if err != nil || len(locs) < 2 {
		return nil // opener.Open reports a bad list
	}
	for _, l := range locs {
		if l.Scheme == "oci" {
			return errors.New("an oci:// store cannot be part of a --store list; write to it alone (boot reads it in a list)")
		}
	}
	return nil
}

// defaultRegistryAuth is ~/.docker/config.json when it exists, else "".
func defaultRegistryAuth() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	name := filepath.Join(home, ".docker", "config.json")
	if _, err := os.Stat(name); err != nil {
		return ""
	}
	return name
}
