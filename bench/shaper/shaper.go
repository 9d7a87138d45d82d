// Package shaper is a TCP proxy that makes loopback behave like a slower
// network: every byte is held for a one-way delay and each direction is
// limited to a rate, as a link of that latency and bandwidth would. The
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
	opts     Options

	up, down atomic.Int64 // bytes delivered in each direction
	conns    atomic.Int64 // connections accepted

	mu     sync.Mutex
	open   map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// Listen starts a proxy on addr (such as "127.0.0.1:0") to upstream.
func Listen(addr, upstream string, opts Options) (*Proxy, error) {
	if opts.Up.Rate < 0 || opts.Down.Rate < 0 || opts.Up.Delay < 0 || opts.Down.Delay < 0 {
		return nil, fmt.Errorf("shaper: negative delay or rate in %+v", opts)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("shaper: listen on %s: %w", addr, err)
	}
	p := &Proxy{ln: ln, upstream: upstream, opts: opts, open: map[net.Conn]struct{}{}}
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
		pipe(server, client, p.opts.Up, &p.up)
	}()
	go func() {
		defer wg.Done()
		pipe(client, server, p.opts.Down, &p.down)
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

// maxInFlight bounds the segments held for delivery: the reader stops
// reading from src while they are all waiting, as a full link would.
const maxInFlight = 512

// pipe copies src to dst through link: a segment read at time t finishes
// transmission at max(t, end of the previous one) + len/Rate and is
// delivered Delay later. When src ends, dst's write side is closed; when
// dst fails, src is closed.
func pipe(dst, src net.Conn, link Link, delivered *atomic.Int64) {
	if link.Delay == 0 && link.Rate == 0 {
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
		var txEnd time.Time
		for {
			b := make([]byte, segmentSize)
			n, err := src.Read(b)
			if n > 0 {
				now := time.Now()
				if txEnd.Before(now) {
					txEnd = now
				}
				if link.Rate > 0 {
					txEnd = txEnd.Add(time.Duration(float64(n) / float64(link.Rate) * float64(time.Second)))
				}
				select {
				case ch <- segment{b[:n], txEnd.Add(link.Delay)}:
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
