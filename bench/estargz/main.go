// Command stargz-snapshotter is the benchmark's eStargz peer: the
// stargz-snapshotter's lazy-pulling snapshotter served over gRPC on a unix
// socket, for a private containerd to use as a proxy snapshotter, as
// upstream's containerd-stargz-grpc does. Upstream's command lives in a
// module the Go module proxy does not serve, so this small main builds the
// same service from the root module's service package, with the defaults
// containerd-stargz-grpc has when it reads no configuration file (an
// in-memory metadata store, prefetch of the landmark and background fetch
// of the whole layer). It is in a module of its own so that bootfs's
// go.mod and binaries never depend on it.
//
//	stargz-snapshotter -address SOCKET -root DIR [-log-level LEVEL]
//
// It serves until SIGINT or SIGTERM, then unmounts its layers and exits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/service"
	"google.golang.org/grpc"
)

func main() {
	address := flag.String("address", "", "unix socket to serve the snapshots API on (required)")
	root := flag.String("root", "", "directory for the snapshotter's state and layer cache (required)")
	level := flag.String("log-level", "info", "trace, debug, info, warn or error")
	flag.Parse()
	if *address == "" || *root == "" {
		fmt.Fprintln(os.Stderr, "stargz-snapshotter: -address and -root are required")
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*address, *root, *level); err != nil {
		fmt.Fprintln(os.Stderr, "stargz-snapshotter:", err)
		os.Exit(1)
	}
}

func run(address, root, level string) error {
	if err := log.SetLevel(level); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx = log.WithLogger(ctx, log.L)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return err
	}
	if err := service.Supported(root); err != nil {
		return fmt.Errorf("the snapshotter cannot run on %s: %w", root, err)
	}
	sn, err := service.NewStargzSnapshotterService(ctx, root, &service.Config{})
	if err != nil {
		return fmt.Errorf("start the snapshotter: %w", err)
	}
	defer sn.Close()
	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return err
	}
	if err := os.RemoveAll(address); err != nil {
		return err
	}
	ln, err := net.Listen("unix", address)
	if err != nil {
		return err
	}
	rpc := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(sn))
	served := make(chan error, 1)
	go func() { served <- rpc.Serve(ln) }()
	select {
	case err := <-served:
		if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return err
		}
	case <-ctx.Done():
		rpc.Stop()
	}
	return nil
}
