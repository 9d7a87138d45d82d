package sshstore

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// Defaults of the ServerOptions limits, for flags to show.
const (
	DefaultMaxSessions        = 64
	DefaultMaxConnSessions    = 8
	DefaultMaxConns           = 256
	DefaultMaxUnauth          = 64
	DefaultMaxUnauthPerSource = 8
	DefaultHandshakeTimeout   = 10 * time.Second
	DefaultIdleTimeout        = 10 * time.Minute
	DefaultKeepaliveInterval  = 30 * time.Second
)

const (
	// keepaliveMisses is how many keepalives in a row a peer may leave
	// unanswered before its connection is dropped (OpenSSH's
	// ClientAliveCountMax).
	keepaliveMisses = 3
	// closeGrace is how long a client has to close a session the server
	// has ended before the server drops its whole connection.
	closeGrace = 10 * time.Second
)

var (
	// errClientGone ends a session whose client said it reads no more
	// (eow@openssh.com), said GOODBYE, or closed its end or the channel.
	errClientGone = errors.New("the client ended the session")
	// errIdle ends a session in which nothing moved for too long.
	errIdle = errors.New("idle")
)

// withDefaults fills the zero limits of o.
func (o ServerOptions) withDefaults() ServerOptions {
	if o.MaxSessions <= 0 {
		o.MaxSessions = DefaultMaxSessions
	}
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
	for _, l := range []struct {
		v *int
		d int
	}{
		{&o.MaxKeySessions, max(1, o.MaxSessions/2)},
		{&o.MaxConnSessions, DefaultMaxConnSessions},
		{&o.MaxKeyConns, max(1, o.MaxConns/2)},
		{&o.MaxUnauth, DefaultMaxUnauth},
		{&o.MaxUnauthPerSource, DefaultMaxUnauthPerSource},
	} {
		if *l.v <= 0 {
			*l.v = l.d
		}
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	// Negative: never.
	if o.IdleTimeout == 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.KeepaliveInterval == 0 {
		o.KeepaliveInterval = DefaultKeepaliveInterval
	}
	return o
}

// limits counts what connections and keys hold, under one lock.
type limits struct {
	opts ServerOptions

	mu          sync.Mutex
	sessions    int
	keySessions map[string]int
	keyConns    map[string]int
	unauth      map[net.Conn]unauthConn
	unauthBySrc map[string]int
}

// unauthConn is a connection that has not logged in yet.
type unauthConn struct {
	source string
	since  time.Time
}

func newLimits(opts ServerOptions) *limits {
	return &limits{
		opts:        opts,
		keySessions: make(map[string]int),
		keyConns:    make(map[string]int),
		unauth:      make(map[net.Conn]unauthConn),
		unauthBySrc: make(map[string]int),
	}
}

// source is the address a connection comes from, without its port.
func source(c net.Conn) string {
	addr := c.RemoteAddr().String()
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// admit counts c as a connection that has yet to log in. It refuses c if
// its source already has MaxUnauthPerSource of those. If MaxUnauth are
// open, it admits c and returns one of them for the caller to close: the
// oldest of the source that has the most. A flood of idle connections
// then evicts itself, from whatever addresses it comes, and a client
// that has one connection logging in is the last to lose it.
func (l *limits) admit(c net.Conn) (ok bool, evict net.Conn) {
	src := source(c)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.unauthBySrc[src] >= l.opts.MaxUnauthPerSource {
		return false, nil
	}
	if len(l.unauth) >= l.opts.MaxUnauth {
		var worst unauthConn
		for uc, u := range l.unauth {
			n, w := l.unauthBySrc[u.source], l.unauthBySrc[worst.source]
			if evict == nil || n > w || n == w && u.since.Before(worst.since) {
				evict, worst = uc, u
			}
		}
		l.forget(evict)
	}
	l.unauth[c] = unauthConn{source: src, since: time.Now()}
	l.unauthBySrc[src]++
	return true, evict
}

// loggedIn stops counting c as unauthenticated, once its handshake ended
// either way.
func (l *limits) loggedIn(c net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.forget(c)
}

// forget drops c from the unauthenticated ones; l.mu must be held.
func (l *limits) forget(c net.Conn) {
	u, ok := l.unauth[c]
	if !ok {
		return
	}
	delete(l.unauth, c)
	if l.unauthBySrc[u.source]--; l.unauthBySrc[u.source] == 0 {
		delete(l.unauthBySrc, u.source)
	}
}

// addKeyConn counts a logged-in connection of key; it returns an error
// naming the limit if key has MaxKeyConns already.
func (l *limits) addKeyConn(key string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.keyConns[key] >= l.opts.MaxKeyConns {
		return fmt.Errorf("key %s has %d connections open (limit %d)", key, l.keyConns[key], l.opts.MaxKeyConns)
	}
	l.keyConns[key]++
	return nil
}

func (l *limits) dropKeyConn(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.keyConns[key]--; l.keyConns[key] == 0 {
		delete(l.keyConns, key)
	}
}

// addSession counts a session of key on a connection that holds *conn
// sessions; it returns an error naming the limit it would pass.
func (l *limits) addSession(key string, conn *int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case *conn >= l.opts.MaxConnSessions:
		return fmt.Errorf("too many sessions on this connection (limit %d)", l.opts.MaxConnSessions)
	case l.keySessions[key] >= l.opts.MaxKeySessions:
		return fmt.Errorf("too many sessions for key %s (limit %d)", key, l.opts.MaxKeySessions)
	case l.sessions >= l.opts.MaxSessions:
		return fmt.Errorf("too many sessions (limit %d)", l.opts.MaxSessions)
	}
	*conn++
	l.keySessions[key]++
	l.sessions++
	return nil
}

func (l *limits) dropSession(key string, conn *int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	*conn--
	l.sessions--
	if l.keySessions[key]--; l.keySessions[key] == 0 {
		delete(l.keySessions, key)
	}
}

// serverSession is a session channel that notes when data last moved
// either way and how much the client sent, and that can be ended once
// from any goroutine.
type serverSession struct {
	ssh.Channel
	last    atomic.Int64 // unix nanoseconds
	read    atomic.Int64
	endOnce sync.Once
	ended   chan struct{} // closed by end
}

func newServerSession(ch ssh.Channel) *serverSession {
	w := &serverSession{Channel: ch, ended: make(chan struct{})}
	w.touch()
	return w
}

func (w *serverSession) touch() { w.last.Store(time.Now().UnixNano()) }

func (w *serverSession) Read(p []byte) (int, error) {
	n, err := w.Channel.Read(p)
	if n > 0 {
		w.read.Add(int64(n))
		w.touch()
	}
	return n, err
}

func (w *serverSession) Write(p []byte) (int, error) {
	n, err := w.Channel.Write(p)
	if n > 0 {
		w.touch()
	}
	return n, err
}

// end sends the exit status and closes the channel, the first time only.
// A write blocked on the client's window returns once the client closes
// the channel too. It never sends EOF: that must not race a write (see
// handleSession).
func (w *serverSession) end(status uint32) {
	w.endOnce.Do(func() {
		w.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{status}))
		w.Close()
		close(w.ended)
	})
}

// idleFor returns how long nothing has moved on w, and how long it may
// stay so: HandshakeTimeout until the client has sent its HELLO (its first
// message, so the first helloSize bytes), then IdleTimeout (never, if
// negative).
func (w *serverSession) idleFor(opts ServerOptions) (idle, limit time.Duration) {
	idle = time.Since(time.Unix(0, w.last.Load()))
	switch {
	case w.read.Load() < helloSize:
		return idle, opts.HandshakeTimeout
	case opts.IdleTimeout < 0:
		return idle, time.Duration(1<<63 - 1)
	}
	return idle, opts.IdleTimeout
}

// keepalive asks the client for a reply every KeepaliveInterval until done
// is closed, and closes c when keepaliveMisses in a row go unanswered: a
// peer that vanished without closing its TCP connection then frees its
// sessions.
func (s *Server) keepalive(sc *ssh.ServerConn, c net.Conn, done <-chan struct{}, log *slog.Logger) {
	if s.opts.KeepaliveInterval < 0 {
		return
	}
	t := time.NewTicker(s.opts.KeepaliveInterval)
	defer t.Stop()
	replies := make(chan struct{}, 1)
	waiting, missed := false, 0
	for {
		select {
		case <-done:
			return
		case <-replies:
			waiting, missed = false, 0
		case <-t.C:
			if waiting {
				if missed++; missed >= keepaliveMisses {
					log.Info("ssh connection dropped: no answer to keepalives", "interval", s.opts.KeepaliveInterval, "missed", missed)
					c.Close()
					return
				}
				continue
			}
			waiting = true
			go func() {
				// OpenSSH answers this request type with a failure,
				// which is an answer all the same.
				if _, _, err := sc.SendRequest("keepalive@openssh.com", true, nil); err == nil {
					replies <- struct{}{}
				}
			}()
		}
	}
}
