// Command chunkstore serves, verifies and prunes a casync chunk store.
//
//	chunkstore serve  --dir DIR [--http ADDR] [--tls-cert F --tls-key F] [--write-token-file F]
//	                  [--ssh ADDR --host-key F --authorized-keys F [--write-authorized-keys F] [--index-dir DIR] [--ssh-max-* N] [--ssh-*-timeout D]]
//	chunkstore verify --dir DIR [--repair]
//	chunkstore prune  --dir DIR [--yes] INDEX...
//	chunkstore gc     --dir DIR --max SIZE [--yes]
//
// Each subcommand turns its flags into options for one call into package
// chunkstore. Exit codes: 0 success, 1 failure (or bad chunks found by
// verify), 2 bad usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/sshstore"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: chunkstore COMMAND [flags]

commands:
  serve   --dir DIR [--http ADDR] [--tls-cert F --tls-key F] [--write-token-file F]
          [--ssh ADDR --host-key F --authorized-keys F [--write-authorized-keys F] [--index-dir DIR] [--ssh-max-* N] [--ssh-*-timeout D]]
          serve the store over HTTP (GET, HEAD, PUT with the token; /metrics)
          and/or SSH (casync's protocol, as casync and desync speak it; casync
          push for the keys in --write-authorized-keys)
  verify  --dir DIR [--repair]
          check every chunk; with --repair, remove the bad ones
  prune   --dir DIR [--yes] INDEX...
          remove chunks no INDEX references (lists them only, without --yes)
  gc      --dir DIR --max SIZE [--yes]
          bring a node's chunk cache down to SIZE, least recently used
          chunks first (lists them only, without --yes)
  help    show this text

Run "chunkstore COMMAND -h" for the flags of a command.
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
	case "serve":
		err = serve(ctx, args[1:], stderr)
	case "verify":
		err = verify(ctx, args[1:], stdout, stderr)
	case "prune":
		err = prune(ctx, args[1:], stdout, stderr)
	case "gc":
		err = gc(ctx, args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "chunkstore: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	fmt.Fprintf(stderr, "chunkstore %s: %v\n", args[0], err)
	return 1
}

// common are the flags every subcommand has.
type common struct {
	dir      string
	digest   string
	logLevel string
	jobs     int
}

func newFlags(name, synopsis string, stderr io.Writer, c *common) *flag.FlagSet {
	fs := flag.NewFlagSet("chunkstore "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: chunkstore %s %s\n\nflags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.dir, "dir", "", "the chunk store `directory` (required)")
	fs.StringVar(&c.digest, "digest", "any", "chunk ID `hash` that chunks are checked against: sha512-256, sha256, or any (either: a store can hold chunks of images made with each)")
	fs.StringVar(&c.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.IntVar(&c.jobs, "j", 0, "`N` chunks in parallel (default: number of CPUs)")
	return fs
}

// parse parses args and checks the common flags. It returns errUsage
// (after printing why) for bad usage.
func parse(fs *flag.FlagSet, args []string, c *common, stderr io.Writer) (casync.Digest, *slog.Logger, error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, nil, err
		}
		return 0, nil, errUsage
	}
	bad := func(format string, a ...any) (casync.Digest, *slog.Logger, error) {
		fmt.Fprintf(stderr, "%s: %s\n", fs.Name(), fmt.Sprintf(format, a...))
		fs.Usage()
		return 0, nil, errUsage
	}
	if c.dir == "" {
		return bad("--dir is required")
	}
	d := casync.AnyDigest
	if c.digest != "any" {
		var err error
		if d, err = casync.ParseDigest(c.digest); err != nil {
			return bad("%v (or any)", err)
		}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.logLevel)); err != nil {
		return bad("bad --log-level %q", c.logLevel)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	return d, log, nil
}

// checkSSHLimits checks the --ssh-* limit flags, which only --ssh takes,
// and turns a duration of 0 ("never") into the negative value
// sshstore.ServerOptions takes for it. It returns what is wrong, or "".
func checkSSHLimits(fs *flag.FlagSet, ssh bool, lim *sshstore.ServerOptions) string {
	msg := ""
	fs.Visit(func(f *flag.Flag) {
		if strings.HasPrefix(f.Name, "ssh-") && !ssh && msg == "" {
			msg = "--" + f.Name + " is for --ssh"
		}
	})
	for name, n := range map[string]int{
		"ssh-max-sessions": lim.MaxSessions, "ssh-max-key-sessions": lim.MaxKeySessions,
		"ssh-max-conn-sessions": lim.MaxConnSessions, "ssh-max-conns": lim.MaxConns,
		"ssh-max-key-conns": lim.MaxKeyConns, "ssh-max-unauth": lim.MaxUnauth,
		"ssh-max-unauth-per-source": lim.MaxUnauthPerSource,
	} {
		if n < 0 && msg == "" {
			msg = fmt.Sprintf("--%s %d: want a count of at least 1", name, n)
		}
	}
	for name, d := range map[string]*time.Duration{"ssh-handshake-timeout": &lim.HandshakeTimeout, "ssh-idle-timeout": &lim.IdleTimeout, "ssh-keepalive": &lim.KeepaliveInterval} {
		switch {
		case *d < 0 && msg == "":
			msg = fmt.Sprintf("--%s %v: want a positive duration", name, *d)
		case *d == 0 && name == "ssh-handshake-timeout" && msg == "":
			msg = "--ssh-handshake-timeout 0: a login needs some time; want a positive duration"
		case *d == 0:
			*d = -1 // never
		}
	}
	return msg
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	var c common
	var (
		httpAddr, tlsCert, tlsKey, tokenFile string
		sshAddr, hostKey, authorizedKeys     string
		writeKeys, indexDir                  string
		maxConcurrent, maxPerClient          int
		maxConns, maxConnsPerClient          int
		rememberVerified                     int
		putWait                              time.Duration
		lim                                  sshstore.ServerOptions // the --ssh-* limits
	)
	minRate := sizeFlag(chunkstore.DefaultMinRate)
	maxPutBytes := sizeFlag(chunkstore.DefaultMaxPutBytes)
	maxChunkSize := sizeFlag(defaultMaxChunkSize)
	fs := newFlags("serve", "--dir DIR [--http ADDR] [--tls-cert F --tls-key F] [--write-token-file F] [--ssh ADDR --host-key F --authorized-keys F [--write-authorized-keys F] [--index-dir DIR]]", stderr, &c)
	fs.StringVar(&httpAddr, "http", "", "serve HTTP on `ADDR`, such as :8080")
	fs.StringVar(&tlsCert, "tls-cert", "", "PEM certificate `file`: serve HTTPS (and HTTP/2)")
	fs.StringVar(&tlsKey, "tls-key", "", "PEM key `file` for --tls-cert")
	fs.StringVar(&tokenFile, "write-token-file", "", "`file` holding the bearer token that PUT needs; without it the store is read-only")
	fs.IntVar(&maxConcurrent, "max-concurrent", 0, "`N` chunks read, verified or stored at once (default 16 per CPU); answers are sent without holding one")
	fs.IntVar(&maxPerClient, "max-per-client", 0, "`N` of the --max-concurrent slots that one client address may hold (default a quarter of them)")
	fs.Var(&minRate, "min-rate", "slowest `rate` in bytes a second at which a client may read an answer or send a PUT body; each 64 KiB piece gets 2 s plus its size at this rate (k, m suffixes)")
	fs.IntVar(&maxConns, "max-conns", chunkstore.DefaultMaxConns, "`N` open HTTP connections; more are closed at once")
	fs.IntVar(&maxConnsPerClient, "max-conns-per-client", chunkstore.DefaultMaxConnsPerClient, "`N` open HTTP connections from one client address")
	fs.Var(&maxPutBytes, "max-put-bytes", "PUT body `bytes` held at once across all uploads (k, m, g suffixes)")
	fs.DurationVar(&putWait, "put-wait", chunkstore.DefaultPutWait, "how long a PUT waits for room under --max-put-bytes before it gets 503 with Retry-After")
	fs.Var(&maxChunkSize, "max-chunk-size", "largest chunk, in `bytes` uncompressed, that a write may store (casync's default max; raise it for images made with a larger mkimage --chunk-size max)")
	fs.IntVar(&rememberVerified, "remember-verified", defaultRememberVerified, "`N` verified chunk files remembered (by inode, size, mtime and ctime) so that a GET does not verify one again; 0 verifies every GET")
	fs.StringVar(&sshAddr, "ssh", "", "serve casync's protocol over SSH on `ADDR`, such as :2222")
	fs.StringVar(&hostKey, "host-key", "", "SSH host private key `file` (for --ssh)")
	fs.StringVar(&authorizedKeys, "authorized-keys", "", "`file` of the public keys allowed to connect (for --ssh) and read; passwords are never accepted")
	fs.StringVar(&writeKeys, "write-authorized-keys", "", "`file` of the public keys that may also write chunks over --ssh (casync push, mkimage --store ssh://); without it the SSH store is read-only")
	fs.StringVar(&indexDir, "index-dir", "", "`DIR` for the indexes writers push over --ssh (casync make --store=HOST:STORE HOST:INDEX); INDEX must lie inside it")
	fs.IntVar(&lim.MaxSessions, "ssh-max-sessions", sshstore.DefaultMaxSessions, "`N` SSH sessions served at once, over all connections")
	fs.IntVar(&lim.MaxKeySessions, "ssh-max-key-sessions", 0, "`N` SSH sessions of one key at once (default half of --ssh-max-sessions)")
	fs.IntVar(&lim.MaxConnSessions, "ssh-max-conn-sessions", sshstore.DefaultMaxConnSessions, "`N` SSH sessions of one connection at once")
	fs.IntVar(&lim.MaxConns, "ssh-max-conns", sshstore.DefaultMaxConns, "`N` SSH connections open at once, logged in or not")
	fs.IntVar(&lim.MaxKeyConns, "ssh-max-key-conns", 0, "`N` logged-in SSH connections of one key (default half of --ssh-max-conns)")
	fs.IntVar(&lim.MaxUnauth, "ssh-max-unauth", sshstore.DefaultMaxUnauth, "`N` SSH connections not logged in yet; one more closes the oldest of the address with the most")
	fs.IntVar(&lim.MaxUnauthPerSource, "ssh-max-unauth-per-source", sshstore.DefaultMaxUnauthPerSource, "`N` SSH connections not logged in yet from one address; more are closed")
	fs.DurationVar(&lim.HandshakeTimeout, "ssh-handshake-timeout", sshstore.DefaultHandshakeTimeout, "time for an SSH login, and from a session's start to its HELLO")
	fs.DurationVar(&lim.IdleTimeout, "ssh-idle-timeout", sshstore.DefaultIdleTimeout, "close an SSH session in which nothing moved for this long (0: never)")
	fs.DurationVar(&lim.KeepaliveInterval, "ssh-keepalive", sshstore.DefaultKeepaliveInterval, "ask SSH clients for a reply this often; drop one that misses 3 in a row (0: never)")
	d, log, err := parse(fs, args, &c, stderr)
	if err != nil {
		return err
	}
	usageErr := func(msg string) error {
		fmt.Fprintf(stderr, "%s: %s\n", fs.Name(), msg)
		fs.Usage()
		return errUsage
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected arguments: " + strings.Join(fs.Args(), " "))
	}
	if httpAddr == "" && sshAddr == "" {
		return usageErr("nothing to serve: give --http ADDR, --ssh ADDR or both")
	}
	if sshAddr != "" && (hostKey == "" || authorizedKeys == "") {
		return usageErr("--ssh needs --host-key and --authorized-keys")
	}
	if sshAddr == "" && (writeKeys != "" || indexDir != "") {
		return usageErr("--write-authorized-keys and --index-dir are for --ssh")
	}
	if msg := checkSSHLimits(fs, sshAddr != "", &lim); msg != "" {
		return usageErr(msg)
	}
	if indexDir != "" && writeKeys == "" {
		return usageErr("--index-dir needs --write-authorized-keys: only writers push indexes")
	}
	if (tlsCert == "") != (tlsKey == "") {
		return usageErr("--tls-cert and --tls-key go together")
	}
	var token string
	if tokenFile != "" {
		var err error
		if token, err = chunkstore.ReadTokenFile(tokenFile); err != nil {
			return fmt.Errorf("write token: %w", err)
		}
	}
	if maxChunkSize > casync.MaxChunkSize {
		return usageErr(fmt.Sprintf("--max-chunk-size %d is above %d, the largest chunk bootfs reads", maxChunkSize, casync.MaxChunkSize))
	}
	local, err := chunkstore.NewLocal(c.dir, chunkstore.LocalOptions{
		Digest: d, Logger: log,
		MaxChunkSize: int(maxChunkSize), RememberVerified: rememberVerified,
	})
	if err != nil {
		return err
	}
	// Counted for /metrics and the figures logged at the end.
	store := chunkstore.NewCounted(local)
	if token != "" || writeKeys != "" {
		// access(2) reports a read-only filesystem even to root.
		if err := unix.Access(c.dir, unix.W_OK); err != nil {
			log.Warn("the store directory is not writable: writes will fail", "dir", c.dir, "err", err)
		}
	}
	g, ctx := errgroup.WithContext(ctx)
	if httpAddr != "" {
		g.Go(func() error {
			return chunkstore.ListenAndServe(ctx, httpAddr, store, chunkstore.ServerOptions{
				HandlerOptions: chunkstore.HandlerOptions{
					WriteToken: token, MaxConcurrent: maxConcurrent, MaxPerClient: maxPerClient,
					MinRate: int(minRate), MaxPutBytes: int64(maxPutBytes), PutWait: putWait, Logger: log,
				},
				TLSCert:           tlsCert,
				TLSKey:            tlsKey,
				MaxConns:          maxConns,
				MaxConnsPerClient: maxConnsPerClient,
			})
		})
	}
	if sshAddr != "" {
		srv, err := sshstore.NewServer(store, sshstore.ServerOptions{
			HostKeyFile:             hostKey,
			AuthorizedKeysFile:      authorizedKeys,
			WriteAuthorizedKeysFile: writeKeys,
			IndexDir:                indexDir,
			MaxSessions:             lim.MaxSessions,
			MaxKeySessions:          lim.MaxKeySessions,
			MaxConnSessions:         lim.MaxConnSessions,
			MaxConns:                lim.MaxConns,
			MaxKeyConns:             lim.MaxKeyConns,
			MaxUnauth:               lim.MaxUnauth,
			MaxUnauthPerSource:      lim.MaxUnauthPerSource,
			HandshakeTimeout:        lim.HandshakeTimeout,
			IdleTimeout:             lim.IdleTimeout,
			KeepaliveInterval:       lim.KeepaliveInterval,
			Logger:                  log,
		})
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", sshAddr)
		if err != nil {
			return fmt.Errorf("ssh: %w", err)
		}
		log.Info("serving chunks over SSH", "addr", ln.Addr().String(), "dir", c.dir, "writable", writeKeys != "",
			"max_sessions", lim.MaxSessions, "max_conn_sessions", lim.MaxConnSessions, "max_conns", lim.MaxConns,
			"max_unauth", lim.MaxUnauth, "max_unauth_per_source", lim.MaxUnauthPerSource,
			"handshake_timeout", lim.HandshakeTimeout, "idle_timeout", lim.IdleTimeout, "keepalive", lim.KeepaliveInterval)
		g.Go(func() error {
			<-ctx.Done()
			return srv.Close()
		})
		g.Go(func() error {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, sshstore.ErrServerClosed) {
				return fmt.Errorf("ssh: %w", err)
			}
			return nil
		})
	}
	err = g.Wait()
	log.Info("chunk server stopped", "stats", fmt.Sprintf("%+v", store.Stats()))
	return err
}

// Defaults of serve's limits that the library leaves to its caller.
const (
	// defaultMaxChunkSize is casync's default largest chunk, and mkimage's.
	defaultMaxChunkSize = 256 << 10
	// defaultRememberVerified is 64 Ki chunk files, 4 GiB of average
	// 64 KiB chunks, in about 6 MB.
	defaultRememberVerified = 64 << 10
)

// sizeFlag is a byte count flag that takes k, m and g suffixes.
type sizeFlag uint64

func (f *sizeFlag) String() string { return strconv.FormatUint(uint64(*f), 10) }

func (f *sizeFlag) Set(s string) error {
	n, err := casync.ParseSize(s)
	if err != nil {
		return err
	}
	if n == 0 || n > 1<<40 {
		return fmt.Errorf("size %q: want 1 to 1t bytes", s)
	}
	*f = sizeFlag(n)
	return nil
}

func verify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	var repair bool
	fs := newFlags("verify", "--dir DIR [--repair]", stderr, &c)
	fs.BoolVar(&repair, "repair", false, "remove the chunks that fail verification")
	d, log, err := parse(fs, args, &c, stderr)
	if err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected arguments: %s\n", fs.Name(), strings.Join(fs.Args(), " "))
		return errUsage
	}
	sum, err := chunkstore.Verify(ctx, c.dir, repair, chunkstore.MaintenanceOptions{
		Digest: d, Jobs: c.jobs, Logger: log,
		Report: func(ci chunkstore.ChunkInfo, err error, removed bool) {
			what := "bad"
			if removed {
				what = "removed"
			}
			fmt.Fprintf(stdout, "%s\t%s\t%v\n", what, ci.Path, err)
		},
	})
	if err != nil && sum.Chunks == 0 {
		return err // nothing verified: no summary to give
	}
	temps := "found"
	if repair {
		temps = "removed"
	}
	fmt.Fprintf(stdout, "verified %d chunks (%d bytes): %d bad, %d removed, %d stale temporary files %s\n", sum.Chunks, sum.Bytes, sum.Bad, sum.Removed, sum.StaleTemps, temps)
	if err != nil {
		return err
	}
	if sum.Bad > sum.Removed {
		return fmt.Errorf("%d bad chunks in %s (run with --repair to remove them)", sum.Bad-sum.Removed, c.dir)
	}
	return nil
}

func prune(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	var yes bool
	fs := newFlags("prune", "--dir DIR [--yes] INDEX...", stderr, &c)
	fs.BoolVar(&yes, "yes", false, "remove the chunks; without it, only list them")
	d, log, err := parse(fs, args, &c, stderr)
	if err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fmt.Fprintf(stderr, "%s: give at least one INDEX (caidx or caibx) whose chunks to keep\n", fs.Name())
		fs.Usage()
		return errUsage
	}
	keep, err := chunkstore.ReadKeepSet(fs.Args()...)
	if err != nil {
		return err
	}
	sum, err := chunkstore.Prune(ctx, c.dir, keep, !yes, chunkstore.MaintenanceOptions{
		Digest: d, Jobs: c.jobs, Logger: log,
		Report: listRemoved(stdout),
	})
	if err != nil {
		return err
	}
	if yes {
		fmt.Fprintf(stdout, "pruned %d of %d chunks (%d of %d bytes); %d referenced by %d indexes\n",
			sum.Removed, sum.Chunks, sum.RemovedBytes, sum.Bytes, len(keep), fs.NArg())
	} else {
		fmt.Fprintf(stdout, "dry run: would remove %d of %d chunks (%d of %d bytes); run with --yes to remove them\n",
			sum.Unreferenced, sum.Chunks, sum.UnreferencedBytes, sum.Bytes)
	}
	return nil
}

// listRemoved reports each chunk that prune or gc removed, or in a dry
// run would remove, on a line of its own.
func listRemoved(stdout io.Writer) func(chunkstore.ChunkInfo, error, bool) {
	return func(ci chunkstore.ChunkInfo, _ error, removed bool) {
		what := "would remove"
		if removed {
			what = "removed"
		}
		fmt.Fprintf(stdout, "%s\t%s\n", what, ci.Path)
	}
}
