package main

import (
	"context"
	"fmt"
	"io"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

// gc brings a node's chunk cache directory down to --max.
func gc(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	var yes bool
	var max string
	fs := newFlags("gc", "--dir DIR --max SIZE [--yes]", stderr, &c)
	fs.StringVar(&max, "max", "", "the `SIZE` to bring the cache down to, in bytes or with a k, m or g suffix (required)")
	fs.BoolVar(&yes, "yes", false, "remove the chunks; without it, only list them")
	_, log, err := parse(fs, args, &c, stderr)
	if err != nil {
		return err
	}
	usageErr := func(format string, a ...any) error {
		fmt.Fprintf(stderr, "%s: %s\n", fs.Name(), fmt.Sprintf(format, a...))
		fs.Usage()
		return errUsage
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected arguments: %v", fs.Args())
	}
	if max == "" {
		return usageErr("--max is required: the size to bring the cache down to, such as 2g")
	}
	limit, err := casync.ParseSize(max)
	if err != nil || limit > 1<<62 {
		return usageErr("bad --max: %v", err)
	}
	sum, err := chunkstore.GC(ctx, c.dir, int64(limit), !yes, chunkstore.MaintenanceOptions{
		Logger: log,
		Report: listRemoved(stdout),
	})
	if err != nil {
		return err
	}
	if yes {
		fmt.Fprintf(stdout, "removed %d of %d chunks (%d of %d bytes); the cache holds %d bytes, at most %d\n",
			sum.Evicted, sum.Chunks, sum.EvictedBytes, sum.Bytes, sum.Bytes-sum.EvictedBytes, limit)
	} else {
		fmt.Fprintf(stdout, "dry run: would remove %d of %d chunks (%d of %d bytes) to bring the cache to at most %d bytes; run with --yes to remove them\n",
			sum.Evicted, sum.Chunks, sum.EvictedBytes, sum.Bytes, limit)
	}
	return nil
}
