// Command boot serves a bootfs image: it mounts a casync archive with FUSE
// and fetches its chunks lazily.
//
//	boot -- CMD [ARG...]    (as /.bootfs/boot, the init of a converted image)
//	boot mount [--store URL] [--cache DIR] [--cache-max SIZE] [--toc FILE] [--stats FILE] [--record FILE] [--ca-file FILE] INDEX MOUNTPOINT
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
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/bootfs/bootfs/boot"
	"github.com/bootfs/bootfs/boot/lazyfs"
	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore/opener"
	"github.com/bootfs/bootfs/chunkstore/registry"
)

// memoryLimit is the Go heap's soft limit unless GOMEMLIMIT says
// otherwise: boot lives beside the workload for its whole life, and its
// heap is mostly chunk buffers that a collection frees at once, so it
// collects early rather than letting the heap double (GOGC) to well past
// what it holds.
const memoryLimit = 48 << 20

func main() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
	args := os.Args[1:]
	caller, err := boot.SetuidCaller()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if caller != nil {
		// Started setuid root by a non-root user: only the init of a
		// container run with --user.
		os.Exit(runSetuid(args, caller, os.Stderr))
	}
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
          BOOTFS_RECORD=FILE, BOOTFS_BACKGROUND=1, BOOTFS_USER,
          BOOTFS_CA_FILE, BOOTFS_SSH_KEY, BOOTFS_SSH_KNOWN_HOSTS,
          BOOTFS_REGISTRY_AUTH, BOOTFS_REGISTRY_PLAIN_HTTP and
          BOOTFS_TIMEOUT (see below)
  mount   [--store URL] [--cache DIR] [--cache-max SIZE] [--toc FILE] [--stats FILE]
          [--record FILE] [--ca-file FILE] INDEX MOUNTPOINT
          mount the archive of INDEX read-only on MOUNTPOINT, fetching chunks
          lazily, until interrupted (SIGINT or SIGTERM); SIGUSR1 writes stats
  help    show this text

Run "boot COMMAND -h" for the flags of a command.

As init, boot reads these variables (and removes every BOOTFS_* from the
workload's environment); FILE paths are in the container's view, such as
a mounted volume:
  BOOTFS_STORE=URL[,URL...]  chunk stores, in failover order (default: the
                             image's)
  BOOTFS_CACHE=DIR|none      chunk cache (default /.bootfs/cache: mount the
                             node's cache volume there)
  BOOTFS_CACHE_MAX=SIZE      cap the cache (such as 2g), across every container
                             sharing it; least recently used chunks go first
  BOOTFS_UPPER=DIR           the overlay's writable layer (default the
                             boot image's volume at /.bootfs/upper)
  BOOTFS_STATS=FILE          figures as JSON, at exit and on SIGUSR1
  BOOTFS_RECORD=FILE         the image files the workload read, a line each
                             in first-read order, at exit and on SIGUSR1:
                             the input of mkimage --prefetch. A path alone
                             is the whole file; a Go-quoted path followed by
                             OFFSET+LENGTH ranges is the parts read (in
                             64 KiB blocks)
  BOOTFS_BACKGROUND=1        fetch the rest of the image into the cache
                             once the workload runs
  BOOTFS_USER=USER[:GROUP]   run the workload as this user of the image
  BOOTFS_CA_FILE=FILE        PEM CA certificates for https:// and oci:// stores
  BOOTFS_REGISTRY_AUTH=FILE  docker config.json-format file with the
                             credentials of oci:// stores (registries)
  BOOTFS_REGISTRY_PLAIN_HTTP=1  allow plain HTTP to a registry that is
                             not on a loopback address
  BOOTFS_SSH_KEY=FILE[,...]  private keys for ssh:// stores
  BOOTFS_SSH_KNOWN_HOSTS=FILE  the ssh store's host key
  BOOTFS_TIMEOUT=DURATION    bound on each chunk fetch (default 30s)
  BOOTFS_LOG=info|debug      info: the stats line at exit (BOOTFS_STATS
                             prints it too); debug: the start-up steps
                             too; by default only warnings and errors

The boot image has the original's USER, so Docker starts boot as the
user it would start the original's workload as (the image's USER, or
--user UID[:GID] or NAME, which Docker finds in the copy of the image's
/etc/passwd that the boot image holds), and docker exec and health checks
run as that user too. /.bootfs/boot is setuid root: it becomes root to
mount the image and runs the workload as that user, with the primary
group (when Docker gives gid 0, as it does for --user UID and for
--user UID:0 alike, the one the image's /etc/passwd gives UID), the
supplementary groups and the HOME of the image's /etc/passwd and
/etc/group, plus any --group-add. --user 0 runs the workload as root.
Started setuid by a non-root user, boot refuses every command but the
init (as PID 1, or as the child of docker run --init's docker-init),
refuses BOOTFS_USER, BOOTFS_UPPER, BOOTFS_REGISTRY_AUTH and a
BOOTFS_CACHE other than /.bootfs/cache, and reads and writes the files
the other variables name with that user's rights; start the container
with --user 0 -e BOOTFS_USER=USER to use them. With no-new-privileges
the setuid bit does nothing and boot, started as a user, cannot run.

docker exec CONTAINER CMD runs CMD in the workload's root, as with the
original image: boot makes it the container's root.
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
		return initCmd(ctx, args[1:], nil, stderr)
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
	var (
		opts     lazyfs.MountOptions
		store    string
		open     opener.Options
		logLevel string
		cacheMax string
	)
	fs.StringVar(&store, "store", "", "chunk store `URL`: a path, file://, http(s)://, ssh:// or oci://host[:port]/repository; a comma-separated list fails over in order (required)")
	fs.StringVar(&open.Cache, "cache", "", "cache chunks in `DIR`, shared with other boot processes")
	fs.StringVar(&cacheMax, "cache-max", "", "cap --cache at `SIZE` (bytes, or with a k, m or g suffix), least recently used chunks evicted, across every process sharing it")
	fs.StringVar(&opts.TOC, "toc", "", "the TOC `FILE` (default: INDEX.toc or INDEX without .caidx plus .toc; else built from the archive)")
	fs.StringVar(&opts.Stats, "stats", "", "write figures as JSON to `FILE` at unmount and on SIGUSR1")
	fs.StringVar(&opts.Prefetch, "prefetch", "", "fetch the content listed in `FILE` (as --record writes it: a path alone is the whole file, a Go-quoted path followed by OFFSET+LENGTH ranges those bytes) in the background, from before the mount is up")
	fs.StringVar(&opts.Record, "record", "", "write the image files whose content was read to `FILE`, a line each in first-read order with the 64 KiB blocks read, at unmount and on SIGUSR1 (for mkimage --prefetch)")
	fs.StringVar(&open.Credentials.CAFile, "ca-file", "", "trust the CA certificates in PEM `FILE` for https:// and oci:// stores, besides the system's")
	fs.StringVar(&open.Credentials.RegistryAuthFile, "registry-auth", "", "docker config.json-format `FILE` with the credentials of oci:// stores")
	fs.BoolVar(&open.Credentials.RegistryPlainHTTP, "registry-plain-http", false, "allow plain HTTP to a registry that is not on a loopback address")
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
	if strings.TrimSpace(store) == "" {
		return bad("--store is required: the chunk store the index's chunks were written to")
	}
	if cacheMax != "" {
		n, err := casync.ParseSize(cacheMax)
		if err != nil || n > 1<<62 {
			return bad("bad --cache-max %q: want a size in bytes, optionally with a k, m or g suffix, such as 2g", cacheMax)
		}
		if open.Cache == "" {
			return bad("--cache-max needs --cache: the directory to cap")
		}
		open.CacheOptions.MaxBytes = int64(n)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return bad("bad --log-level %q: %v", logLevel, err)
	}
	opts.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	open.Logger = opts.Logger
	opts.Open = opener.Later(store, open)
	return lazyfs.RunMount(ctx, fs.Arg(0), fs.Arg(1), opts)
}

// runSetuid runs what a setuid-root boot started by caller may run: the
// init (as root, with the workload as caller).
func runSetuid(args []string, caller *boot.Caller, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "--" {
		if err := caller.CheckInit(); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		if err := caller.BecomeRoot(); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		return initCmd(context.Background(), args[1:], caller, stderr)
	}
	cmd := "no command"
	if len(args) > 0 {
		cmd = fmt.Sprintf("%q", args[0])
	}
	fmt.Fprintf(stderr, "%v (uid %d): refusing %s: only the init of a container (boot -- CMD) runs setuid; run other commands as root\n",
		boot.ErrSetuid, caller.UID, cmd)
	return 1
}

// initCmd is `boot -- CMD...`: the options come from the environment.
// caller is who started boot setuid root, or nil.
func initCmd(ctx context.Context, argv []string, caller *boot.Caller, stderr io.Writer) int {
	opts, err := boot.InitOptionsFromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	opts.Caller = caller
	closeFiles, err := opts.ConfineToCaller()
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer closeFiles()
	opts.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: opts.LogLevel}))
	if wd, err := os.Getwd(); err == nil && wd != "/" {
		// docker run -w: the boot image has no WORKDIR of its own.
		opts.WorkingDir = wd
	}
	if opts.Credentials, err = registryFromEnv(os.Getenv, opts.Credentials, caller); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	code, err := boot.Init(ctx, argv, opts)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return code
}

// registryFromEnv returns c with the credentials of oci:// stores from
// BOOTFS_REGISTRY_AUTH and BOOTFS_REGISTRY_PLAIN_HTTP (c's CAFile, the
// one BOOTFS_CA_FILE named, is the registry's too). Started setuid, boot
// refuses the credentials file: it would read it with root's rights, for
// a registry the caller may choose.
func registryFromEnv(getenv func(string) string, c opener.Credentials, caller *boot.Caller) (opener.Credentials, error) {
	c.RegistryAuthFile = getenv(registry.EnvAuth)
	switch v := getenv(registry.EnvPlainHTTP); v {
	case "", "0", "false":
	case "1", "true":
		c.RegistryPlainHTTP = true
	default:
		return c, fmt.Errorf("boot: %s=%q: want 1 or 0", registry.EnvPlainHTTP, v)
	}
	if c.RegistryAuthFile != "" && caller != nil {
		return c, fmt.Errorf("%w (uid %d, docker run --user): %s is not allowed then: boot would read it as root; run as root with BOOTFS_USER instead of --user", boot.ErrSetuid, caller.UID, registry.EnvAuth)
	}
	return c, nil
}
