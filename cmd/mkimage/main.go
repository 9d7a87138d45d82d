// Command mkimage converts a root filesystem into bootfs form: chunks in a
// casync chunk store, a caidx index and a TOC. See README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/term"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/mkimage"
)

const usage = `usage: mkimage [flags] SOURCE [TARGET]

SOURCE is a Docker image reference (read through the Engine API),
dir:PATH (a root filesystem directory), tar:PATH (a rootfs
tarball, e.g. from docker export) or tar:- (the tarball on standard input).

TARGET is the tag of the boot image to load into Docker. Without TARGET
(and without --output) mkimage only stores the chunks and writes the index.

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
		chunkSize = fs.String("chunk-size", "16k:64k:256k", "chunk sizes `min:avg:max`, in bytes or with a k/m suffix")
		chunker   = fs.String("chunker", "buzhash", "chunking `algorithm`: buzhash (casync's) or rabin (restic's)")
		digest    = fs.String("digest", "sha512-256", "chunk ID `hash`: sha512-256 or sha256")
		quiet     = fs.Bool("quiet", false, "print nothing but errors")
		asJSON    = fs.Bool("json", false, "print the summary as JSON")
		debug     = fs.Bool("debug", false, "log debug messages")
		output    = fs.String("output", "", "write the boot image to docker-archive:`FILE` instead of loading it into Docker")
		prefetch  = fs.String("prefetch", "", "`FILE` of image paths (one per line, as boot's BOOTFS_RECORD writes) whose chunks boot fetches first")
		boot      mkimage.BootImageOptions
	)
	fs.StringVar(&boot.RuntimeStore, "runtime-store", "", "store `URL` that boot reads at run time (default: --store)")
	fs.StringVar(&boot.BootBinary, "boot-binary", "", "static boot `binary` for the image (default: boot next to mkimage)")
	fs.StringVar(&opts.Store, "store", "", "chunk store `URL` the chunks go to (a directory)")
	fs.StringVar(&opts.IndexOut, "index-out", "", "write the caidx to `FILE` and the TOC to FILE.toc")
	fs.StringVar(&opts.CatarOut, "catar-out", "", "also write the plain catar archive to `FILE`")
	fs.BoolVar(&opts.Pull, "pull", false, "pull a SOURCE image that the Docker engine does not have")
	fs.StringVar(&opts.TempDir, "tmpdir", "", "`directory` for the payload spill file of a tar source (default $TMPDIR)")
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
	makeImage := target != "" || boot.Output != ""
	if makeImage && opts.Store == "" {
		return usageError(stderr, "--store", errors.New("a boot image needs a chunk store to read from: give --store"))
	}
	if *prefetch != "" {
		if !makeImage {
			return usageError(stderr, "--prefetch", errors.New("the prefetch list goes into a boot image: give TARGET or --output"))
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

	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	if *quiet {
		level = slog.LevelError
	}
	opts.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	boot.Log = opts.Log
	if !*quiet && !*asJSON && isTerminal(stderr) {
		opts.Progress = progressPrinter(stderr)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sum, err := mkimage.Convert(ctx, src, opts)
	if opts.Progress != nil {
		fmt.Fprint(stderr, "\r\033[K")
	}
	if err != nil {
		fmt.Fprintf(stderr, "mkimage: %v\n", err)
		return 1
	}
	var res result
	res.Summary = sum
	if makeImage {
		info, err := mkimage.MakeBootImage(ctx, sum, opts, boot)
		if err != nil {
			fmt.Fprintf(stderr, "mkimage: boot image: %v\n", err)
			return 1
		}
		res.Target, res.Output, res.ImageID, res.ImageSize = target, boot.Output, info.ImageID, info.ArchiveSize
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

// progressPrinter redraws one status line on a terminal.
func progressPrinter(w io.Writer) func(mkimage.Progress) {
	return func(p mkimage.Progress) {
		rate := float64(p.Bytes) / max(p.Elapsed.Seconds(), 1e-9)
		fmt.Fprintf(w, "\r\033[K%s  %s/s  %d chunks  %d new  %s written",
			humanBytes(p.Bytes), humanBytes(int64(rate)), p.Chunks, p.NewChunks, humanBytes(p.BytesWritten))
	}
}
