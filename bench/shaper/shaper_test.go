package shaper

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"testing"
	"time"
)

// server serves every connection with handle, which closes it, and
// returns its address.
func server(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln.Addr().String()
}

// echoServer answers every connection by copying what it reads back.
func echoServer(t *testing.T) string {
	return server(t, func(c net.Conn) {
		defer c.Close()
		io.Copy(c, c)
	})
}

// sinkServer reads each connection to EOF and answers with the SHA-256
// of what it read.
func sinkServer(t *testing.T) string {
	return server(t, func(c net.Conn) {
		defer c.Close()
		h := sha256.New()
		io.Copy(h, c)
		c.Write(h.Sum(nil))
	})
}

// sourceServer writes size bytes to every connection and closes it.
func sourceServer(t *testing.T, size int) string {
	data := make([]byte, size)
	rand.Read(data)
	return server(t, func(c net.Conn) {
		defer c.Close()
		c.Write(data)
	})
}

func proxy(t *testing.T, upstream string, opts Options) *Proxy {
	t.Helper()
	p, err := Listen("127.0.0.1:0", upstream, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// roundTrip sends one byte through the proxy to an echo server and
// returns how long the answer took.
func roundTrip(t *testing.T, c net.Conn) time.Duration {
	t.Helper()
	start := time.Now()
	if _, err := c.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

func TestLatency(t *testing.T) {
	for _, tc := range []struct {
		name string
		rtt  time.Duration
	}{
		{"2ms", 2 * time.Millisecond},
		{"20ms", 20 * time.Millisecond},
		{"60ms", 60 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := proxy(t, echoServer(t), Symmetric(tc.rtt, 0))
			c, err := net.Dial("tcp", p.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// The smallest of a few round trips: scheduling noise on a
			// busy machine only adds time.
			best := time.Hour
			for range 5 {
				best = min(best, roundTrip(t, c))
			}
			// The floor is exact; the ceiling leaves room for a loaded
			// machine (the race detector, other tests).
			if hi := 2*tc.rtt + 5*time.Millisecond; best < tc.rtt || best > hi {
				t.Errorf("round trip through a %v proxy took %v, want %v to %v", tc.rtt, best, tc.rtt, hi)
			}
		})
	}
}

func TestBandwidthAndIntegrity(t *testing.T) {
	for _, tc := range []struct {
		name string
		rate int64 // bytes per second
		size int
		rtt  time.Duration
	}{
		{"8MB/s", 8 << 20, 4 << 20, 0},
		{"2MB/s+10ms", 2 << 20, 1 << 20, 10 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := proxy(t, sinkServer(t), Symmetric(tc.rtt, tc.rate*8))
			data := make([]byte, tc.size)
			rand.Read(data)
			want := sha256.Sum256(data)
			c, err := net.Dial("tcp", p.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			if _, err := c.Write(data); err != nil {
				t.Fatal(err)
			}
			c.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(c)
			took := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want[:]) {
				t.Fatalf("the server read different bytes than were sent (sha256 %x, want %x)", got, want)
			}
			ideal := time.Duration(float64(tc.size)/float64(tc.rate)*float64(time.Second)) + tc.rtt
			if took < ideal*9/10 || took > ideal*3/2 {
				t.Errorf("%d bytes at %d B/s with %v RTT took %v, want about %v (-10%%/+50%%)", tc.size, tc.rate, tc.rtt, took, ideal)
			}
			up, down, conns := p.Stats()
			if up != int64(tc.size) || down != int64(len(want)) || conns != 1 {
				t.Errorf("Stats() = %d, %d, %d; want %d, %d, 1", up, down, conns, tc.size, len(want))
			}
		})
	}
}

func TestUnshapedPassesBytes(t *testing.T) {
	p := proxy(t, sinkServer(t), Options{})
	data := make([]byte, 3<<20+17)
	rand.Read(data)
	want := sha256.Sum256(data)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(data)
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, want[:]) {
		t.Fatalf("through an unshaped proxy: sha256 %x, %v; want %x", got, err, want)
	}
}

func TestCloseEndsConnections(t *testing.T) {
	p, err := Listen("127.0.0.1:0", echoServer(t), Symmetric(10*time.Millisecond, 8<<20))
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c)
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return while a connection was open")
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("a connection read after Close succeeded, want EOF or reset")
	}
}

func TestListenRejectsNegative(t *testing.T) {
	if _, err := Listen("127.0.0.1:0", "127.0.0.1:1", Options{Up: Link{Rate: -1}}); err == nil {
		t.Error("Listen with a negative rate succeeded")
	}
}

// TestParallelConnectionsShareTheLink opens 8 connections at once through
// one network, in each direction and to two servers behind two proxies,
// and checks that together they get the link's rate, not 8 times it, as
// they would on one real link.
func TestParallelConnectionsShareTheLink(t *testing.T) {
	const (
		conns = 8
		size  = 1 << 20 // per connection
		rate  = 4 << 20 // bytes per second: 8 MiB take about 2 s
		rtt   = 10 * time.Millisecond
	)
	for _, tc := range []struct {
		name    string
		up      bool
		servers int
	}{
		{"down", false, 1},
		{"up", true, 1},
		{"down-two-servers", false, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := NewNetwork(Symmetric(rtt, rate*8))
			if err != nil {
				t.Fatal(err)
			}
			var addrs []string
			for range tc.servers {
				upstream := sourceServer(t, size)
				if tc.up {
					upstream = sinkServer(t)
				}
				p, err := n.Listen("127.0.0.1:0", upstream)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { p.Close() })
				addrs = append(addrs, p.Addr())
			}
			data := make([]byte, size)
			errs := make(chan error, conns)
			got := make(chan int64, conns)
			start := time.Now()
			for i := range conns {
				go func() {
					c, err := net.Dial("tcp", addrs[i%len(addrs)])
					if err != nil {
						errs <- err
						return
					}
					defer c.Close()
					if tc.up {
						if _, err := c.Write(data); err != nil {
							errs <- err
							return
						}
						c.(*net.TCPConn).CloseWrite()
					}
					n, err := io.Copy(io.Discard, c)
					if err != nil {
						errs <- err
						return
					}
					got <- n
				}()
			}
			var total int64
			for range conns {
				select {
				case err := <-errs:
					t.Fatal(err)
				case n := <-got:
					total += n
				}
			}
			took := time.Since(start)
			moved := int64(conns * size)
			if !tc.up && total != moved {
				t.Fatalf("the clients received %d bytes, want %d", total, moved)
			}
			measured := float64(moved) / took.Seconds()
			// Generous bounds for a loaded machine: a link per
			// connection would give about 8× the rate.
			if measured > 1.25*rate || measured < 0.5*rate {
				t.Errorf("%d connections to %d server(s) moved %d bytes in %v: %.2f MB/s together, want about the link's %.2f MB/s",
					conns, tc.servers, moved, took, measured/1e6, float64(rate)/1e6)
			}
		})
	}
}
