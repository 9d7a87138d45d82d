package agent

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func handoverPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var cs [2]*net.UnixConn
	for i, fd := range sp {
		f := os.NewFile(uintptr(fd), "handover")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		cs[i] = c.(*net.UnixConn)
		t.Cleanup(func() { cs[i].Close() })
	}
	return cs[0], cs[1]
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// TestHandoverRoundTrip: a held mount's state and its three fds cross
// the handover as sent, the image's index and TOC come back out of its
// memfd, and a closed end reads as the end.
func TestHandoverRoundTrip(t *testing.T) {
	worker, holder := handoverPair(t)
	index := bytes.Repeat([]byte("index "), 40000) // about the index of a 400 MB image
	toc := bytes.Repeat([]byte("toc "), 100000)
	memfd, err := imageMemfd(index, toc)
	if err != nil {
		t.Fatalf("imageMemfd: %v", err)
	}
	defer unix.Close(memfd)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	st := &mountState{NS: 4026532999, Conn: 77, Init: bytes.Repeat([]byte{26}, 104), Index: digest(index), TOC: digest(toc)}
	if err := send(worker, message{Op: opHold, Mount: st}, int(w.Fd()), int(r.Fd()), memfd); err != nil {
		t.Fatalf("send: %v", err)
	}
	m, fds, err := receive(holder)
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	defer closeFDs(fds)
	if m.Op != opHold || m.Mount.NS != st.NS || m.Mount.Conn != st.Conn || !bytes.Equal(m.Mount.Init, st.Init) || len(fds) != holdFDs {
		t.Fatalf("receive = %+v, %d fds; want %+v with %d", m.Mount, len(fds), st, holdFDs)
	}
	// The fds are the files sent: what is written to the received
	// write end comes out of the pipe.
	if _, err := unix.Write(fds[fdDev], []byte("x")); err != nil {
		t.Fatalf("write the received fd: %v", err)
	}
	b := make([]byte, 1)
	if _, err := r.Read(b); err != nil || b[0] != 'x' {
		t.Fatalf("read the pipe = %q, %v", b, err)
	}
	gotIndex, gotTOC, err := readImageMemfd(fds[fdImage], m.Mount)
	if err != nil || !bytes.Equal(gotIndex, index) || !bytes.Equal(gotTOC, toc) {
		t.Fatalf("readImageMemfd = %d, %d bytes, %v; want %d, %d", len(gotIndex), len(gotTOC), err, len(index), len(toc))
	}
	// Sealed: nobody changes the image under a worker to come.
	if _, err := unix.Pwrite(fds[fdImage], []byte("y"), 8); err == nil {
		t.Errorf("wrote to the sealed image memfd")
	}
	worker.Close()
	if _, _, err := receive(holder); err != errHandoverEnd {
		t.Fatalf("receive after close = %v, want %v", err, errHandoverEnd)
	}
}

// TestHandoverBad: a message that is not what the other end sends gives
// an error naming the problem, and its fds are closed.
func TestHandoverBad(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  string
		fds  int
		want string
	}{
		{"not JSON", "{hold", 0, "bad handover message"},
		{"unknown op", `{"op":"mount"}`, 0, `unknown op "mount"`},
		{"hold without state", `{"op":"hold"}`, 3, "without its state"},
		{"hold without fds", `{"op":"hold","mount":{"ns":1,"init":"AQI="}}`, 0, "hold with 0 fds, want 3"},
		{"drop with fds", `{"op":"drop","ns":5}`, 1, "drop with 1 fds, want 0"},
		{"drop without ns", `{"op":"drop"}`, 0, "without its mount namespace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := handoverPair(t)
			var fds []int
			for range tc.fds {
				fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer unix.Close(fd)
				fds = append(fds, fd)
			}
			var oob []byte
			if len(fds) > 0 {
				oob = unix.UnixRights(fds...)
			}
			if _, _, err := a.WriteMsgUnix([]byte(tc.msg), oob, nil); err != nil {
				t.Fatal(err)
			}
			before := openFDs(t)
			_, got, err := receive(b)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("receive(%s) = %v, want an error naming %q", tc.msg, err, tc.want)
			}
			if got != nil || openFDs(t) != before {
				t.Errorf("receive(%s) left %d fds open (returned %v)", tc.msg, openFDs(t)-before, got)
			}
		})
	}
}

// TestImageMemfdMismatch: a held image whose bytes are not the state's
// digests is refused, naming which.
func TestImageMemfdMismatch(t *testing.T) {
	memfd, err := imageMemfd([]byte("index"), []byte("toc"))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(memfd)
	_, _, err = readImageMemfd(memfd, &mountState{Index: digest([]byte("index")), TOC: digest([]byte("other"))})
	if err == nil || !strings.Contains(err.Error(), "TOC is sha256:") {
		t.Fatalf("readImageMemfd of another TOC = %v, want an error naming the TOC", err)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
