package sshstore

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

// A push batch ends, and waits for the server's GOODBYE, when no more
// writes are queued or when it reaches either bound.
const (
	maxBatchChunks = 256
	maxBatchBytes  = 16 << 20
)

// put is one chunk waiting to be pushed, and then for its batch's answer.
type put struct {
	id    casync.ChunkID
	frame []byte
	done  chan struct{} // closed once err is set
	err   error
}

// pusher pushes batches of chunks over its own SSH connection, one
// `casync push` session per batch.
type pusher struct {
	s      *Store
	mu     sync.Mutex
	client *ssh.Client
}

// StoreChunk verifies data against id, compresses it and stores it on the
// server. It returns nil only once the server has said that the chunk is
// stored: writes are pushed in batches, each one `casync push - - - PATH`
// session whose CHUNKs the server stores (after verifying each) before it
// answers the client's GOODBYE with its own. Concurrent writes share
// batches, so their round trips overlap.
//
// Only our Server confirms chunks that way. A stock `casync push`
// stores only the chunks an index names and says GOODBYE at once, so
// writes to any other server fail with an error wrapping
// chunkstore.ErrReadOnly instead of being silently lost.
func (s *Store) StoreChunk(ctx context.Context, id casync.ChunkID, data []byte) error {
	if err := casync.VerifyChunk(s.opts.Digest, id, data); err != nil {
		return fmt.Errorf("store chunk on %s: %w", s.url, err)
	}
	return s.push(ctx, id, casync.CompressChunk(nil, data))
}

// StoreFrame stores a compressed chunk frame as StoreChunk does, after
// checking that it decompresses to data that hashes to id (unless
// ClientOptions.TrustWrites). frame is copied: the caller may reuse it
// as soon as StoreFrame returns.
func (s *Store) StoreFrame(ctx context.Context, id casync.ChunkID, frame []byte) error {
	if !s.opts.TrustWrites {
		if err := chunkstore.VerifyFrame(s.opts.Digest, id, frame); err != nil {
			return fmt.Errorf("store chunk on %s: %w", s.url, err)
		}
	}
	return s.push(ctx, id, bytes.Clone(frame))
}

// push queues frame for a pusher and waits for its batch to be answered.
func (s *Store) push(ctx context.Context, id casync.ChunkID, frame []byte) error {
	fail := func(err error) error {
		return fmt.Errorf("store chunk %s on %s: %w", id, s.url, err)
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	if s.closed.Load() {
		return fail(net.ErrClosed)
	}
	if !s.ours() {
		return fail(fmt.Errorf("%w: %s is %q, not a bootfs chunk server: a stock `casync push` stores only the chunks an index names, so chunks cannot be written there one by one (serve the store with `chunkstore serve --ssh ... --write-authorized-keys F`)", chunkstore.ErrReadOnly, s.addr, s.version))
	}
	s.pushStart.Do(func() {
		for _, pu := range s.pushers {
			s.pushWG.Add(1)
			go pu.loop()
		}
	})
	p := &put{id: id, frame: frame, done: make(chan struct{})}
	select {
	case s.puts <- p:
	case <-ctx.Done():
		return fail(ctx.Err())
	case <-s.quit:
		return fail(net.ErrClosed)
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return fail(ctx.Err())
	case <-s.quit:
		return fail(net.ErrClosed)
	}
	if p.err != nil {
		if errors.Is(p.err, ErrSession) {
			s.log.Info("ssh chunk store push session broke; the next write opens a new one", "store", s.url, "err", p.err)
		}
		return fail(p.err)
	}
	return nil
}

// loop pushes batches until the store closes.
func (pu *pusher) loop() {
	defer pu.s.pushWG.Done()
	for {
		var first *put
		select {
		case first = <-pu.s.puts:
		case <-pu.s.quit:
			return
		}
		batch := []*put{first}
		err := pu.pushBatch(&batch)
		for _, p := range batch {
			p.err = err
			close(p.done)
		}
	}
}

// connect returns the pusher's connection, dialing one if needed.
func (pu *pusher) connect() (*ssh.Client, error) {
	s := pu.s
	pu.mu.Lock()
	defer pu.mu.Unlock()
	if pu.client != nil {
		return pu.client, nil
	}
	if s.closed.Load() {
		return nil, net.ErrClosed
	}
	// Close cancels a dial in progress.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	client, stop, err := s.dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("sshstore: connect to %s: %w", s.url, err)
	}
	stop()
	pu.client = client
	return client, nil
}

// drop closes c if it is still the pusher's connection, or whatever
// connection the pusher has if c is nil.
func (pu *pusher) drop(c *ssh.Client) {
	pu.mu.Lock()
	defer pu.mu.Unlock()
	if pu.client != nil && (c == nil || c == pu.client) {
		pu.client.Close()
		pu.client = nil
	}
}

// pushBatch runs one push session: HELLO, the CHUNKs of *batch and of
// any writes queued meanwhile (appended to *batch), GOODBYE, and the
// server's GOODBYE, which confirms that all of them are stored. Errors
// after the session started wrap ErrSession; the connection is dropped.
func (pu *pusher) pushBatch(batch *[]*put) error {
	s := pu.s
	client, err := pu.connect()
	if err != nil {
		return err
	}
	broken := func(err error) error {
		pu.drop(client)
		return fmt.Errorf("%w: %w", ErrSession, err)
	}
	// A batch that takes longer than Timeout loses its connection, which
	// ends every step below.
	timedOut := make(chan struct{})
	timer := time.AfterFunc(s.opts.Timeout, func() {
		close(timedOut)
		pu.drop(client)
	})
	defer timer.Stop()
	explain := func(err error) error {
		select {
		case <-timedOut:
			return fmt.Errorf("no answer within %v: %w", s.opts.Timeout, context.DeadlineExceeded)
		default:
			return err
		}
	}

	ss, err := client.NewSession()
	if err != nil {
		return broken(explain(fmt.Errorf("open session: %w", err)))
	}
	defer ss.Close()
	stdin, br, stderr, err := startCommand(ss, s.pushCmd, 4<<10)
	if err != nil {
		return broken(explain(err))
	}
	sess := &session{ssh: ss, stderr: stderr}
	bw := bufio.NewWriterSize(stdin, 256<<10)

	// Both sides send HELLO at once. A server that refused the command
	// has closed the channel, so a failed send is explained by reading
	// what it said instead.
	bw.Write(appendHello(nil, featPushChunks))
	bw.Flush()
	m, err := readMessage(br)
	switch {
	case err != nil:
		// Most often the server refused the command; its stderr says why
		// (a read-only store or a key that may not write), and trying
		// again would not help.
		pu.drop(client)
		return fmt.Errorf("read HELLO: %w", explain(sess.ended(err)))
	case m.typ != msgHello:
		return broken(fmt.Errorf("%w: server sent %s before HELLO", ErrProtocol, typeName(m.typ)))
	case m.flags&featWritableStore == 0:
		// Our server then ends the session with an ABORT that says why:
		// the store or the key is read-only.
		why := fmt.Sprintf("server HELLO %#x does not offer a writable store", m.flags)
		if m, err := readMessage(br); err == nil && m.typ == msgAbort {
			why = m.reason
		}
		return fmt.Errorf("%w: %s", chunkstore.ErrReadOnly, why)
	}

	var hdr []byte
	size := 0
	for i := 0; i < len(*batch); i++ {
		p := (*batch)[i]
		hdr = appendChunkHeader(hdr[:0], chunkCompressed, p.id, len(p.frame))
		bw.Write(hdr)
		if _, err := bw.Write(p.frame); err != nil {
			return broken(explain(fmt.Errorf("send CHUNK: %w", err)))
		}
		size += len(p.frame)
		if i+1 < len(*batch) || len(*batch) >= maxBatchChunks || size >= maxBatchBytes {
			continue
		}
		select {
		case next := <-s.puts:
			*batch = append(*batch, next)
		default:
		}
	}
	bw.Write(appendGoodbye(nil))
	if err := bw.Flush(); err != nil {
		return broken(explain(fmt.Errorf("send GOODBYE: %w", err)))
	}
	stdin.Close()

	m, err = readMessage(br)
	switch {
	case err != nil:
		return broken(explain(sess.ended(err)))
	case m.typ == msgAbort:
		return broken(fmt.Errorf("server refused the chunks (errno %d): %s", m.errno, m.reason))
	case m.typ != msgGoodbye:
		return broken(fmt.Errorf("%w: server sent %s instead of GOODBYE", ErrProtocol, typeName(m.typ)))
	}
	if err := ss.Wait(); err != nil {
		msg := strings.TrimSpace(sess.stderr.String())
		return broken(explain(fmt.Errorf("push session ended with %v: %s", err, msg)))
	}
	return nil
}
