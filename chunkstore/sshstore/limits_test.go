package sshstore

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
)

// secondKey writes another client key, authorized through a file of its
// own (as a writer, which may also read), for opts.
func secondKey(t *testing.T, opts *ServerOptions) string {
	t.Helper()
	dir := t.TempDir()
	key, pub := writeKey(t, dir, "second")
	opts.WriteAuthorizedKeysFile = filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(opts.WriteAuthorizedKeysFile, ssh.MarshalAuthorizedKey(pub), 0o600); err != nil {
		t.Fatal(err)
	}
	return key
}

// dialKey logs in to the fixture's server with the key in file, from the
// loopback address local ("" for any).
func dialKey(f *fixture, file, local string) (*ssh.Client, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	c, err := d.Dial("tcp", f.addr)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	sc, chans, reqs, err := ssh.NewClientConn(c, f.addr, &ssh.ClientConfig{
		User:            "tester",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(f.hostPub),
	})
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return ssh.NewClient(sc, chans, reqs), nil
}

// heldSession is a pull session that said HELLO and then waits.
type heldSession struct {
	sess  *ssh.Session
	stdin io.WriteCloser
	out   *bufio.Reader
}

// holdSession opens a pull session on c and says HELLO; it returns the
// error of a session the server refuses.
func holdSession(c *ssh.Client) (*heldSession, error) {
	sess, err := c.NewSession()
	if err != nil {
		return nil, err
	}
	stdin, _ := sess.StdinPipe()
	stdout, _ := sess.StdoutPipe()
	if err := sess.Start("casync pull - - - /store"); err != nil {
		sess.Close()
		return nil, err
	}
	if _, err := stdin.Write(appendHello(nil, featPullChunks)); err != nil {
		sess.Close()
		return nil, err
	}
	h := &heldSession{sess: sess, stdin: stdin, out: bufio.NewReader(stdout)}
	if m, err := readMessage(h.out); err != nil || m.typ != msgHello {
		sess.Close()
		return nil, fmt.Errorf("first message %s, %v; want HELLO", typeName(m.typ), err)
	}
	return h, nil
}

// pull asks the held session for id and checks the answer against want
// (nil: MISSING).
func (h *heldSession) pull(id casync.ChunkID, want []byte) error {
	if _, err := h.stdin.Write(appendRequest(nil, requestHighPriority, []casync.ChunkID{id})); err != nil {
		return err
	}
	m, err := readMessage(h.out)
	switch {
	case err != nil:
		return err
	case want == nil && m.typ == msgMissing && m.id == id:
		return nil
	case want != nil && m.typ == msgChunk && m.id == id:
		data, err := casync.DecodeChunk(casync.SHA512_256, id, m.data)
		if err == nil && string(data) != string(want) {
			err = errors.New("wrong data")
		}
		return err
	}
	return fmt.Errorf("answer %s for %s", typeName(m.typ), m.id)
}

// TestSSHPerKeySessionLimit is issue 16 item 5: one read-only key opens
// every session it can, on as many connections as it likes, and holds
// them; a second key still gets a session and reads. No connection gets
// more than its own share either.
func TestSSHPerKeySessionLimit(t *testing.T) {
	opts := ServerOptions{}
	second := secondKey(t, &opts)
	f := startServer(t, chunkstore.NewMemory(chunkstore.MemoryOptions{}), opts)

	held := 0
	for conns := 0; conns < 100; conns++ {
		c, err := dialKey(f, f.clientKey, "")
		if err != nil {
			t.Fatalf("connection %d of the first key: %v", conns, err)
		}
		defer c.Close()
		n := 0
		for ; n < 100; n++ {
			if _, err := holdSession(c); err != nil {
				break
			}
		}
		if n > DefaultMaxConnSessions {
			t.Errorf("connection %d holds %d sessions, want at most %d", conns, n, DefaultMaxConnSessions)
		}
		held += n
		if n == 0 {
			break
		}
	}
	if want := DefaultMaxSessions / 2; held != want {
		t.Errorf("the first key holds %d sessions, want %d (half of %d)", held, want, DefaultMaxSessions)
	}

	c, err := dialKey(f, second, "")
	if err != nil {
		t.Fatalf("second key cannot log in while the first holds %d sessions: %v", held, err)
	}
	defer c.Close()
	h, err := holdSession(c)
	if err != nil {
		t.Fatalf("second key gets no session while the first holds %d: %v", held, err)
	}
	if err := h.pull(idOf(1), nil); err != nil {
		t.Errorf("second key's pull: %v", err)
	}
}

// TestSSHSessionIdleTimeout: a session that never says HELLO ends after
// HandshakeTimeout, and one that says HELLO and then nothing ends after
// IdleTimeout.
func TestSSHSessionIdleTimeout(t *testing.T) {
	f := startServer(t, chunkstore.NewMemory(chunkstore.MemoryOptions{}), ServerOptions{
		HandshakeTimeout: 300 * time.Millisecond,
		IdleTimeout:      time.Second,
	})
	c := rawClient(t, f)

	silent, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	silent.StdinPipe() // open, never written
	if err := silent.Start("casync pull - - - /store"); err != nil {
		t.Fatal(err)
	}
	idle, err := holdSession(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []struct {
		name string
		sess *ssh.Session
		max  time.Duration
	}{{"no HELLO", silent, 3 * time.Second}, {"idle after HELLO", idle.sess, 4 * time.Second}} {
		done := make(chan error, 1)
		go func() { done <- s.sess.Wait() }()
		select {
		case <-done:
		case <-time.After(s.max):
			t.Errorf("session with %s still open after %v", s.name, s.max)
			s.sess.Close()
		}
	}
	if !hasLine(f.logs.String(), "ssh session closed: idle", "hello=false") || !hasLine(f.logs.String(), "ssh session closed: idle", "hello=true") {
		t.Errorf("server log does not say why it closed the sessions:\n%s", f.logs.String())
	}
	// The connection still serves.
	h, err := holdSession(c)
	if err != nil {
		t.Fatalf("new session after the idle ones: %v", err)
	}
	if err := h.pull(idOf(2), nil); err != nil {
		t.Error(err)
	}
}

// freezer forwards TCP connections to a server until frozen; then it
// forwards nothing, as a peer that vanished without closing.
type freezer struct {
	l        net.Listener
	frozen   atomic.Bool
	upClosed chan struct{} // closed when the server closed its end
}

func newFreezer(t *testing.T, target string) *freezer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fz := &freezer{l: l, upClosed: make(chan struct{})}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", target)
		if err != nil {
			c.Close()
			return
		}
		t.Cleanup(func() { c.Close(); up.Close() })
		go fz.copy(up, c, nil)
		go fz.copy(c, up, fz.upClosed)
	}()
	return fz
}

// copy forwards src to dst while not frozen, and closes closed, if not
// nil, when src ends.
func (fz *freezer) copy(dst, src net.Conn, closed chan struct{}) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			if closed != nil {
				close(closed)
			}
			return
		}
		if !fz.frozen.Load() {
			dst.Write(buf[:n])
		}
	}
}

// TestSSHKeepaliveDropsDeadPeer: a client whose network goes silent
// after it took the only session loses its connection to the keepalive,
// and the session goes to the next client.
func TestSSHKeepaliveDropsDeadPeer(t *testing.T) {
	f := startServer(t, chunkstore.NewMemory(chunkstore.MemoryOptions{}), ServerOptions{
		MaxSessions:       1,
		KeepaliveInterval: 100 * time.Millisecond,
	})
	fz := newFreezer(t, f.addr)
	via := *f
	via.addr = fz.l.Addr().String()
	c, err := dialKey(&via, f.clientKey, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := holdSession(c); err != nil {
		t.Fatal(err)
	}
	fz.frozen.Store(true)
	select {
	case <-fz.upClosed:
	case <-time.After(5 * time.Second):
		t.Fatal("server still holds the connection of a silent peer after 5s")
	}
	next, err := dialKey(f, f.clientKey, "")
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	var h *heldSession
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if h, err = holdSession(next); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("session after the dead peer was dropped: %v", err)
	}
	if err := h.pull(idOf(3), nil); err != nil {
		t.Error(err)
	}
	if !hasLine(f.logs.String(), "no answer to keepalives") {
		t.Errorf("server log does not say why it dropped the connection:\n%s", f.logs.String())
	}
}

// idleConns opens n TCP connections to addr that never say anything,
// from the loopback addresses 127.0.0.2 on, perSource from each, and
// closes them at the end of the test.
func idleConns(t *testing.T, addr string, n, perSource int) {
	t.Helper()
	for i := range n {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i/perSource))}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
	}
}

// TestSSHUnauthConnLimit is issue 16 item 6: 256 TCP connections that
// never log in, from one address or spread over 32, keep no real client
// out.
func TestSSHUnauthConnLimit(t *testing.T) {
	for _, perSource := range []int{256, 8} {
		t.Run(fmt.Sprintf("%d per address", perSource), func(t *testing.T) {
			f := startServer(t, chunkstore.NewMemory(chunkstore.MemoryOptions{}), ServerOptions{})
			idleConns(t, f.addr, 256, perSource)
			time.Sleep(100 * time.Millisecond) // let the server take them all
			start := time.Now()
			c, err := dialKey(f, f.clientKey, "127.0.0.1")
			if err != nil {
				t.Fatalf("log in with 256 idle connections open: %v\n%s", err, f.logs.String())
			}
			defer c.Close()
			h, err := holdSession(c)
			if err != nil {
				t.Fatal(err)
			}
			if err := h.pull(idOf(4), nil); err != nil {
				t.Error(err)
			}
			t.Logf("logged in and pulled in %v", time.Since(start))
		})
	}
}

// TestSSHSessionLimitsUnderLoad is the bounded load test of item 5: while
// one key keeps opening sessions on many connections (for at most 3 s and
// 3,000 attempts), another key pulls 50 chunks, each on a new session,
// each within 2 s.
func TestSSHSessionLimitsUnderLoad(t *testing.T) {
	chunks := randomChunks(5, 50, 32<<10)
	opts := ServerOptions{}
	second := secondKey(t, &opts)
	f := startServer(t, memoryStore(t, chunks), opts)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var attempts, refused atomic.Int64
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := time.Now().Add(3 * time.Second)
			for time.Now().Before(deadline) && attempts.Load() < 3000 {
				c, err := dialKey(f, f.clientKey, "")
				if err != nil {
					refused.Add(1)
					continue
				}
				defer c.Close()
				for range 10 {
					attempts.Add(1)
					if _, err := holdSession(c); err != nil {
						refused.Add(1)
						break
					}
				}
				select {
				case <-stop:
					return
				default:
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	c, err := dialKey(f, second, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for id, data := range chunks {
		start := time.Now()
		h, err := holdSession(c)
		if err == nil {
			err = h.pull(id, data)
			h.sess.Close()
		}
		if took := time.Since(start); err != nil || took > 2*time.Second {
			t.Fatalf("second key's pull of %s: %v after %v", id, err, took)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("first key: %d session attempts, %d refused", attempts.Load(), refused.Load())
}

// TestSSHLoginUnderConnectionFlood is the bounded load test of item 6:
// while 8 addresses open connections that never log in as fast as they can
// (for at most 3 s and 5,000 connections), a real client logs in and
// pulls 20 times, each within 2 s.
func TestSSHLoginUnderConnectionFlood(t *testing.T) {
	f := startServer(t, chunkstore.NewMemory(chunkstore.MemoryOptions{}), ServerOptions{})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var opened atomic.Int64
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i))}, Timeout: time.Second}
			var conns []net.Conn
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			deadline := time.Now().Add(3 * time.Second)
			for time.Now().Before(deadline) && opened.Load() < 5000 {
				select {
				case <-stop:
					return
				default:
				}
				if c, err := d.Dial("tcp", f.addr); err == nil {
					opened.Add(1)
					conns = append(conns, c)
				}
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	for i := range 20 {
		start := time.Now()
		c, err := dialKey(f, f.clientKey, "127.0.0.1")
		if err == nil {
			var h *heldSession
			if h, err = holdSession(c); err == nil {
				err = h.pull(idOf(byte(i)), nil)
			}
			c.Close()
		}
		if took := time.Since(start); err != nil || took > 2*time.Second {
			t.Fatalf("login %d during the flood: %v after %v", i, err, took)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("flood: %d connections opened", opened.Load())
}
