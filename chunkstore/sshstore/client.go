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
	"net/url"
	"os"
	"os/user"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

// ErrSession is wrapped by errors from a session that broke: the server
// closed it, aborted it, sent something malformed, or stopped answering.
// The call fails, and the session is replaced on the next one: Retry
// (which the opener puts around every store) tries again.
var ErrSession = errors.New("sshstore: session failed")

// ClientOptions configures a Store. The zero value works: it uses
// ~/.ssh/id_ed25519, id_ecdsa or id_rsa and ~/.ssh/known_hosts.
type ClientOptions struct {
	// IdentityFiles are the private keys to log in with (unencrypted).
	// Default: whichever of ~/.ssh/id_ed25519, id_ecdsa, id_rsa exist.
	IdentityFiles []string
	// KnownHostsFile holds the server's host key. Unknown, changed or
	// revoked keys are refused. Default ~/.ssh/known_hosts.
	KnownHostsFile string
	// User logs in when the location names none. Default $USER, else the
	// current user's name.
	User string
	// Sessions is how many protocol sessions, each on its own SSH
	// connection, requests are spread over. Default 2. The first one is
	// opened by New; the others when first used. Writes use as many
	// connections again, opened on the first write.
	Sessions int
	// InFlight bounds the requests outstanding on one session. Default 32.
	InFlight int
	// Timeout bounds each request from being sent to its answer. A
	// session that misses it is closed. Default 1m.
	Timeout time.Duration
	// DialTimeout bounds connecting, the SSH handshake and the protocol
	// HELLO. Default 30s.
	DialTimeout time.Duration
	// RemoteCommand is the program run on the server, as casync's
	// CASYNC_REMOTE_PATH. Default "casync".
	RemoteCommand string
	// Digest is the hash of the store's chunk IDs. Default SHA-512/256.
	Digest casync.Digest
	// TrustWrites skips the check, in StoreFrame, that a frame
	// decompresses to data that hashes to its ID before it is sent. It
	// is for a writer that has just computed the ID from the same bytes
	// itself, as mkimage does (see chunkstore.LocalOptions.TrustWrites).
	// StoreChunk always checks, and the server checks every chunk before
	// it stores it.
	TrustWrites bool
	// Logger receives session openings and failures. Nil discards.
	Logger *slog.Logger
}

// Store reads chunks from a casync-protocol server over SSH: ours, or any
// host where `casync pull - - - PATH` runs. It also writes chunks to our
// Server, with `casync push - - - PATH` (see StoreChunk). It is safe for
// concurrent use.
type Store struct {
	url    string // for messages
	addr   string // host:port
	path   string
	cmd    string
	opts   ClientOptions
	config *ssh.ClientConfig
	log    *slog.Logger
	slots  []*slot
	next   atomic.Uint64
	closed atomic.Bool
	// version is the server's SSH version, as Open found it. Ours
	// (serverVersion) answers HasChunk and HasChunks with query sessions
	// instead of sending the chunks, and confirms pushed chunks.
	version string

	// Writing: StoreChunk queues on puts; pushers take batches off it.
	pushCmd   string
	puts      chan *put
	quit      chan struct{} // closed by Close
	pushers   []*pusher
	pushStart sync.Once
	pushWG    sync.WaitGroup
}

var (
	_ chunkstore.FrameWriteStore = (*Store)(nil)
	_ chunkstore.FrameStore      = (*Store)(nil)
	_ chunkstore.BatchHaser      = (*Store)(nil)
)

type slot struct {
	mu   sync.Mutex
	sess *session
}

// Open returns a store for loc, whose scheme must be "ssh". It loads the
// identities and known_hosts and opens the first session, so that a
// refused key, an unknown host or a server that does not speak the
// protocol fails here.
func Open(ctx context.Context, loc chunkstore.Location, opts ClientOptions) (*Store, error) {
	if loc.Scheme != "ssh" {
		return nil, fmt.Errorf("%w %q: not an ssh:// location", chunkstore.ErrBadURL, loc)
	}
	if loc.Host == "" || loc.Path == "" {
		return nil, fmt.Errorf("%w %q: want ssh://[user@]host[:port]/path", chunkstore.ErrBadURL, loc)
	}
	usr, p := loc.User, loc.Path
	port := loc.Port
	if port == "" {
		port = "22"
	}
	addr := net.JoinHostPort(loc.Host, port)
	var err error
	if usr == "" {
		usr = opts.User
	}
	if usr == "" {
		usr = os.Getenv("USER")
	}
	if usr == "" {
		if u, err := user.Current(); err == nil {
			usr = u.Username
		}
	}
	if opts.Sessions <= 0 {
		opts.Sessions = 2
	}
	if opts.InFlight <= 0 {
		opts.InFlight = 32
	}
	if opts.Timeout <= 0 {
		opts.Timeout = time.Minute
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 30 * time.Second
	}
	if opts.RemoteCommand == "" {
		opts.RemoteCommand = "casync"
	}
	if opts.KnownHostsFile == "" {
		if opts.KnownHostsFile, err = defaultKnownHosts(); err != nil {
			return nil, err
		}
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	signers, files, err := loadIdentities(opts.IdentityFiles)
	if err != nil {
		return nil, err
	}
	opts.IdentityFiles = files
	check, algos, err := hostKeyCheck(opts.KnownHostsFile, addr)
	if err != nil {
		return nil, err
	}
	s := &Store{
		url:  (&url.URL{Scheme: "ssh", User: url.User(usr), Host: addr, Path: p}).String(),
		addr: addr,
		path: p,
		cmd:  opts.RemoteCommand + " pull - - - " + shellQuote(p),
		opts: opts,
		config: &ssh.ClientConfig{
			User:              usr,
			Auth:              []ssh.AuthMethod{ssh.PublicKeys(signers...)},
			HostKeyCallback:   check,
			HostKeyAlgorithms: algos,
		},
		log:   logger,
		slots: make([]*slot, opts.Sessions),

		pushCmd: opts.RemoteCommand + " push - - - " + shellQuote(p),
		puts:    make(chan *put),
		quit:    make(chan struct{}),
		pushers: make([]*pusher, opts.Sessions),
	}
	for i := range s.pushers {
		s.pushers[i] = &pusher{s: s}
	}
	for i := range s.slots {
		s.slots[i] = &slot{}
	}
	sess, err := s.open(ctx)
	if err != nil {
		return nil, err
	}
	s.slots[0].sess = sess
	s.version = string(sess.client.ServerVersion())
	return s, nil
}

// ours reports whether the server is a bootfs chunk server.
func (s *Store) ours() bool { return s.version == serverVersion }

// String returns the store's location.
func (s *Store) String() string { return s.url }

// GetChunk requests id and returns it decompressed and verified. A chunk
// the server does not have gives an error wrapping chunkstore.ErrNotFound;
// one whose bytes do not hash to id an error wrapping *casync.ChecksumError.
func (s *Store) GetChunk(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	m, err := s.fetch(ctx, id)
	if err != nil {
		return nil, err
	}
	if m.typ == msgMissing {
		return nil, fmt.Errorf("fetch chunk %s from %s: %w", id, s.url, chunkstore.ErrNotFound)
	}
	data, err := decodeAnswer(s.opts.Digest, id, m)
	if err != nil {
		var ce *casync.ChecksumError
		if !errors.As(err, &ce) {
			// Undecodable is as corrupt as wrong: not to be retried.
			err = fmt.Errorf("%w (%w)", &casync.ChecksumError{Want: id, Got: s.opts.Digest.Sum(m.data)}, err)
		}
		return nil, fmt.Errorf("fetch chunk %s from %s: %w", id, s.url, err)
	}
	return data, nil
}

// GetFrame requests id and returns its chunk frame, verified: as the
// server sent it when it came compressed (what ours and casync send), so
// that a Cache stores it without recompressing it; compressed here
// otherwise. Errors are as for GetChunk.
func (s *Store) GetFrame(ctx context.Context, id casync.ChunkID) ([]byte, error) {
	m, err := s.fetch(ctx, id)
	if err != nil {
		return nil, err
	}
	if m.typ == msgMissing {
		return nil, fmt.Errorf("fetch chunk %s from %s: %w", id, s.url, chunkstore.ErrNotFound)
	}
	if m.flags&chunkCompressed == 0 {
		data, err := decodeAnswer(s.opts.Digest, id, m)
		if err != nil {
			return nil, fmt.Errorf("fetch chunk %s from %s: %w", id, s.url, err)
		}
		return casync.CompressChunk(nil, data), nil
	}
	if err := chunkstore.VerifyFrame(s.opts.Digest, id, m.data); err != nil {
		return nil, fmt.Errorf("fetch chunk %s from %s: %w", id, s.url, err)
	}
	// Callers that asked for the same chunk at once share m.
	return bytes.Clone(m.data), nil
}

// decodeAnswer returns the verified chunk in a CHUNK message for id,
// decompressing it if the COMPRESSED flag says so.
func decodeAnswer(d casync.Digest, id casync.ChunkID, m message) ([]byte, error) {
	if m.flags&chunkCompressed != 0 {
		return casync.DecodeChunk(d, id, m.data)
	}
	if len(m.data) > casync.MaxChunkSize {
		return nil, fmt.Errorf("%w: chunk %s of %d bytes exceeds %d", casync.ErrFormat, id, len(m.data), casync.MaxChunkSize)
	}
	if err := casync.VerifyChunk(d, id, m.data); err != nil {
		return nil, err
	}
	// Callers that asked for the same chunk at once share m.
	return append([]byte(nil), m.data...), nil
}

// HasChunk reports whether the server has id. Our Server is asked with a
// query session (see HasChunks), which moves no chunk data. Any other
// server is sent a request for the whole chunk, which is discarded: stock
// casync has no way to ask about a chunk without storing an index, so
// there a missing chunk costs one small MISSING answer and a present one
// as much network as GetChunk (but no decompression).
func (s *Store) HasChunk(ctx context.Context, id casync.ChunkID) (bool, error) {
	if s.ours() {
		var has [1]bool
		err := s.query(ctx, []casync.ChunkID{id}, has[:])
		return has[0], err
	}
	return s.hasByFetch(ctx, id)
}

// hasByFetch answers HasChunk by requesting the chunk.
func (s *Store) hasByFetch(ctx context.Context, id casync.ChunkID) (bool, error) {
	m, err := s.fetch(ctx, id)
	if err != nil {
		return false, err
	}
	return m.typ == msgChunk, nil
}

// fetch sends one request and returns the CHUNK or MISSING answer. A
// session that breaks or misses Timeout is closed, and the next request
// on its slot opens a new one.
func (s *Store) fetch(ctx context.Context, id casync.ChunkID) (message, error) {
	fail := func(err error) (message, error) {
		return message{}, fmt.Errorf("fetch chunk %s from %s: %w", id, s.url, err)
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	sl := s.slots[s.next.Add(1)%uint64(len(s.slots))]
	sess, err := s.session(ctx, sl)
	if err != nil {
		return message{}, fmt.Errorf("fetch chunk %s: %w", id, err)
	}
	rctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	m, err := sess.request(rctx, id)
	timedOut := rctx.Err() != nil && ctx.Err() == nil
	cancel()
	switch {
	case err == nil:
		return m, nil
	case ctx.Err() != nil:
		err = ctx.Err()
	case timedOut:
		sess.fail(fmt.Errorf("request for chunk %s got no answer within %v", id, s.opts.Timeout))
		err = fmt.Errorf("%w: no answer within %v: %w", ErrSession, s.opts.Timeout, context.DeadlineExceeded)
	case errors.Is(err, ErrSession):
		s.log.Info("ssh chunk store session broke; the next request opens a new one", "store", s.url, "err", err)
	}
	return fail(err)
}

// session returns the open session of sl, opening one if needed.
func (s *Store) session(ctx context.Context, sl *slot) (*session, error) {
	if s.closed.Load() {
		return nil, fmt.Errorf("sshstore: %s: %w", s.url, net.ErrClosed)
	}
	sl.mu.Lock()
	defer sl.mu.Unlock()
	if sl.sess != nil && !sl.sess.broken() {
		return sl.sess, nil
	}
	sess, err := s.open(ctx)
	if err != nil {
		return nil, err
	}
	if s.closed.Load() {
		sess.close()
		return nil, fmt.Errorf("sshstore: %s: %w", s.url, net.ErrClosed)
	}
	sl.sess = sess
	return sess, nil
}

// Close ends every session with GOODBYE and closes its connection.
// Writes still waiting for the server fail.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	close(s.quit)
	for _, pu := range s.pushers {
		pu.drop(nil)
	}
	s.pushWG.Wait()
	for _, sl := range s.slots {
		sl.mu.Lock()
		if sl.sess != nil {
			sl.sess.close()
			sl.sess = nil
		}
		sl.mu.Unlock()
	}
	return nil
}

// dial connects to the server and logs in. The connection's deadline
// stays set to DialTimeout from now, and ctx closes it, until the
// returned stop is called: callers finish their own set-up first.
func (s *Store) dial(ctx context.Context) (client *ssh.Client, stop func(), err error) {
	deadline := time.Now().Add(s.opts.DialTimeout)
	d := net.Dialer{Deadline: deadline}
	c, err := d.DialContext(ctx, "tcp", s.addr)
	if err != nil {
		return nil, nil, err
	}
	// Until the caller is set up, the deadline and ctx bound every step.
	c.SetDeadline(deadline)
	unwatch := context.AfterFunc(ctx, func() { c.Close() })
	conn, chans, reqs, err := ssh.NewClientConn(c, s.addr, s.config)
	if err != nil {
		unwatch()
		c.Close()
		if !errors.Is(err, ErrHostKey) && strings.Contains(err.Error(), "unable to authenticate") {
			err = fmt.Errorf("%w: %s refused user %q with keys %v (is the public key in the server's authorized_keys?): %v", ErrAuth, s.addr, s.config.User, s.opts.IdentityFiles, err)
		}
		return nil, nil, err
	}
	stop = func() {
		unwatch()
		c.SetDeadline(time.Time{})
	}
	return ssh.NewClient(conn, chans, reqs), stop, nil
}

// open dials the server, logs in, runs the pull command and exchanges
// HELLO, all within DialTimeout.
func (s *Store) open(ctx context.Context) (*session, error) {
	fail := func(err error) (*session, error) {
		err = fmt.Errorf("sshstore: connect to %s: %w", s.url, err)
		var exit *ssh.ExitError
		if errors.Is(err, ErrAuth) || errors.Is(err, ErrHostKey) || errors.As(err, &exit) {
			// A refused key, host key or command: the next attempt
			// would be refused alike.
			err = chunkstore.Permanent(err)
		}
		return nil, err
	}
	client, stop, err := s.dial(ctx)
	if err != nil {
		return fail(err)
	}
	defer stop()
	sess, err := newSession(client, s.cmd, s.opts.InFlight)
	if err != nil {
		client.Close()
		return fail(err)
	}
	if err := sess.hello(); err != nil {
		sess.close()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fail(err)
	}
	s.log.Debug("ssh chunk store session open", "store", s.url)
	go sess.readLoop()
	go sess.writeLoop()
	return sess, nil
}

// session is one `casync pull` exec on its own SSH connection. Requests
// are pipelined: callers queue IDs for the writer and wait for the reader
// to hand them the answer with their ID.
type session struct {
	client *ssh.Client
	ssh    *ssh.Session
	stdin  io.WriteCloser
	stdout *bufio.Reader
	stderr *tail
	queue  chan casync.ChunkID // to writeLoop
	slots  chan struct{}       // bounds outstanding requests

	mu      sync.Mutex
	pending map[casync.ChunkID]*call
	err     error
	dead    chan struct{} // closed by fail
}

// call is one outstanding request, shared by everyone asking for its ID.
type call struct {
	done chan struct{}
	m    message
	err  error
}

func newSession(client *ssh.Client, cmd string, inFlight int) (*session, error) {
	ss, err := client.NewSession()
	if err != nil {
		return nil, fmt.Errorf("open session: %w", err)
	}
	stdin, stdout, stderr, err := startCommand(ss, cmd, 256<<10)
	if err != nil {
		ss.Close()
		return nil, err
	}
	return &session{
		client:  client,
		ssh:     ss,
		stdin:   stdin,
		stdout:  stdout,
		stderr:  stderr,
		queue:   make(chan casync.ChunkID, inFlight),
		slots:   make(chan struct{}, inFlight),
		pending: make(map[casync.ChunkID]*call),
		dead:    make(chan struct{}),
	}, nil
}

// startCommand runs cmd on ss and returns its stdin, its stdout read
// through a buffer of rsize bytes, and the tail of its stderr, which
// explains a server's refusal.
func startCommand(ss *ssh.Session, cmd string, rsize int) (io.WriteCloser, *bufio.Reader, *tail, error) {
	stdin, err := ss.StdinPipe()
	if err != nil {
		return nil, nil, nil, err
	}
	stdout, err := ss.StdoutPipe()
	if err != nil {
		return nil, nil, nil, err
	}
	stderr := &tail{}
	ss.Stderr = stderr
	if err := ss.Start(cmd); err != nil {
		return nil, nil, nil, fmt.Errorf("run %q: %w", cmd, err)
	}
	return stdin, bufio.NewReaderSize(stdout, rsize), stderr, nil
}

// hello sends our HELLO and checks the server's.
func (s *session) hello() error {
	if _, err := s.stdin.Write(appendHello(nil, featPullChunks)); err != nil {
		return fmt.Errorf("send HELLO: %w", err)
	}
	m, err := readMessage(s.stdout)
	if err != nil {
		return fmt.Errorf("read HELLO: %w", s.ended(err))
	}
	switch {
	case m.typ != msgHello:
		return fmt.Errorf("%w: server sent %s before HELLO", ErrProtocol, typeName(m.typ))
	case m.flags&featReadableStore == 0:
		return fmt.Errorf("%w: server HELLO %#x does not offer a readable store", ErrProtocol, m.flags)
	}
	return nil
}

// ended describes the end of the server's output: for EOF, the command's
// exit status and the tail of its stderr, which say why.
func (s *session) ended(err error) error {
	if err != io.EOF {
		return err
	}
	wait := make(chan error, 1)
	go func() { wait <- s.ssh.Wait() }()
	select {
	case werr := <-wait:
		msg := strings.TrimSpace(s.stderr.String())
		if werr == nil {
			werr = errors.New("exit status 0")
		}
		if msg != "" {
			return fmt.Errorf("server ended the session: %w: %s", werr, msg)
		}
		return fmt.Errorf("server ended the session: %w", werr)
	case <-time.After(2 * time.Second):
		return errors.New("server closed its output")
	}
}

// request sends id (unless a request for it is already out) and waits for
// the answer or ctx.
func (s *session) request(ctx context.Context, id casync.ChunkID) (message, error) {
	s.mu.Lock()
	c, joined := s.pending[id]
	err := s.err
	s.mu.Unlock()
	if err != nil {
		return message{}, err
	}
	if !joined {
		select {
		case s.slots <- struct{}{}:
		case <-s.dead:
			return message{}, s.deadErr()
		case <-ctx.Done():
			return message{}, ctx.Err()
		}
		s.mu.Lock()
		c, joined = s.pending[id]
		switch {
		case s.err != nil:
			s.mu.Unlock()
			return message{}, s.err
		case joined:
			<-s.slots
		default:
			c = &call{done: make(chan struct{})}
			s.pending[id] = c
		}
		s.mu.Unlock()
		if !joined {
			select {
			case s.queue <- id:
			case <-s.dead:
			}
		}
	}
	select {
	case <-c.done:
		return c.m, c.err
	case <-ctx.Done():
		return message{}, ctx.Err()
	}
}

func (s *session) deadErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *session) broken() bool {
	select {
	case <-s.dead:
		return true
	default:
		return false
	}
}

// writeLoop sends queued IDs, batching those that queued up meanwhile
// into one REQUEST as casync does.
func (s *session) writeLoop() {
	var ids []casync.ChunkID
	var buf []byte
	for {
		select {
		case id := <-s.queue:
			ids = append(ids[:0], id)
		case <-s.dead:
			return
		}
	batch:
		for len(ids) < maxRequestID {
			select {
			case id := <-s.queue:
				ids = append(ids, id)
			default:
				break batch
			}
		}
		buf = appendRequest(buf[:0], requestHighPriority, ids)
		if _, err := s.stdin.Write(buf); err != nil {
			s.fail(fmt.Errorf("send REQUEST: %w", err))
			return
		}
	}
}

// readLoop hands each answer to the call waiting for its ID.
func (s *session) readLoop() {
	for {
		m, err := readMessage(s.stdout)
		if err != nil {
			s.fail(s.ended(err))
			return
		}
		switch m.typ {
		case msgChunk, msgMissing:
			s.mu.Lock()
			c := s.pending[m.id]
			delete(s.pending, m.id)
			s.mu.Unlock()
			if c == nil {
				s.fail(fmt.Errorf("%w: %s for chunk %s, which was not requested", ErrProtocol, typeName(m.typ), m.id))
				return
			}
			c.m = m
			close(c.done)
			<-s.slots
		case msgAbort:
			s.fail(fmt.Errorf("server aborted (errno %d): %s", m.errno, m.reason))
			return
		case msgGoodbye:
			s.fail(errors.New("server said GOODBYE"))
			return
		default:
			s.fail(fmt.Errorf("%w: unexpected %s from a chunk server", ErrProtocol, typeName(m.typ)))
			return
		}
	}
}

// fail marks the session broken with err, fails every pending call and
// closes the connection. Only the first call has an effect.
func (s *session) fail(err error) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	s.err = fmt.Errorf("%w: %w", ErrSession, err)
	pending := s.pending
	s.pending = nil
	close(s.dead)
	s.mu.Unlock()
	for _, c := range pending {
		c.err = s.err
		close(c.done)
	}
	s.client.Close()
}

// close says GOODBYE, if the session still works, and closes it.
func (s *session) close() {
	if !s.broken() {
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.stdin.Write(appendGoodbye(nil))
			s.stdin.Close()
		}()
		select {
		case <-done:
		case <-time.After(time.Second):
		}
	}
	s.fail(net.ErrClosed)
}

// tail keeps the last bytes written to it: the server's stderr.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

const tailSize = 4 << 10

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > tailSize {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-tailSize:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
