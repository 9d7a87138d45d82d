package sshstore

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/bootfs/bootfs/casync"
)

// BenchmarkSSHGet64K measures parallel GetChunk of 64 KiB chunks from our
// server (a Local store, frames passed through) over loopback: SSH
// encryption, the protocol, and decompression plus verification on the
// client.
func BenchmarkSSHGet64K(b *testing.B) {
	const size = 64 << 10
	chunks := randomChunks(42, 64, size)
	ids := make([]casync.ChunkID, 0, len(chunks))
	for id := range chunks {
		ids = append(ids, id)
	}
	f := startServer(b, localStore(b, chunks), ServerOptions{})
	opts := f.clientOptions()
	opts.Sessions = 4
	s := f.newClient(b, opts)
	var next atomic.Uint64
	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := ids[next.Add(1)%uint64(len(ids))]
			if _, err := s.GetChunk(context.Background(), id); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
