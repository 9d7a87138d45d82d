// Package shaper is a TCP proxy that makes loopback behave like a slower
// network: every byte is held for a one-way delay and each direction is
// limited to a rate, as a link of that latency and bandwidth would. The
// link is one for the whole proxy: every connection through it shares
// each direction's bandwidth, so a client that opens many connections
// gets no more than one that opens a single one. The
// benchmark harness puts it between a client and a chunk store or image
// server on 127.0.0.1, which works with `docker run --network host` and
// needs no network namespace or tc.
//
// It is benchmark tooling: nothing that boot or mkimage links may import it.
package shaper

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Link describes one direction of the shaped network.
type Link struct {
	// Delay is how long every byte takes to arrive (half the round trip).
	Delay time.Duration
	// Rate is the bandwidth in bytes per second; 0 means unlimited.
	Rate int64
}

// Options configure a Proxy. The zero value forwards with no shaping.
type Options struct {
	// Up shapes client-to-server traffic, Down server-to-client.
	Up, Down Link
}

// Symmetric returns Options with the round-trip time rtt split evenly
// between the directions and both limited to bitsPerSecond (0: unlimited).
func Symmetric(rtt time.Duration, bitsPerSecond int64) Options {
	l := Link{Delay: rtt / 2, Rate: bitsPerSecond / 8}
	return Options{Up: l, Down: l}
}

// Proxy accepts TCP connections and forwards each to an upstream address
// through shaped links. Safe for concurrent use.
type Proxy struct {
	ln       net.Listener
	upstream string

	// upLink and downLink are the two directions' schedules, shared by
	// every connection and by the other proxies of the same Network.
	upLink, downLink *schedule

	up, down atomic.Int64 // bytes delivered in each direction
	conns    atomic.Int64 // connections accepted

	mu     sync.Mutex
	open   map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// Network is one shaped link, both directions, that any number of proxies
// share: a node reaching several servers over one network shares its
// bandwidth among them as it does among connections.
type Network struct {
	opts     Options
	up, down *schedule
}

// NewNetwork returns the link opts describe.
func NewNetwork(opts Options) (*Network, error) {
	if opts.Up.Rate < 0 || opts.Down.Rate < 0 || opts.Up.Delay < 0 || opts.Down.Delay < 0 {
		return nil, fmt.Errorf("shaper: negative delay or rate in %+v", opts)
	}
	return &Network{opts: opts, up: newSchedule(opts.Up), down: newSchedule(opts.Down)}, nil
}

// Listen starts a proxy on addr (such as "127.0.0.1:0") to upstream with a
// link of its own.
func Listen(addr, upstream string, opts Options) (*Proxy, error) {
	n, err := NewNetwork(opts)
	if err != nil {
		return nil, err
	}
	return n.Listen(addr, upstream)
}

// Listen starts a proxy on addr to upstream over the network n, sharing
// its link with n's other proxies.
func (n *Network) Listen(addr, upstream string) (*Proxy, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("shaper: listen on %s: %w", addr, err)
	}
	p := &Proxy{ln: ln, upstream: upstream, open: map[net.Conn]struct{}{},
		upLink: n.up, downLink: n.down}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the address the proxy listens on.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Stats reports the bytes delivered upstream and downstream so far and the
// connections accepted.
func (p *Proxy) Stats() (up, down, conns int64) {
	return p.up.Load(), p.down.Load(), p.conns.Load()
}

// Close stops accepting, closes every open connection and waits for the
// proxy's goroutines to end.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for c := range p.open {
		c.Close()
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

// track records c as open, or closes it and reports false when the proxy
// is closing.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.open[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.open, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.conns.Add(1)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serve(c)
		}()
	}
}

func (p *Proxy) serve(client net.Conn) {
	if !p.track(client) {
		return
	}
	defer p.untrack(client)
	server, err := net.DialTimeout("tcp", p.upstream, 10*time.Second)
	if err != nil {
		return // the client sees the connection close, as with a refused dial
	}
	if !p.track(server) {
		return
	}
	defer p.untrack(server)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		pipe(server, client, p.upLink, &p.up)
	}()
	go func() {
		defer wg.Done()
		pipe(client, server, p.downLink, &p.down)
	}()
	wg.Wait()
}

// segment is a piece of the stream with the time it may be delivered.
type segment struct {
	b  []byte
	at time.Time
}

// segmentSize bounds one read, so that the rate limit spreads a large
// write over time rather than releasing it in one burst.
const segmentSize = 16 << 10

// maxInFlight bounds the segments one connection holds for delivery: the
// reader stops reading from src while they are all waiting.
const maxInFlight = 512

// schedule is one direction of the link: the segments of every connection
// leave one after another at the link's rate, each finishing at
// max(its arrival, the end of the previous one) + len/Rate, and arrive
// Delay later.
type schedule struct {
	link Link
	// queue bounds how far ahead of now the link is booked: a reader
	// whose segment would wait longer than this for the wire waits for
	// the queue to drain first, as a sender does behind a router's full
	// buffer. It keeps a bulk transfer from booking seconds of the link
	// ahead of a small request on another connection.
	queue time.Duration

	mu    sync.Mutex
	txEnd time.Time // when the last booked segment leaves the wire
}

// minQueue is the shortest queue: a few segments' worth at slow rates.
const minQueue = 4 * segmentSize

func newSchedule(l Link) *schedule {
	s := &schedule{link: l}
	if l.Rate > 0 {
		// A buffer of one round trip's bytes (bandwidth × delay product),
		// and never less than a few segments.
		bytes := max(int64(float64(l.Rate)*(2*l.Delay).Seconds()), minQueue)
		s.queue = time.Duration(float64(bytes) / float64(l.Rate) * float64(time.Second))
	}
	return s
}

// shaped reports whether the direction changes anything.
func (s *schedule) shaped() bool { return s.link.Delay != 0 || s.link.Rate != 0 }

// book reserves the wire for n bytes that arrived now and returns when
// they are delivered at the far end. It waits while the link is booked
// further ahead than its queue, or until done is closed.
func (s *schedule) book(n int, done <-chan struct{}) (time.Time, bool) {
	for {
		s.mu.Lock()
		now := time.Now()
		if s.txEnd.Before(now) {
			s.txEnd = now
		}
		if s.link.Rate > 0 {
			if ahead := s.txEnd.Sub(now); ahead > s.queue {
				s.mu.Unlock()
				select {
				case <-time.After(ahead - s.queue):
				case <-done:
					return time.Time{}, false
				}
				continue
			}
			s.txEnd = s.txEnd.Add(time.Duration(float64(n) / float64(s.link.Rate) * float64(time.Second)))
		}
		at := s.txEnd.Add(s.link.Delay)
		s.mu.Unlock()
		return at, true
	}
}

// pipe copies src to dst through the link direction sched: each segment
// read is booked on the shared schedule and written to dst when it is
// due. When src ends, dst's write side is closed; when dst fails, src is
// closed.
func pipe(dst, src net.Conn, sched *schedule, delivered *atomic.Int64) {
	if !sched.shaped() {
		if _, err := io.Copy(countWriter{dst, delivered}, src); err != nil {
			src.Close()
		}
		closeWrite(dst)
		return
	}
	ch := make(chan segment, maxInFlight)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		defer close(ch)
		for {
			b := make([]byte, segmentSize)
			n, err := src.Read(b)
			if n > 0 {
				at, ok := sched.book(n, ctx.Done())
				if !ok {
					return
				}
				select {
				case ch <- segment{b[:n], at}:
				case <-ctx.Done():
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	for s := range ch {
		// Sleeps shorter than this cost more than they are worth; the
		// schedule is absolute, so skipping one does not accumulate.
		if d := time.Until(s.at); d > 100*time.Microsecond {
			time.Sleep(d)
		}
		if _, err := dst.Write(s.b); err != nil {
			src.Close()
			cancel()
			for range ch {
			}
			return
		}
		delivered.Add(int64(len(s.b)))
	}
	closeWrite(dst)
}

type countWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// closeWrite half-closes c so the peer sees EOF and may still answer.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}
