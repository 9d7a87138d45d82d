// Command boot serves a bootfs image: it mounts a casync archive with FUSE
// and fetches its chunks lazily.
//
//	boot -- CMD [ARG...]    (as /.bootfs/boot, the init of a converted image)
//	boot mount [--store URL] [--cache DIR] [--toc FILE] [--stats FILE] INDEX MOUNTPOINT
//
// Each subcommand turns its flags into options for one call into package
// boot. Exit codes: 0 success, 1 failure, 2 bad usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/bootfs/bootfs/boot"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/sshstore"
)

func main() {
	args := os.Args[1:]
	if len(args) > 0 && (args[0] == "--" || args[0] == boot.WorkloadCommand) {
		// As init, every signal is the workload's: boot.Init forwards
		// them, so none may cancel the context.
		os.Exit(run(context.Background(), args, os.Stdout, os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: boot COMMAND [flags]

commands:
  -- CMD [ARG...]
          run as the init of a converted image (docker run --privileged
          --device /dev/fuse IMAGE): mount the image, run CMD in it, forward
          signals, exit with its status; configured by BOOTFS_STORE,
          BOOTFS_CACHE, BOOTFS_UPPER, BOOTFS_LOG=debug, BOOTFS_STATS=FILE,
          BOOTFS_BACKGROUND=1, BOOTFS_USER, BOOTFS_SSH_KEY,
          BOOTFS_SSH_KNOWN_HOSTS and BOOTFS_TIMEOUT
  mount   [--store URL] [--cache DIR] [--toc FILE] [--stats FILE] INDEX MOUNTPOINT
          mount the archive of INDEX read-only on MOUNTPOINT, fetching chunks
          lazily, until interrupted (SIGINT or SIGTERM); SIGUSR1 writes stats
  help    show this text

Run "boot COMMAND -h" for the flags of a command.
`

// errUsage marks errors that exit with status 2.
var errUsage = errors.New("usage")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "--":
		return initCmd(ctx, args[1:], stderr)
	case boot.WorkloadCommand:
		err := boot.RunWorkload()
		fmt.Fprintln(stderr, err)
		var ee *boot.ExitError
		if errors.As(err, &ee) {
			return ee.Status
		}
		return 1
	case "mount":
		err = mount(ctx, args[1:], stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "boot: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	fmt.Fprintf(stderr, "boot %s: %v\n", args[0], err)
	return 1
}

func mount(ctx context.Context, args []string, stderr io.Writer) error {
	const synopsis = "[flags] INDEX MOUNTPOINT"
	fs := flag.NewFlagSet("boot mount", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: boot mount %s\n\nflags:\n", synopsis)
		fs.PrintDefaults()
	}
	var opts boot.MountOptions
	var logLevel string
	fs.StringVar(&opts.Store, "store", "", "chunk store `URL`: a path, file://, http(s):// or ssh://; a comma-separated list fails over in order (required)")
	fs.StringVar(&opts.Cache, "cache", "", "cache chunks in `DIR`, shared with other boot processes")
	fs.StringVar(&opts.TOC, "toc", "", "the TOC `FILE` (default: INDEX.toc or INDEX without .caidx plus .toc; else built from the archive)")
	fs.StringVar(&opts.Stats, "stats", "", "write figures as JSON to `FILE` at unmount and on SIGUSR1")
	fs.StringVar(&logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.BoolVar(&opts.FS.AllowSuidDev, "suid", false, "honour setuid bits and device nodes (mount without nosuid,nodev)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	bad := func(format string, a ...any) error {
		fmt.Fprintf(stderr, "boot mount: %s\n", fmt.Sprintf(format, a...))
		fs.Usage()
		return errUsage
	}
	if fs.NArg() != 2 {
		return bad("want INDEX and MOUNTPOINT, got %d argument(s)", fs.NArg())
	}
	if strings.TrimSpace(opts.Store) == "" {
		return bad("--store is required: the chunk store the index's chunks were written to")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return bad("bad --log-level %q: %v", logLevel, err)
	}
	opts.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	opts.Dialers = map[string]chunkstore.Dialer{"ssh": sshstore.Dial}
	return boot.RunMount(ctx, fs.Arg(0), fs.Arg(1), opts)
}

// initCmd is `boot -- CMD...`: the options come from the environment.
func initCmd(ctx context.Context, argv []string, stderr io.Writer) int {
	opts, err := boot.InitOptionsFromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	level := slog.LevelInfo
	if opts.Debug {
		level = slog.LevelDebug
	}
	opts.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if wd, err := os.Getwd(); err == nil && wd != "/" {
		// docker run -w: the boot image has no WORKDIR of its own.
		opts.WorkingDir = wd
	}
	ssh := sshstore.ClientOptions{IdentityFiles: opts.SSHKeys, KnownHostsFile: opts.SSHKnownHosts}
	opts.Dialers = map[string]chunkstore.Dialer{"ssh": ssh.Dialer()}
	code, err := boot.Init(ctx, argv, opts)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return code
}
