package sshstore

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bootfs/bootfs/casync"
)

// TestPullPipelined is a property test of the pull protocol with a client
// that sends all its requests before it reads any answer, more of them
// than the SSH windows of both sides hold (casync sends its whole index
// ahead). For random request streams (priorities, repeats, chunks the
// store lacks, REQUEST sizes) the server must answer them all: every
// answer is for a chunk asked for, carries that chunk or MISSING as the
// store says, and each chunk is answered at least as often as it was asked
// for at either priority and at most as often as it was asked for. With
// high priority only, as Store and desync ask, every request is answered
// once, in order.
func TestPullPipelined(t *testing.T) {
	chunks := make(map[casync.ChunkID][]byte)
	r := rand.New(rand.NewPCG(3, 4))
	for range 64 {
		b := randomBytes(r, 2<<10)
		chunks[casync.SHA512_256.Sum(b)] = b
	}
	f := startServer(t, memoryStore(t, chunks), ServerOptions{})
	c := rawClient(t, f)
	stored := slices.Collect(maps.Keys(chunks))
	slices.SortFunc(stored, func(a, b casync.ChunkID) int { return bytes.Compare(a[:], b[:]) })
	for seed := range uint64(4) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			pullPipelined(t, c, chunks, stored, seed)
		})
	}
}

// pullRequest is one chunk request of a pipelined stream.
type pullRequest struct {
	id   casync.ChunkID
	high bool
}

func pullPipelined(t *testing.T, c *ssh.Client, chunks map[casync.ChunkID][]byte, stored []casync.ChunkID, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 99))
	allHigh := seed%2 == 0
	n := 90_000 + r.IntN(40_000)
	missing := make([]casync.ChunkID, 500)
	for i := range missing {
		missing[i] = casync.SHA512_256.Sum(fmt.Appendf(nil, "missing %d %d", seed, i))
	}
	reqs := make([]pullRequest, n)
	for i := range reqs {
		reqs[i].high = allHigh || r.IntN(2) == 0
		if r.IntN(20) == 0 {
			reqs[i].id = stored[r.IntN(len(stored))]
		} else {
			reqs[i].id = missing[r.IntN(len(missing))]
		}
	}
	// The last request, at low priority, is answered last: every
	// high-priority request comes before it, and the low ones in order.
	sentinel := casync.SHA512_256.Sum(fmt.Appendf(nil, "sentinel %d", seed))

	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	stdin, _ := sess.StdinPipe()
	stdout, _ := sess.StdoutPipe()
	if err := sess.Start("casync pull - - - /store"); err != nil {
		t.Fatal(err)
	}
	// A server that stops reading while the client does not read either
	// deadlocks; closing the session then makes this test fail, not hang.
	stuck := time.AfterFunc(2*time.Minute, func() { sess.Close() })
	defer stuck.Stop()

	bw := bufio.NewWriterSize(stdin, 64<<10)
	bw.Write(appendHello(nil, featPullChunks))
	for i := 0; i < len(reqs); {
		k := min(len(reqs)-i, 1+r.IntN(400))
		var ids []casync.ChunkID
		for ; k > 0 && reqs[i].high == reqs[i+len(ids)].high; k-- {
			ids = append(ids, reqs[i+len(ids)].id)
			if i+len(ids) == len(reqs) {
				break
			}
		}
		flags := uint64(0)
		if reqs[i].high {
			flags = requestHighPriority
		}
		bw.Write(appendRequest(nil, flags, ids))
		i += len(ids)
	}
	bw.Write(appendRequest(nil, 0, []casync.ChunkID{sentinel}))
	if err := bw.Flush(); err != nil {
		t.Fatalf("send %d requests before reading: %v (the server stopped reading them)", n, err)
	}

	br := bufio.NewReader(stdout)
	if m, err := readMessage(br); err != nil || m.typ != msgHello {
		t.Fatalf("first message = %s, %v; want HELLO", typeName(m.typ), err)
	}
	var answers []casync.ChunkID
	for {
		m, err := readMessage(br)
		if err != nil {
			t.Fatalf("after %d answers of %d requests: %v", len(answers), n, err)
		}
		switch m.typ {
		case msgChunk:
			data, err := casync.DecodeChunk(casync.SHA512_256, m.id, m.data)
			if want, ok := chunks[m.id]; !ok || err != nil || !bytes.Equal(data, want) {
				t.Fatalf("CHUNK %s: %d bytes, %v; stored: %v", m.id, len(data), err, ok)
			}
		case msgMissing:
			if _, ok := chunks[m.id]; ok {
				t.Fatalf("MISSING %s, which the store has", m.id)
			}
		default:
			t.Fatalf("after %d answers: got %s, want CHUNK or MISSING", len(answers), typeName(m.typ))
		}
		if m.id == sentinel {
			break
		}
		answers = append(answers, m.id)
	}

	if allHigh {
		for i, id := range answers {
			if i >= n || id != reqs[i].id {
				t.Fatalf("answer %d is for %s, want %s (high priority: one answer per request, in order)", i, id, reqs[min(i, n-1)].id)
			}
		}
		if len(answers) != n {
			t.Fatalf("%d answers to %d requests", len(answers), n)
		}
	}
	high, low, got := map[casync.ChunkID]int{}, map[casync.ChunkID]int{}, map[casync.ChunkID]int{}
	for _, q := range reqs {
		if q.high {
			high[q.id]++
		} else {
			low[q.id]++
		}
	}
	for _, id := range answers {
		got[id]++
	}
	for id, k := range got {
		if k < max(high[id], low[id]) || k > high[id]+low[id] {
			t.Errorf("chunk %s answered %d times; asked %d times at high priority and %d at low", id, k, high[id], low[id])
		}
	}
	for id := range high {
		if got[id] == 0 {
			t.Errorf("chunk %s asked for and never answered", id)
		}
	}
	for id := range low {
		if got[id] == 0 {
			t.Errorf("chunk %s asked for and never answered", id)
		}
	}

	stdin.Write(appendGoodbye(nil))
	stdin.Close()
	go io.Copy(io.Discard, br)
	if err := sess.Wait(); err != nil {
		t.Errorf("session after GOODBYE: %v, want exit status 0", err)
	}
	t.Logf("%d requests (high priority only: %v), %d answers", n, allHigh, len(answers))
}
