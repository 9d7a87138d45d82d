package sshstore

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

// maxQueryChunks bounds the chunk IDs one query session asks about; a
// larger HasChunks runs several, one after the other. The query's index
// takes 40 bytes a chunk (640 KiB, within the server's maxQueryIndex),
// the server's REQUESTs 32 and our MISSING answers 48: each direction
// stays below an SSH channel's window, so neither side ever waits for the
// other to read while it writes.
const maxQueryChunks = 16 << 10

// HasChunks reports, for each of ids, whether the server has it.
//
// Our Server is asked in query sessions: `casync push - - - PATH` whose
// HELLO pushes an index but no chunks. The client sends an index that
// lists ids, the server REQUESTs the chunks it lacks, the client answers
// each with MISSING and the server says GOODBYE. That is one round trip
// for the whole batch (besides opening the session on an existing
// connection), no chunk data crosses the network, nothing is stored, and
// a key that may only read may ask. See Server for the server's side.
//
// Any other server is asked chunk by chunk, as HasChunk does there, with
// the requests pipelined over the store's sessions.
func (s *Store) HasChunks(ctx context.Context, ids []casync.ChunkID) ([]bool, error) {
	if !s.ours() {
		return chunkstore.HasEach(ctx, ids, len(s.slots)*s.opts.InFlight, s.hasByFetch)
	}
	has := make([]bool, len(ids))
	for start := 0; start < len(ids); start += maxQueryChunks {
		end := min(start+maxQueryChunks, len(ids))
		if err := s.query(ctx, ids[start:end], has[start:end]); err != nil {
			return nil, err
		}
	}
	return has, nil
}

// query asks the server about ids, at most maxQueryChunks of them, in one
// query session and sets has. It runs on the connection of one of the
// store's pull sessions.
func (s *Store) query(ctx context.Context, ids []casync.ChunkID, has []bool) error {
	if len(ids) == 0 {
		return nil
	}
	fail := func(err error) error {
		if len(ids) == 1 {
			return fmt.Errorf("ask %s for chunk %s: %w", s.url, ids[0], err)
		}
		return fmt.Errorf("ask %s which of %d chunks (%s, ...) it has: %w", s.url, len(ids), ids[0], err)
	}
	index, err := queryIndex(s.opts.Digest, ids)
	if err != nil {
		return fail(err)
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	sl := s.slots[s.next.Add(1)%uint64(len(s.slots))]
	sess, err := s.session(ctx, sl)
	if err != nil {
		return fail(err)
	}
	lacks, connErr, err := s.runQuery(ctx, sess.client, index, ids)
	if connErr {
		// The connection is gone or hangs: the pull session on it is
		// replaced too.
		sess.fail(err)
	}
	switch {
	case err == nil:
		for i, id := range ids {
			_, missing := lacks[id]
			has[i] = !missing
		}
		return nil
	case ctx.Err() != nil:
		return fail(ctx.Err())
	}
	return fail(err)
}

// queryIndex returns a caibx that lists ids, each as a chunk of one byte:
// the server only reads the IDs.
func queryIndex(d casync.Digest, ids []casync.ChunkID) ([]byte, error) {
	x := casync.NewIndex(casync.IndexBlobFlags, casync.ChunkOptions{Digest: d, Size: casync.ChunkSize{Min: 1, Avg: 1, Max: 1}})
	for i, id := range ids {
		if err := x.Add(casync.Chunk{Start: uint64(i), Size: 1, ID: id}); err != nil {
			return nil, err
		}
	}
	var b bytes.Buffer
	b.Grow(48 + 16 + 40*len(ids) + 40)
	if _, err := x.WriteTo(&b); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// runQuery runs one query session on client and returns the IDs the
// server lacks. Errors wrap ErrSession unless the server refused the
// command or ctx ended; connErr says that the connection itself failed or
// stopped answering within Timeout.
func (s *Store) runQuery(ctx context.Context, client *ssh.Client, index []byte, ids []casync.ChunkID) (lacks map[casync.ChunkID]struct{}, connErr bool, err error) {
	broken := func(err error) (map[casync.ChunkID]struct{}, bool, error) {
		return nil, false, fmt.Errorf("%w: %w", ErrSession, err)
	}
	ss, err := client.NewSession()
	if err != nil {
		var refused *ssh.OpenChannelError
		return nil, !errors.As(err, &refused), fmt.Errorf("%w: open session: %w", ErrSession, err)
	}
	defer ss.Close()
	// Closing the channel ends every step below when ctx ends or the
	// server takes longer than Timeout.
	rctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	stop := context.AfterFunc(rctx, func() { ss.Close() })
	defer stop()
	explain := func(err error) (map[casync.ChunkID]struct{}, bool, error) {
		if ctx.Err() != nil {
			return nil, false, ctx.Err()
		}
		if rctx.Err() != nil {
			return nil, true, fmt.Errorf("%w: query of %d chunks got no answer within %v: %w", ErrSession, len(ids), s.opts.Timeout, context.DeadlineExceeded)
		}
		return broken(err)
	}

	stdin, br, stderr, err := startCommand(ss, s.pushCmd, 64<<10)
	if err != nil {
		return explain(err)
	}
	sess := &session{ssh: ss, stderr: stderr}
	bw := bufio.NewWriterSize(stdin, 64<<10)

	// HELLO and the whole index go out at once: both sides send HELLO
	// without waiting for the other's.
	bw.Write(appendHello(nil, featPushIndex|featPushIndexChunks))
	var buf []byte
	for rest := index; len(rest) > 0; {
		n := min(len(rest), maxMessage-headerSize)
		buf = appendIndex(buf[:0], rest[:n])
		bw.Write(buf)
		rest = rest[n:]
	}
	bw.Write(appendIndexEOF(nil))
	// A server that refused the command has closed the channel, so a
	// failed send is explained by reading what it said instead.
	sendErr := bw.Flush()

	m, err := readMessage(br)
	var exit *ssh.ExitError
	switch {
	case err != nil && rctx.Err() == nil:
		err = sess.ended(err)
		if errors.As(err, &exit) {
			// The server refused the command, and its stderr says
			// why: asking again would not help.
			return nil, false, chunkstore.Permanent(fmt.Errorf("read HELLO: %w", err))
		}
		if sendErr != nil {
			err = fmt.Errorf("send query: %w (%w)", sendErr, err)
		}
		return broken(fmt.Errorf("read HELLO: %w", err))
	case err != nil:
		return explain(err)
	case m.typ != msgHello:
		return broken(fmt.Errorf("%w: server sent %s before HELLO", ErrProtocol, typeName(m.typ)))
	case sendErr != nil:
		return explain(fmt.Errorf("send query: %w", sendErr))
	}
	asked := make(map[casync.ChunkID]struct{}, len(ids))
	for _, id := range ids {
		asked[id] = struct{}{}
	}
	lacks = make(map[casync.ChunkID]struct{})
	for {
		m, err := readMessage(br)
		if err != nil {
			return explain(sess.ended(err))
		}
		switch m.typ {
		case msgRequest:
			buf = buf[:0]
			for _, id := range m.ids {
				if _, ok := asked[id]; !ok {
					return broken(fmt.Errorf("%w: server requested chunk %s, which the query does not name", ErrProtocol, id))
				}
				lacks[id] = struct{}{}
				buf = appendMissing(buf, id)
			}
			bw.Write(buf)
			if err := bw.Flush(); err != nil {
				return explain(fmt.Errorf("send MISSING: %w", err))
			}
		case msgGoodbye:
			stdin.Close()
			if err := ss.Wait(); err != nil {
				return explain(fmt.Errorf("query session ended with %v: %s", err, strings.TrimSpace(sess.stderr.String())))
			}
			return lacks, false, nil
		case msgAbort:
			return broken(fmt.Errorf("server refused the query (errno %d): %s", m.errno, m.reason))
		default:
			return broken(fmt.Errorf("%w: server sent %s in a query session", ErrProtocol, typeName(m.typ)))
		}
	}
}
