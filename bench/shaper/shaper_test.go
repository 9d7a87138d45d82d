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

// echoServer answers every connection by copying what it reads back,
// and returns its address.
func echoServer(t *testing.T) string {
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
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// sinkServer reads each connection to EOF and answers with the SHA-256
// of what it read.
func sinkServer(t *testing.T) string {
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
			go func() {
				defer c.Close()
				h := sha256.New()
				io.Copy(h, c)
				c.Write(h.Sum(nil))
			}()
		}
	}()
	return ln.Addr().String()
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
