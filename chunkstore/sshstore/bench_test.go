package sshstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
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

// BenchmarkSSHPut64K measures parallel StoreChunk of new 64 KiB chunks
// over loopback: hashing the chunk to make its ID, the client's
// verification and compression, SSH encryption, the push protocol with
// its batch confirmations, and the server's verification. The server
// writes to a Local store without fsync ("local"), or only verifies and
// drops the chunks ("verify-only"), which leaves the cost of the
// protocol and SSH.
func BenchmarkSSHPut64K(b *testing.B) {
	const size = 64 << 10
	var base []byte
	for _, c := range randomChunks(43, 1, size) {
		base = c
	}
	for _, backend := range []struct {
		name  string
		store func(b *testing.B) chunkstore.WriteStore
	}{
		{"local", func(b *testing.B) chunkstore.WriteStore { return localStore(b, nil) }},
		{"verify-only", func(*testing.B) chunkstore.WriteStore { return discardStore{} }},
	} {
		b.Run(backend.name, func(b *testing.B) {
			f := startWriteServer(b, backend.store(b), ServerOptions{})
			opts := f.clientOptions()
			opts.Sessions = 4
			s := f.newClient(b, opts)
			var next atomic.Uint64
			b.SetBytes(size)
			b.ReportAllocs()
			// As many writers as mkimage runs against a remote store (8).
			b.SetParallelism(max(1, 8/runtime.GOMAXPROCS(0)))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				data := bytes.Clone(base)
				for pb.Next() {
					// A chunk no one stored before.
					binary.LittleEndian.PutUint64(data, next.Add(1))
					if err := s.StoreChunk(context.Background(), casync.SHA512_256.Sum(data), data); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// discardStore verifies the frames it is given and keeps none.
type discardStore struct{ chunkstore.WriteStore }

func (discardStore) StoreFrame(ctx context.Context, id casync.ChunkID, frame []byte) error {
	_, err := casync.DecodeChunk(casync.SHA512_256, id, frame)
	return err
}

func (discardStore) StoreChunk(ctx context.Context, id casync.ChunkID, data []byte) error {
	return casync.VerifyChunk(casync.SHA512_256, id, data)
}

func (discardStore) HasChunk(context.Context, casync.ChunkID) (bool, error) { return false, nil }
