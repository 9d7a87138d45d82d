// Command bootfs-agent is bootfs's node agent: one process per node, run
// as root on the host, that serves the lazy root filesystem of every
// converted container, so they run with no privilege:
//
//	bootfs-agent --store URL[,URL...] --cache DIR [--cache-max SIZE] [--socket-dir DIR] [--metrics 127.0.0.1:PORT]
//	docker run -v /run/bootfs:/run/bootfs IMAGE
//
// It turns its flags into agent.Options and runs as the holder of the
// socket and the containers' FUSE connections (agent.RunHolder), which
// starts itself again as the worker that serves them, and again whenever
// that one exits; SIGHUP replaces the worker with the binary on disk. It
// serves until SIGINT or SIGTERM. Exit codes: 0 success, 1 failure, 2 bad
// usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/bootfs/bootfs/boot/agent"
	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/opener"
	"github.com/bootfs/bootfs/chunkstore/sshstore"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("bootfs-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: bootfs-agent --store URL[,URL...] --cache DIR [flags]\n\n"+
			"Serves the root filesystems of converted containers started with\n"+
			"docker run -v SOCKET-DIR:/run/bootfs IMAGE (no privilege needed).\n\nflags:\n")
		fs.PrintDefaults()
	}
	var (
		opts                   agent.Options
		store, cacheMax, level string
		metrics, memory        string
		memoryLimit            string
		creds                  opener.Credentials
		sshKeys                string
	)
	fs.StringVar(&opts.SocketDir, "socket-dir", agent.DefaultSocketDir, "make the agent's socket in `DIR`; containers mount DIR at /run/bootfs")
	fs.StringVar(&store, "store", "", "the chunk stores the agent reads, `URL[,URL...]` in failover order: paths, http(s):// or ssh://; an image's own store is not used (required)")
	fs.StringVar(&opts.Cache, "cache", "", "the node's chunk cache `DIR` (required)")
	fs.StringVar(&cacheMax, "cache-max", "0", "cap the cache at `SIZE` bytes (k, m or g suffix), evicting the least recently used chunks; 0 for no cap")
	fs.StringVar(&memory, "memory", "32m", "`SIZE` of the in-memory chunk cache every mount shares")
	fs.StringVar(&memoryLimit, "memory-limit", "auto", "the Go heap's soft limit with one mount, `SIZE`; each further mount adds 4m and each image its index and TOC; auto is --memory + 24m (GOMEMLIMIT, if set, wins)")
	fs.StringVar(&metrics, "metrics", "", "serve Prometheus /metrics on `ADDR`, a loopback address such as 127.0.0.1:9100")
	fs.StringVar(&creds.CAFile, "ca-file", "", "trust the CA certificates in PEM `FILE` for https:// stores, besides the system's")
	fs.StringVar(&sshKeys, "ssh-key", "", "private key `FILE[,FILE...]` for ssh:// stores")
	fs.StringVar(&creds.SSHKnownHosts, "ssh-known-hosts", "", "known_hosts `FILE` with the ssh store's host key")
	fs.BoolVar(&opts.Replace, "replace", false, "take the socket over from a running agent, which stops taking requests and serves its containers until they end (an upgrade that breaks none)")
	fs.StringVar(&level, "log-level", "info", "log `level`: debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	bad := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "bootfs-agent: %s\n", fmt.Sprintf(format, a...))
		fs.Usage()
		return 2
	}
	if fs.NArg() != 0 {
		return bad("unexpected argument %q", fs.Arg(0))
	}
	if strings.TrimSpace(store) == "" {
		return bad("--store is required: the chunk stores the agent may read")
	}
	if opts.Cache == "" {
		return bad("--cache is required: the node's chunk cache directory")
	}
	locs, err := chunkstore.ParseURLs(store)
	if err != nil {
		return bad("--store: %v", err)
	}
	for _, l := range locs {
		opts.Stores = append(opts.Stores, l.String())
	}
	n, err := casync.ParseSize(cacheMax)
	if err != nil {
		return bad("--cache-max: %v", err)
	}
	opts.CacheMax = int64(n)
	if n, err = casync.ParseSize(memory); err != nil {
		return bad("--memory: %v", err)
	}
	opts.MemoryBytes = int64(n)
	switch {
	case os.Getenv("GOMEMLIMIT") != "":
		opts.MemoryLimit = -1
	case memoryLimit != "auto":
		if n, err = casync.ParseSize(memoryLimit); err != nil || n == 0 {
			return bad("--memory-limit %q: want a size such as 96m, or auto", memoryLimit)
		}
		opts.MemoryLimit = int64(n)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return bad("bad --log-level %q: %v", level, err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	opts.Logger = log
	creds.SSHKeys = sshstore.ParseKeyList(sshKeys)
	opts.Open = opener.Later(store, opener.Options{
		Credentials: creds, Logger: log,
		Cache: opts.Cache, CacheOptions: chunkstore.CacheOptions{MaxBytes: opts.CacheMax},
	})
	if os.Getenv(agent.WorkerEnv) == "1" {
		return worker(opts, metrics, stderr)
	}
	return holder(opts, args, stderr)
}

// holder is bootfs-agent as started: it holds the socket and the
// containers' FUSE connections, and keeps a worker (this binary, as it is
// on disk when the worker starts) serving them. SIGHUP replaces the
// worker; SIGINT or SIGTERM stops taking requests and lets the worker
// serve the running containers until they end, a second one stops now.
func holder(opts agent.Options, args []string, stderr io.Writer) int {
	exe, err := os.Executable() // the path, even once the file is replaced
	if err != nil {
		fmt.Fprintf(stderr, "bootfs-agent: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		<-ctx.Done()
		stop()
		again := make(chan os.Signal, 1)
		signal.Notify(again, os.Interrupt, syscall.SIGTERM)
		<-again
		opts.Logger.Warn("stopping with containers still running: their reads fail")
		os.Exit(1) // the worker goes with the holder
	}()
	err = agent.RunHolder(ctx, agent.HolderOptions{
		SocketDir: opts.SocketDir, Replace: opts.Replace, Restart: hup, Logger: opts.Logger,
		Worker: func() *exec.Cmd {
			cmd := exec.Command(exe, args...)
			cmd.Stdout, cmd.Stderr = os.Stdout, stderr
			return cmd
		},
	})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}

// worker serves the holder's socket and connections. SIGTERM (from the
// holder, on SIGHUP) hands over: it finishes the requests under way and
// exits, and the next worker serves the containers. SIGINT drains: it
// serves the running containers until they end.
func worker(opts agent.Options, metrics string, stderr io.Writer) int {
	var err error
	if opts.Listener, opts.Holder, err = agent.WorkerFiles(); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	opts.Restarts, _ = strconv.Atoi(os.Getenv(agent.RestartsEnv))
	log := opts.Logger.With("worker", os.Getpid())
	opts.Logger = log
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	var handover bool
	go func() {
		handover = <-sigs == syscall.SIGTERM
		cancel()
	}()
	a, err := agent.New(opts)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	errc := make(chan error, 2)
	go func() { errc <- a.Serve(ctx) }()
	if metrics != "" {
		go func() { errc <- a.ServeMetrics(ctx, metrics) }()
	}
	if err := <-errc; err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if handover {
		a.Handover()
		log.Info("handing the running containers over to the next worker", "mounts", a.Mounts())
		return 0
	}
	if n := a.Mounts(); n > 0 {
		log.Info("stopped taking requests; serving the running containers until they end", "mounts", n)
	}
	a.Close()
	return 0
}
