package sshstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

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
	// shortage". Default 64. Flag: --ssh-max-sessions.
	MaxSessions int
	// MaxKeySessions bounds the sessions of one key, over all its
	// connections, so that one key cannot take every session. Default
	// half of MaxSessions. Flag: --ssh-max-key-sessions.
	MaxKeySessions int
	// MaxConnSessions bounds the sessions of one connection. Default 8.
	// Flag: --ssh-max-conn-sessions.
	MaxConnSessions int
	// MaxConns bounds concurrent connections, logged in or not; more are
	// closed at once. Default 256. Flag: --ssh-max-conns.
	MaxConns int
	// MaxKeyConns bounds the logged-in connections of one key; more are
	// closed once they log in. Default half of MaxConns. Flag:
	// --ssh-max-key-conns.
	MaxKeyConns int
	// MaxUnauth bounds the connections that have not logged in yet. When
	// that many are open, a new connection closes the oldest of them from
	// the address that has the most.
	// Default 64. Flag: --ssh-max-unauth.
	MaxUnauth int
	// MaxUnauthPerSource bounds the connections from one address that
	// have not logged in yet; more are closed at once. Default 8. Flag:
	// --ssh-max-unauth-per-source.
	MaxUnauthPerSource int
	// HandshakeTimeout bounds the SSH handshake and authentication, and
	// then the time from opening a session to the client's HELLO.
	// Default 10s. Flag: --ssh-handshake-timeout.
	HandshakeTimeout time.Duration
	// IdleTimeout ends a session in which no byte moved either way for
	// that long (after its HELLO; before it, HandshakeTimeout holds).
	// Default 10m; negative: never. Flag: --ssh-idle-timeout.
	IdleTimeout time.Duration
	// KeepaliveInterval is how often the server asks a logged-in client
	// for a reply; after three unanswered in a row it drops the
	// connection. Default 30s; negative: never. Flag: --ssh-keepalive.
	KeepaliveInterval time.Duration
	// Logger receives one debug line per chunk request and the errors of
	// connections and sessions. Nil discards.
	Logger *slog.Logger
}

// Server serves a chunk store over SSH to casync, desync and Store clients.
// It authenticates with public keys only and runs nothing but casync's
// protocol.
//
// Reading (`casync pull`): always compressed frames (CHUNK flag
// COMPRESSED, as casync sends them and desync expects), taken as stored
// from a chunkstore.FrameStore or compressed from GetChunk. Only chunks
// the store verified are sent; a corrupt one is answered MISSING and
// logged. High-priority requests are answered first, each priority in
// the order it arrived, as casync's own server does; the client's GOODBYE
// or EOF ends the session at once (see serveChunks).
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
	store   chunkstore.Store
	wstore  chunkstore.WriteStore // nil: read-only
	indexes *os.Root              // nil: no index pushes
	opts    ServerOptions
	config  *ssh.ServerConfig
	log     *slog.Logger
	limits  *limits
	conns   chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc

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
	opts = opts.withDefaults()
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
		limits:    newLimits(opts),
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
		ok, evict := s.limits.admit(c)
		if !ok {
			s.log.Warn("ssh connection refused: too many connections not logged in from its address", "remote", c.RemoteAddr(), "max", s.opts.MaxUnauthPerSource)
			<-s.conns
			c.Close()
			continue
		}
		if evict != nil {
			s.log.Warn("ssh connection dropped before login: too many connections not logged in", "remote", evict.RemoteAddr(), "max", s.opts.MaxUnauth)
			evict.Close()
		}
		if !s.track(c) {
			s.limits.loggedIn(c)
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
	s.limits.loggedIn(c)
	if err != nil {
		log.Info("ssh handshake failed", "err", err)
		return
	}
	c.SetDeadline(time.Time{})
	defer sc.Close()
	key := sc.Permissions.Extensions["key"]
	log = log.With("user", sc.User(), "key", key)
	if err := s.limits.addKeyConn(key); err != nil {
		log.Warn("ssh connection refused", "err", err)
		return
	}
	defer s.limits.dropKeyConn(key)
	writer := sc.Permissions.Extensions["write"] == "yes"
	log.Debug("ssh connection")
	go ssh.DiscardRequests(reqs)
	done := make(chan struct{})
	defer close(done)
	go s.keepalive(sc, c, done, log)

	var wg sync.WaitGroup
	defer wg.Wait()
	sessions := 0 // of this connection, counted by s.limits
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "only session channels are served")
			continue
		}
		if err := s.limits.addSession(key, &sessions); err != nil {
			log.Warn("ssh session refused", "err", err)
			nc.Reject(ssh.ResourceShortage, err.Error())
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.limits.dropSession(key, &sessions)
			s.handleSession(nc, c, writer, log)
		}()
	}
}

// handleSession answers the requests of one session channel on connection
// c: the first exec (or shell) runs, everything else is declined. writer
// says whether the connection's key may store chunks.
//
// The session ends when the command is done (a pull is done when the
// client's requests end; see serveChunks), when the client says it reads
// no more (eow@openssh.com, which OpenSSH sends only to servers that say
// they are OpenSSH), or when it is idle too long (see
// serverSession.idleFor). A client that does not close an ended session
// within closeGrace loses its connection, which frees a command stuck
// writing to it.
func (s *Server) handleSession(nc ssh.NewChannel, c net.Conn, writer bool, log *slog.Logger) {
	ch, reqs, err := nc.Accept()
	if err != nil {
		log.Info("ssh session accept", "err", err)
		return
	}
	defer ch.Close()
	sess := newServerSession(ch)
	// reqs ends when the client closes the channel or the connection
	// drops; that cancels whatever the command is waiting for.
	ctx, cancel := context.WithCancelCause(s.ctx)
	defer cancel(nil)
	ended := sess.ended
	done := make(chan struct{})
	started := false
	idle := time.NewTimer(s.opts.HandshakeTimeout)
	defer idle.Stop()
	over := false              // the session has ended
	var grace <-chan time.Time // runs once it has
	for {
		select {
		case req, ok := <-reqs:
			if !ok {
				cancel(errClientGone)
				if started {
					<-done
				}
				return
			}
			sess.touch()
			if req.Type == "eow@openssh.com" {
				log.Debug("ssh session: the client reads no more; ending it")
				cancel(errClientGone)
				sess.end(0)
				continue
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
				status := s.runCommand(ctx, sess, cmd, writer, log)
				ch.CloseWrite() // here, never while the command writes
				sess.end(status)
			}()
		case <-idle.C:
			if over {
				continue
			}
			since, limit := sess.idleFor(s.opts)
			if since < limit {
				idle.Reset(limit - since)
				continue
			}
			// Nothing goes to the client's stderr: it may not be reading.
			log.Info("ssh session closed: idle", "for", since.Round(time.Millisecond), "limit", limit, "hello", sess.read.Load() >= helloSize)
			cancel(errIdle)
			sess.end(1)
		case <-ended:
			// Drain what the client still sends until it closes too;
			// ch.Close in end makes reqs end.
			ended, over = nil, true
			grace = time.After(closeGrace)
		case <-grace:
			log.Info("ssh connection dropped: the client did not close an ended session", "grace", closeGrace)
			c.Close()
			grace = nil
		}
	}
}

// runCommand runs cmd on ch and returns its exit status.
func (s *Server) runCommand(ctx context.Context, ch *serverSession, cmd string, writer bool, log *slog.Logger) uint32 {
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
	err = serve()
	if errors.Is(err, errClientGone) {
		// As casync's own server, let a client that pulls go when it
		// likes: what it did not read it did not need.
		log.Debug("casync "+rc.verb+" session ended by the client", "why", err)
		return 0
	}
	if err != nil {
		log.Info("casync "+rc.verb+" session failed", "err", err)
		fmt.Fprintf(ch.Stderr(), "casync %s: %v\n", rc.verb, err)
		return 1
	}
	return 0
}
