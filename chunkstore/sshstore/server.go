package sshstore

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("sshstore: server closed")

// ServerOptions configures a Server. HostKeyFile and AuthorizedKeysFile
// are required; the zero value of every other field works.
type ServerOptions struct {
	// HostKeyFile is the server's private host key (OpenSSH or PEM
	// format, unencrypted). Flag: --host-key.
	HostKeyFile string
	// AuthorizedKeysFile lists the public keys allowed to log in, in
	// OpenSSH authorized_keys format. It is read once, by NewServer. Key
	// options (from=, command=, ...) are ignored: the server runs nothing
	// but the chunk protocol. Flag: --authorized-keys.
	AuthorizedKeysFile string
	// WriteAuthorizedKeysFile lists the public keys that may also store
	// chunks, in authorized_keys format: they run `casync push`, as
	// `casync make` and Store.StoreChunk do. These keys may log in and
	// read too. Keys only in AuthorizedKeysFile read and never write;
	// without this file the store is read-only over SSH, as the HTTP
	// server is without a write token. Writing needs a store that is a
	// chunkstore.WriteStore. Flag: --write-authorized-keys.
	WriteAuthorizedKeysFile string
	// IndexDir is the directory where the indexes that writers push are
	// stored: `casync make --store=HOST:STORE HOST:INDEX` runs
	// `casync push - - INDEX STORE`, and only pushes chunks together
	// with an index. An absolute INDEX must lie inside IndexDir, a
	// relative one is taken relative to it; nothing outside it is ever
	// written, symbolic links included. An index is installed (renamed
	// into place) only once every chunk it names is in the store.
	// Without IndexDir, index pushes are refused. Flag: --index-dir.
	IndexDir string
	// StorePath, if set, is the only store path clients may name in
	// `casync pull|push ... PATH` (compared after path.Clean). If empty
	// the path is logged and ignored: the server serves one store
	// whatever a client calls it.
	StorePath string
	// MaxSessions bounds the protocol sessions served at once over all
	// connections; a client opening more is refused with "resource
	// shortage". Default 64.
	MaxSessions int
	// MaxConns bounds concurrent connections, authenticated or not;
	// more are closed at once. Default 256.
	MaxConns int
	// HandshakeTimeout bounds the SSH handshake and authentication.
	// Default 30s.
	HandshakeTimeout time.Duration
	// Logger receives one debug line per chunk request and the errors of
	// connections and sessions. Nil discards.
	Logger *slog.Logger
}

// lookahead is how many chunk look-ups a session runs ahead of the one it
// is sending. Responses still go out in request order.
const lookahead = 4

// Server serves a chunk store over SSH to casync, desync and Store clients.
// It authenticates with public keys only and runs nothing but casync's
// protocol.
//
// Reading (`casync pull`): always compressed frames (CHUNK flag
// COMPRESSED, as casync sends them and desync expects), taken as stored
// from a chunkstore.FrameStore or compressed from GetChunk. Only chunks
// the store verified are sent; a corrupt one is answered MISSING and
// logged. Requests are answered in the order they arrive (casync would
// answer high-priority requests first; every client sends only those).
//
// Writing (`casync push`, for keys in WriteAuthorizedKeysFile): as
// casync's remote does, the server takes the index a client pushes,
// REQUESTs the chunks it names that the store lacks, and stores each
// CHUNK; once all are in it installs the index and says GOODBYE. It also
// stores CHUNKs a client sends unasked, and answers the client's GOODBYE
// with its own once every one of them is stored: that is how Store
// learns that its writes are durable (a stock `casync push` would say
// GOODBYE at once and store nothing without an index). Every chunk is
// verified against its ID before it is stored, and stored atomically by
// the store; a chunk that fails ends the session with ABORT.
//
// Querying (any key): a push session that names no index and whose
// client's HELLO pushes an index without chunks is a query. The server
// REQUESTs the chunks of that index the store lacks, takes MISSING as the
// answer to each, says GOODBYE and stores nothing (see Store.HasChunks).
// A key that may not write may run queries, and only those: its other
// push sessions end with an ABORT that says why.
type Server struct {
	store    chunkstore.Store
	wstore   chunkstore.WriteStore // nil: read-only
	indexes  *os.Root              // nil: no index pushes
	opts     ServerOptions
	config   *ssh.ServerConfig
	log      *slog.Logger
	sessions chan struct{}
	conns    chan struct{}
	ctx      context.Context
	cancel   context.CancelFunc

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	active    map[net.Conn]struct{}
	wg        sync.WaitGroup
}

// NewServer returns a server for store. It reads the host key and the
// authorized keys now, and fails if either is missing or malformed.
func NewServer(store chunkstore.Store, opts ServerOptions) (*Server, error) {
	if opts.HostKeyFile == "" {
		return nil, errors.New("sshstore: server needs a host key file (--host-key)")
	}
	if opts.AuthorizedKeysFile == "" {
		return nil, errors.New("sshstore: server needs an authorized_keys file (--authorized-keys)")
	}
	if opts.MaxSessions <= 0 {
		opts.MaxSessions = 64
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = 256
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = 30 * time.Second
	}
	if opts.StorePath != "" {
		opts.StorePath = path.Clean(opts.StorePath)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	signer, err := loadSigner(opts.HostKeyFile)
	if err != nil {
		return nil, fmt.Errorf("sshstore: host key: %w", err)
	}
	allowed, err := loadAuthorizedKeys(opts.AuthorizedKeysFile)
	if err != nil {
		return nil, err
	}
	var (
		writers map[string]bool
		wstore  chunkstore.WriteStore
		indexes *os.Root
	)
	if opts.WriteAuthorizedKeysFile != "" {
		ws, ok := store.(chunkstore.WriteStore)
		if !ok {
			return nil, fmt.Errorf("sshstore: --write-authorized-keys given, but the store %v cannot be written", store)
		}
		if writers, err = loadAuthorizedKeys(opts.WriteAuthorizedKeysFile); err != nil {
			return nil, err
		}
		wstore = ws
	}
	if opts.IndexDir != "" {
		if opts.IndexDir, err = filepath.Abs(opts.IndexDir); err != nil {
			return nil, fmt.Errorf("sshstore: index directory: %w", err)
		}
		if indexes, err = os.OpenRoot(opts.IndexDir); err != nil {
			return nil, fmt.Errorf("sshstore: index directory (--index-dir): %w", err)
		}
	}
	config := &ssh.ServerConfig{
		// Only public keys: no PasswordCallback and no
		// KeyboardInteractiveCallback, so those methods are never offered.
		PublicKeyCallback: func(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			k := string(key.Marshal())
			ext := map[string]string{"key": ssh.FingerprintSHA256(key)}
			switch {
			case writers[k]:
				ext["write"] = "yes"
			case !allowed[k]:
				return nil, fmt.Errorf("sshstore: key %s of user %q is not in %s", ssh.FingerprintSHA256(key), meta.User(), opts.AuthorizedKeysFile)
			}
			return &ssh.Permissions{Extensions: ext}, nil
		},
		ServerVersion: serverVersion,
	}
	config.AddHostKey(signer)
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		store:     store,
		wstore:    wstore,
		indexes:   indexes,
		opts:      opts,
		config:    config,
		log:       logger,
		sessions:  make(chan struct{}, opts.MaxSessions),
		conns:     make(chan struct{}, opts.MaxConns),
		ctx:       ctx,
		cancel:    cancel,
		listeners: make(map[net.Listener]struct{}),
		active:    make(map[net.Conn]struct{}),
	}, nil
}

func loadSigner(file string) (ssh.Signer, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		var missing *ssh.PassphraseMissingError
		if errors.As(err, &missing) {
			return nil, fmt.Errorf("%s is passphrase-protected; use an unencrypted key", file)
		}
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return signer, nil
}

func loadAuthorizedKeys(file string) (map[string]bool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("sshstore: authorized keys: %w", err)
	}
	allowed := make(map[string]bool)
	for n, line := range bytes.Split(b, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		key, _, _, _, err := ssh.ParseAuthorizedKey(line)
		if err != nil {
			return nil, fmt.Errorf("sshstore: authorized keys %s:%d: %w", file, n+1, err)
		}
		allowed[string(key.Marshal())] = true
	}
	if len(allowed) == 0 {
		return nil, fmt.Errorf("sshstore: authorized keys %s: no keys, so nobody could log in", file)
	}
	return allowed, nil
}

// Serve accepts connections on l until Close, and returns ErrServerClosed
// then. Errors of single connections are logged and never end Serve.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("ssh accept", "err", err, "retry_in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("sshstore: accept on %s: %w", l.Addr(), err)
		}
		backoff = 0
		select {
		case s.conns <- struct{}{}:
		default:
			s.log.Warn("ssh connection refused: too many connections", "remote", c.RemoteAddr(), "max", s.opts.MaxConns)
			c.Close()
			continue
		}
		if !s.track(c) {
			<-s.conns
			c.Close()
			return ErrServerClosed
		}
		go func() {
			defer s.wg.Done()
			defer func() { <-s.conns }()
			defer s.untrack(c)
			s.handleConn(c)
		}()
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// track registers c for Close; it reports false once the server is closed.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.active[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
	c.Close()
	s.mu.Lock()
	delete(s.active, c)
	s.mu.Unlock()
}

// Close stops every listener, drops every connection and waits for their
// goroutines to finish. Sessions in progress end at once; their clients see
// the connection close.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.active {
		c.Close()
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	if s.indexes != nil {
		s.indexes.Close()
	}
	return nil
}

func (s *Server) handleConn(c net.Conn) {
	log := s.log.With("remote", c.RemoteAddr().String())
	c.SetDeadline(time.Now().Add(s.opts.HandshakeTimeout))
	sc, chans, reqs, err := ssh.NewServerConn(c, s.config)
	if err != nil {
		log.Info("ssh handshake failed", "err", err)
		return
	}
	c.SetDeadline(time.Time{})
	defer sc.Close()
	log = log.With("user", sc.User(), "key", sc.Permissions.Extensions["key"])
	writer := sc.Permissions.Extensions["write"] == "yes"
	log.Debug("ssh connection")
	go ssh.DiscardRequests(reqs)

	var wg sync.WaitGroup
	defer wg.Wait()
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "only session channels are served")
			continue
		}
		select {
		case s.sessions <- struct{}{}:
		default:
			log.Warn("ssh session refused: too many sessions", "max", s.opts.MaxSessions)
			nc.Reject(ssh.ResourceShortage, fmt.Sprintf("too many sessions (limit %d)", s.opts.MaxSessions))
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-s.sessions }()
			s.handleSession(nc, writer, log)
		}()
	}
}

// handleSession answers the requests of one session channel: the first
// exec (or shell) runs, everything else is declined. writer says whether
// the connection's key may store chunks.
func (s *Server) handleSession(nc ssh.NewChannel, writer bool, log *slog.Logger) {
	ch, reqs, err := nc.Accept()
	if err != nil {
		log.Info("ssh session accept", "err", err)
		return
	}
	defer ch.Close()
	// reqs ends when the client closes the channel or the connection
	// drops; that cancels whatever the command is waiting for.
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	done := make(chan struct{})
	finished := done // nil once the command has finished
	started := false
	for {
		select {
		case req, ok := <-reqs:
			if !ok {
				cancel()
				if started {
					<-done
				}
				return
			}
			run := (req.Type == "exec" || req.Type == "shell") && !started
			if req.WantReply {
				req.Reply(run, nil)
			}
			if !run {
				continue
			}
			started = true
			var cmd string
			if req.Type == "exec" {
				var payload struct{ Command string }
				if err := ssh.Unmarshal(req.Payload, &payload); err != nil {
					cmd = "\x00malformed exec request"
				} else {
					cmd = payload.Command
				}
			}
			go func() {
				defer close(done)
				status := s.runCommand(ctx, ch, cmd, writer, log)
				ch.CloseWrite()
				ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{status}))
				ch.Close()
			}()
		case <-finished:
			// Drain what the client still sends until it closes too;
			// ch.Close above makes reqs end.
			finished = nil
		}
	}
}

// runCommand runs cmd on ch and returns its exit status.
func (s *Server) runCommand(ctx context.Context, ch ssh.Channel, cmd string, writer bool, log *slog.Logger) uint32 {
	fail := func(err error) uint32 {
		log.Info("ssh command refused", "command", cmd, "err", err)
		fmt.Fprintf(ch.Stderr(), "%v\n", err)
		return 1
	}
	if cmd == "" {
		return fail(fmt.Errorf("%w: no shell here; %s", errCommand, usage))
	}
	rc, err := parseCommand(cmd)
	if err != nil {
		return fail(err)
	}
	if s.opts.StorePath != "" {
		for _, p := range rc.stores {
			if path.Clean(p) != s.opts.StorePath {
				return fail(fmt.Errorf("%w: casync %s: no store at %q (this server serves %q)", errCommand, rc.verb, p, s.opts.StorePath))
			}
		}
	}
	log = log.With("store", rc.stores[0])
	var serve func() error
	var refuse error // why this client may not write
	switch {
	case rc.verb == "pull":
	case s.wstore == nil:
		refuse = fmt.Errorf("%w: casync push: this chunk store is read-only over ssh (the server has no --write-authorized-keys)", errCommand)
	case !writer:
		refuse = fmt.Errorf("%w: casync push: your key may read but not write this store (add it to the server's --write-authorized-keys file)", errCommand)
	}
	switch {
	case rc.verb == "pull":
		serve = func() error { return s.serveChunks(ctx, ch, log) }
	case refuse != nil && rc.index != "":
		return fail(refuse)
	default:
		// Without the right to write, a push session with no index may
		// still be a query (see servePush); it learns which from the
		// client's HELLO.
		var ix *indexUpload
		if rc.index != "" {
			if ix, err = s.createIndex(rc.index); err != nil {
				return fail(err)
			}
			defer ix.discard()
			log = log.With("index", ix.name)
		}
		serve = func() error { return s.servePush(ctx, ch, ix, refuse, log) }
	}
	log.Debug("casync " + rc.verb + " session")
	if err := serve(); err != nil {
		log.Info("casync "+rc.verb+" session failed", "err", err)
		fmt.Fprintf(ch.Stderr(), "casync %s: %v\n", rc.verb, err)
		return 1
	}
	return 0
}

// job is one chunk request, looked up ahead of its turn to be sent.
type job struct {
	id    casync.ChunkID
	done  chan struct{}
	frame []byte // nil: missing
	err   error  // store failure other than a missing or corrupt chunk
}

// serveChunks speaks the serving side of casync's protocol on rw until the
// client says GOODBYE or closes its end.
func (s *Server) serveChunks(ctx context.Context, rw io.ReadWriter, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	br := bufio.NewReaderSize(rw, 64<<10)
	bw := bufio.NewWriterSize(rw, 64<<10)
	abort := func(errno uint64, err error) error {
		bw.Write(appendAbort(nil, errno, err.Error()))
		bw.Flush()
		return err
	}

	// Both sides send HELLO at once, as casync does.
	bw.Write(appendHello(nil, featReadableStore))
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("send HELLO: %w", err)
	}
	hello, err := readMessage(br)
	if err != nil {
		if err == io.EOF {
			return fmt.Errorf("%w: client closed before HELLO", ErrProtocol)
		}
		return abort(errnoEBADMSG, fmt.Errorf("read HELLO: %w", err))
	}
	if hello.typ != msgHello {
		return abort(errnoEBADMSG, fmt.Errorf("%w: got %s before HELLO", ErrProtocol, typeName(hello.typ)))
	}
	if unsupported := hello.flags & featOperations &^ featPullChunks; unsupported != 0 {
		return abort(errnoEBADE, fmt.Errorf("%w: client asks for operations %#x; this server only serves chunks (%#x)", ErrProtocol, unsupported, featPullChunks))
	}
	if hello.flags&featPullChunks == 0 {
		return abort(errnoEBADE, fmt.Errorf("%w: client HELLO %#x asks for nothing this server does", ErrProtocol, hello.flags))
	}

	order := make(chan *job, lookahead)
	readErr := make(chan error, 1)
	go func() {
		readErr <- s.readRequests(ctx, br, order, log)
		close(order)
	}()

	var hdr []byte
	for j := range order {
		select {
		case <-j.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		switch {
		case j.err != nil:
			return abort(errnoEIO, fmt.Errorf("chunk %s: %w", j.id, j.err))
		case j.frame == nil:
			hdr = appendMissing(hdr[:0], j.id)
			bw.Write(hdr)
		default:
			hdr = appendChunkHeader(hdr[:0], chunkCompressed, j.id, len(j.frame))
			bw.Write(hdr)
			bw.Write(j.frame)
		}
		if len(order) == 0 {
			if err := bw.Flush(); err != nil {
				return fmt.Errorf("send: %w", err)
			}
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	err = <-readErr
	if errors.Is(err, ErrProtocol) {
		return abort(errnoEBADMSG, err)
	}
	return err
}

// readRequests reads the client's messages and queues a job per requested
// chunk on order, starting its look-up at once. It returns nil at the end
// of the client's stream or on GOODBYE.
func (s *Server) readRequests(ctx context.Context, br *bufio.Reader, order chan<- *job, log *slog.Logger) error {
	for {
		m, err := readMessage(br)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if errors.Is(err, ErrProtocol) {
				return err
			}
			return fmt.Errorf("read request: %w", err)
		}
		switch m.typ {
		case msgRequest:
			for _, id := range m.ids {
				j := &job{id: id, done: make(chan struct{})}
				select {
				case order <- j:
				case <-ctx.Done():
					return ctx.Err()
				}
				go s.lookup(ctx, j, log)
			}
		case msgGoodbye:
			return nil
		case msgAbort:
			return fmt.Errorf("client aborted (errno %d): %s", m.errno, m.reason)
		default:
			return fmt.Errorf("%w: unexpected %s from a pulling client", ErrProtocol, typeName(m.typ))
		}
	}
}

// lookup fetches and checks the frame for j. A missing or corrupt chunk
// leaves j.frame nil, to be answered with MISSING; a corrupt one is logged.
func (s *Server) lookup(ctx context.Context, j *job, log *slog.Logger) {
	defer close(j.done)
	start := time.Now()
	frame, err := s.frame(ctx, j.id)
	var sum *casync.ChecksumError
	switch {
	case err == nil:
		j.frame = frame
		log.Debug("chunk request", "id", j.id, "result", "sent", "bytes", len(frame), "took", time.Since(start))
	case errors.Is(err, chunkstore.ErrNotFound):
		log.Debug("chunk request", "id", j.id, "result", "missing", "took", time.Since(start))
	case errors.As(err, &sum) || errors.Is(err, casync.ErrFormat):
		log.Warn("chunk request: corrupt chunk in store, answered MISSING", "id", j.id, "err", err)
	default:
		j.err = err
		log.Warn("chunk request", "id", j.id, "result", "error", "err", err)
	}
}

// frame returns the compressed frame of id. Both paths return verified
// chunks only, by the chunkstore contracts: a FrameStore's GetFrame checks
// the frame, and GetChunk returns verified data or an error wrapping
// *casync.ChecksumError.
func (s *Server) frame(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	if fs, ok := s.store.(chunkstore.FrameStore); ok {
		return fs.GetFrame(ctx, id)
	}
	data, err := s.store.GetChunk(ctx, id)
	if err != nil {
		return nil, err
	}
	return casync.CompressChunk(nil, data), nil
}
