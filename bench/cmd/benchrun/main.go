// Command benchrun measures bootfs against a full image pull and casync
// mount and writes a Markdown report with PNG charts. bench/run.sh runs
// it with the right paths; see bench/README.md.
//
//	benchrun [flags]
//
// Exit codes: 0 success, 1 failure (the report is still written when
// the runs got that far), 2 bad usage.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/bootfs/bootfs/bench/harness"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func list(s string) []string {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("benchrun", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o harness.Options
	var images, modes, networks, extras string
	fs.StringVar(&o.Bin, "bin", "bin", "`DIR` with the built mkimage, boot and chunkstore (make build)")
	fs.StringVar(&o.Module, "module", ".", "the repository root `DIR` (bench/rootfs.sh, go test ./bench)")
	fs.StringVar(&o.Work, "work", "/var/tmp/bootfs-bench", "scratch `DIR` for stores and archives (removed at the end)")
	fs.StringVar(&o.Out, "out", "bench/results", "`DIR` for the report and charts")
	fs.IntVar(&o.Samples, "samples", 2, "runs of every image, network and mode (`N`)")
	fs.IntVar(&o.CasyncSamples, "casync-samples", 1, "runs of the casync-mount mode, at most -samples (`N`; 0: as many as -samples)")
	fs.StringVar(&images, "images", "", "comma-separated images: debian-min, python, gcc, postgres, busybox (default: the four Debian ones)")
	fs.StringVar(&modes, "modes", "", "comma-separated modes: "+strings.Join(harness.AllModes, ", ")+" (default: all but "+harness.ModeSaveLoad+")")
	fs.StringVar(&networks, "networks", "", "comma-separated networks: loopback, 2ms-1gbit, 20ms-100mbit, 100ms-100mbit (default: all but 2ms-1gbit)")
	fs.StringVar(&extras, "extras", "", "comma-separated extra measurements: "+strings.Join(harness.AllExtras, ", ")+" (default: all but chunkers; \"none\" for none)")
	fs.BoolVar(&o.Quick, "quick", os.Getenv("BENCH_QUICK") == "1", "quick mode: busybox only, one sample (default from BENCH_QUICK=1)")
	fs.BoolVar(&o.Keep, "keep", false, "keep the scratch directory and the images")
	fs.Int64Var(&o.Seed, "seed", 0, "seed of the run order (default: the time)")
	render := fs.String("render", "", "measure nothing: write the report and charts again from the raw runs in `FILE` (a <date>.json of an earlier run) into -out")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "benchrun: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *render != "" {
		file, err := harness.Render(*render, o.Out)
		if err != nil {
			fmt.Fprintf(stderr, "benchrun: %v\n", err)
			return 1
		}
		fmt.Fprintln(stdout, file)
		return 0
	}
	o.Images, o.Modes, o.Networks = list(images), list(modes), list(networks)
	if extras == "none" {
		o.Extras = []string{}
	} else {
		o.Extras = list(extras)
	}
	if o.Quick && !isSet(fs, "samples") {
		o.Samples = 1
	}
	o.Log = stderr
	file, err := harness.Run(ctx, o)
	if file != "" {
		fmt.Fprintln(stdout, file)
	}
	if err != nil {
		fmt.Fprintf(stderr, "benchrun: %v\n", err)
		return 1
	}
	return 0
}

func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
