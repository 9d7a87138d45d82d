package sshstore

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

// serverVersion is the SSH version string of Server. Store only pushes
// chunks on their own to servers that send it: a stock `casync push`
// stores nothing that no index names (see Server).
const serverVersion = "SSH-2.0-bootfs-chunkstore"

const (
	// storeParallel bounds the chunks one push session verifies and
	// writes at once.
	storeParallel = 4
	// maxIndexSize bounds a pushed index: 64 MiB is 1.6 million chunks,
	// about 100 GiB of archive at casync's default chunk size. The index
	// is parsed whole once it is in.
	maxIndexSize = 64 << 20
	// maxQueryIndex bounds the index of a query session, which is held in
	// memory: 4 MiB is about 100,000 chunk IDs. Store sends at most
	// maxQueryChunks per query.
	maxQueryIndex = 4 << 20
)

// servePush speaks the storing side of casync's protocol on rw, as
// `casync push - - INDEX STORE` does: the client pushes an index (if ix is
// not nil), the server REQUESTs the chunks it names that the store lacks
// (if the client set PUSH_INDEX_CHUNKS), the client sends them as CHUNKs,
// and the server installs the index and says GOODBYE. CHUNKs the client
// sends unasked are stored as well; the client's GOODBYE is answered with
// GOODBYE once every chunk is stored. Any failure ends the session with
// ABORT and leaves no index.
//
// A query is a session whose command names no index and whose client's
// HELLO asks to push an index but no chunks (PUSH_INDEX and
// PUSH_INDEX_CHUNKS without PUSH_CHUNKS; stock casync never sends that:
// it pushes an index only to a named file, and always with its chunks).
// The server REQUESTs the chunks of that index the store lacks, exactly
// as for an index push; the client answers every REQUEST with MISSING,
// and once all are answered the server says GOODBYE. A query stores
// nothing, neither chunks nor the index, and moves no chunk data: it is
// how Store learns which of a batch of chunks the store has.
//
// If refuse is not nil the client may not write (its key or the server
// is read-only): it may run queries, and any other session is ended with
// an ABORT that carries refuse.
func (s *Server) servePush(ctx context.Context, rw io.ReadWriter, ix *indexUpload, refuse error, log *slog.Logger) error {
	br := bufio.NewReaderSize(rw, 64<<10)
	bw := bufio.NewWriterSize(rw, 64<<10)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(storeParallel)
	abort := func(errno uint64, err error) error {
		g.Wait()
		bw.Write(appendAbort(nil, errno, err.Error()))
		bw.Flush()
		return err
	}

	services := featWritableStore
	if refuse != nil {
		// It can still say what the store holds.
		services = featReadableStore
	}
	if ix != nil {
		services |= featWritableIndex
	}
	bw.Write(appendHello(nil, services))
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("send HELLO: %w", err)
	}
	hello, err := readMessage(br)
	if err != nil {
		switch {
		case err == io.EOF && refuse != nil:
			return refuse
		case err == io.EOF:
			return fmt.Errorf("%w: client closed before HELLO", ErrProtocol)
		}
		return abort(errnoEBADMSG, fmt.Errorf("read HELLO: %w", err))
	}
	if hello.typ != msgHello {
		return abort(errnoEBADMSG, fmt.Errorf("%w: got %s before HELLO", ErrProtocol, typeName(hello.typ)))
	}
	ops := hello.flags & featOperations
	query := ix == nil && ops == featPushIndex && hello.flags&featPushIndexChunks != 0
	switch {
	case ops&^(featPushChunks|featPushIndex) != 0:
		return abort(errnoEBADE, fmt.Errorf("%w: client asks for operations %#x; a push session only stores chunks and an index (%#x)", ErrProtocol, ops, featPushChunks|featPushIndex))
	case ops == 0:
		return abort(errnoEBADE, fmt.Errorf("%w: client HELLO %#x asks for nothing this server does", ErrProtocol, hello.flags))
	case refuse != nil && !query:
		return abort(errnoEACCES, refuse)
	case ops&featPushIndex != 0 && ix == nil && !query:
		return abort(errnoEBADE, fmt.Errorf("%w: client pushes an index and chunks, but the command names none (a query pushes an index and no chunks)", ErrProtocol))
	case ops&featPushIndex == 0 && ix != nil:
		return abort(errnoEBADE, fmt.Errorf("%w: the command names index %q, but the client does not push one", ErrProtocol, ix.name))
	}
	requestChunks := hello.flags&featPushIndexChunks != 0

	var (
		indexIn bool                            // INDEX_EOF seen
		wanted  = map[casync.ChunkID]struct{}{} // requested, not yet received
		stored  int
		asked   int          // query: chunks the index names
		lacking int          // query: chunks requested
		qindex  bytes.Buffer // query: the index so far
	)
	// finish waits for the chunks in flight, installs the index and says
	// GOODBYE: everything the client sent is stored.
	finish := func() error {
		if err := g.Wait(); err != nil {
			return abort(storeErrno(err), err)
		}
		if ix != nil {
			if err := ix.install(); err != nil {
				return abort(errnoEIO, err)
			}
			log.Info("index stored", "index", ix.name, "chunks_received", stored)
		}
		if query {
			log.Debug("chunk query answered", "chunks", asked, "lacking", lacking)
		}
		bw.Write(appendGoodbye(nil))
		if err := bw.Flush(); err != nil {
			return fmt.Errorf("send GOODBYE: %w", err)
		}
		log.Debug("casync push session done", "chunks_received", stored)
		return nil
	}
	for {
		if gctx.Err() != nil && ctx.Err() == nil {
			// A chunk failed to store; g.Wait in abort returns why.
			err := g.Wait()
			return abort(storeErrno(err), err)
		}
		m, err := readMessage(br)
		if err == io.EOF {
			werr := g.Wait()
			switch {
			case ix != nil:
				return fmt.Errorf("client closed its end before the index %s was complete (%d requested chunks outstanding); index not stored", ix.name, len(wanted))
			case query:
				return fmt.Errorf("client closed its end before its query was answered (%d requested chunks unanswered)", len(wanted))
			case werr != nil:
				return werr
			}
			// A client that pushes chunks but no index and does not wait
			// for GOODBYE (stock casync with a local index sends none).
			log.Debug("casync push session closed by client", "chunks_received", stored)
			return nil
		}
		if err != nil {
			if errors.Is(err, ErrProtocol) {
				return abort(errnoEBADMSG, err)
			}
			return fmt.Errorf("read: %w", err)
		}
		switch m.typ {
		case msgIndex:
			switch {
			case (ix == nil && !query) || indexIn:
				return abort(errnoEBADMSG, fmt.Errorf("%w: unexpected INDEX", ErrProtocol))
			case query:
				if qindex.Len()+len(m.data) > maxQueryIndex {
					return abort(errnoEFBIG, fmt.Errorf("query index is larger than %d bytes; refused (ask about fewer chunks at once)", maxQueryIndex))
				}
				qindex.Write(m.data)
			default:
				if err := ix.write(m.data); err != nil {
					return abort(errnoEFBIG, err)
				}
			}
		case msgIndexEOF:
			if (ix == nil && !query) || indexIn {
				return abort(errnoEBADMSG, fmt.Errorf("%w: unexpected INDEX_EOF", ErrProtocol))
			}
			indexIn = true
			var ids []casync.ChunkID
			if query {
				if ids, err = indexIDs(&qindex); err != nil {
					err = fmt.Errorf("query index: %w", err)
				}
				qindex = bytes.Buffer{}
				asked = len(ids)
			} else {
				ids, err = ix.finish()
			}
			if err != nil {
				return abort(errnoEBADMSG, err)
			}
			if requestChunks {
				if err := s.requestMissing(ctx, bw, ids, wanted); err != nil {
					if errors.Is(err, casync.ErrFormat) {
						return abort(errnoEBADMSG, err)
					}
					return abort(errnoEIO, err)
				}
				log.Debug("index received", "chunks", len(ids), "requested", len(wanted))
			}
			lacking = len(wanted)
			if len(wanted) == 0 {
				return finish()
			}
		case msgChunk:
			if query {
				return abort(errnoEBADMSG, fmt.Errorf("%w: CHUNK %s in a query session (the client's HELLO pushes no chunks); nothing stored", ErrProtocol, m.id))
			}
			delete(wanted, m.id)
			stored++
			g.Go(func() error { return s.storeChunk(gctx, m, log) })
			if indexIn && len(wanted) == 0 {
				return finish()
			}
		case msgMissing:
			_, ok := wanted[m.id]
			if query && ok {
				// The answer a query expects: the client has no chunks.
				delete(wanted, m.id)
				if len(wanted) == 0 {
					return finish()
				}
				continue
			}
			if ok {
				return abort(errnoENOENT, fmt.Errorf("client has no chunk %s, which its index names; index not stored", m.id))
			}
			return abort(errnoEBADMSG, fmt.Errorf("%w: MISSING for chunk %s, which was not requested", ErrProtocol, m.id))
		case msgGoodbye:
			if query {
				return abort(errnoEBADMSG, fmt.Errorf("%w: client said GOODBYE before its query was answered", ErrProtocol))
			}
			if ix != nil {
				return abort(errnoEBADMSG, fmt.Errorf("%w: client said GOODBYE before the index %s and its %d outstanding chunks were in; index not stored", ErrProtocol, ix.name, len(wanted)))
			}
			return finish()
		case msgAbort:
			g.Wait()
			return fmt.Errorf("client aborted (errno %d): %s", m.errno, m.reason)
		default:
			return abort(errnoEBADMSG, fmt.Errorf("%w: unexpected %s from a pushing client", ErrProtocol, typeName(m.typ)))
		}
	}
}

// requestMissing sends REQUESTs for the chunks of ids that the store
// lacks, each once, and adds them to wanted.
func (s *Server) requestMissing(ctx context.Context, bw *bufio.Writer, ids []casync.ChunkID, wanted map[casync.ChunkID]struct{}) error {
	seen := make(map[casync.ChunkID]struct{}, len(ids))
	var batch []casync.ChunkID
	send := func() error {
		if len(batch) == 0 {
			return nil
		}
		// Low priority, as casync's push asks.
		if _, err := bw.Write(appendRequest(nil, 0, batch)); err != nil {
			return fmt.Errorf("send REQUEST: %w", err)
		}
		batch = batch[:0]
		return nil
	}
	for _, id := range ids {
		if _, ok := seen[id]; ok {
			continue
		}
		seen[id] = struct{}{}
		has, err := s.store.HasChunk(ctx, id)
		if err != nil {
			return err
		}
		if has {
			continue
		}
		wanted[id] = struct{}{}
		if batch = append(batch, id); len(batch) == 1024 {
			if err := send(); err != nil {
				return err
			}
		}
	}
	if err := send(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("send REQUEST: %w", err)
	}
	return nil
}

// storeChunk verifies and stores one CHUNK message. The store verifies
// the chunk against its ID (StoreFrame and StoreChunk both do) and writes
// it whole or not at all.
func (s *Server) storeChunk(ctx context.Context, m message, log *slog.Logger) error {
	start := time.Now()
	var err error
	switch {
	case m.flags&chunkCompressed != 0:
		err = chunkstore.StoreFrame(ctx, s.wstore, casync.SHA512_256, m.id, m.data)
	case len(m.data) > casync.MaxChunkSize:
		err = fmt.Errorf("%w: chunk %s of %d bytes exceeds %d", casync.ErrFormat, m.id, len(m.data), casync.MaxChunkSize)
	default:
		err = s.wstore.StoreChunk(ctx, m.id, m.data)
	}
	if err != nil {
		log.Warn("chunk push refused", "id", m.id, "err", err)
		return fmt.Errorf("store chunk %s: %w", m.id, err)
	}
	log.Debug("chunk push", "id", m.id, "result", "stored", "bytes", len(m.data), "took", time.Since(start))
	return nil
}

// storeErrno is the ABORT errno for a failure to store a chunk.
func storeErrno(err error) uint64 {
	var ce *casync.ChecksumError
	if errors.As(err, &ce) || errors.Is(err, casync.ErrFormat) {
		return errnoEBADMSG
	}
	return errnoEIO
}

// indexUpload is an index being pushed: a temporary file next to its
// final name inside the server's index directory, renamed into place by
// install and removed by discard if it never was.
type indexUpload struct {
	root      *os.Root
	name, tmp string // relative to root
	f         *os.File
	size      int64
	installed bool
}

// createIndex starts the upload of the index that a push command names.
func (s *Server) createIndex(p string) (*indexUpload, error) {
	if s.indexes == nil {
		return nil, fmt.Errorf("%w: casync push: this server stores no indexes (start it with --index-dir DIR); to store only chunks, push them without an index", errCommand)
	}
	rel := path.Clean(p)
	if path.IsAbs(rel) {
		r, err := filepath.Rel(s.opts.IndexDir, rel)
		if err != nil || r == ".." || strings.HasPrefix(r, "../") {
			return nil, fmt.Errorf("%w: casync push: index %q is outside this server's index directory %s", errCommand, p, s.opts.IndexDir)
		}
		rel = r
	}
	if rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return nil, fmt.Errorf("%w: casync push: index %q is not a file inside this server's index directory %s", errCommand, p, s.opts.IndexDir)
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	dir, base := path.Split(rel)
	tmp := dir + "." + base + "." + hex.EncodeToString(rnd[:]) + ".tmp"
	f, err := s.indexes.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%w: casync push: cannot write index %q in %s: %v", errCommand, p, s.opts.IndexDir, err)
	}
	return &indexUpload{root: s.indexes, name: rel, tmp: tmp, f: f}, nil
}

func (u *indexUpload) write(b []byte) error {
	if u.size+int64(len(b)) > maxIndexSize {
		return fmt.Errorf("index %s is larger than %d bytes; refused", u.name, maxIndexSize)
	}
	u.size += int64(len(b))
	if _, err := u.f.Write(b); err != nil {
		return fmt.Errorf("write index %s: %w", u.name, err)
	}
	return nil
}

// finish syncs the received index, checks that it is a well-formed caidx
// or caibx, and returns the IDs of its chunks.
func (u *indexUpload) finish() ([]casync.ChunkID, error) {
	if err := u.f.Sync(); err != nil {
		return nil, fmt.Errorf("write index %s: %w", u.name, err)
	}
	r, err := u.root.Open(u.tmp)
	if err != nil {
		return nil, fmt.Errorf("read index %s: %w", u.name, err)
	}
	defer r.Close()
	ids, err := indexIDs(r)
	if err != nil {
		return nil, fmt.Errorf("pushed index %s: %w", u.name, err)
	}
	return ids, nil
}

// indexIDs reads a caidx or caibx and returns the IDs of its chunks.
func indexIDs(r io.Reader) ([]casync.ChunkID, error) {
	x, err := casync.ReadIndex(r)
	if err != nil {
		return nil, err
	}
	ids := make([]casync.ChunkID, len(x.Chunks))
	for i, c := range x.Chunks {
		ids[i] = c.ID
	}
	return ids, nil
}

// install renames the index into place.
func (u *indexUpload) install() error {
	if err := u.f.Close(); err != nil {
		return fmt.Errorf("write index %s: %w", u.name, err)
	}
	if err := u.root.Rename(u.tmp, u.name); err != nil {
		return fmt.Errorf("install index %s: %w", u.name, err)
	}
	u.installed = true
	return nil
}

// discard removes the temporary file unless the index was installed.
func (u *indexUpload) discard() {
	if u.installed {
		return
	}
	u.f.Close()
	u.root.Remove(u.tmp)
}
