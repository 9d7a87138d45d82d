package lazyfs

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// A FUSE connection outlives the process that serves it as long as some
// process holds its /dev/fuse file open: requests then wait in the kernel
// until a new server reads them. go-fuse, though, always starts a server by
// answering the connection's INIT, which the kernel sends once. The
// functions here start go-fuse on one end of a socketpair instead, replay
// the connection's INIT request to it there, and only then put the real
// /dev/fuse file in place of the socket (dup3), before the server's Serve
// reads anything: the new server has the settings of the first, and the
// kernel never sees a second INIT.
//
// This works for FS because it keeps no per-connection state that the
// kernel relies on: node IDs are TOC positions, there are no file handles
// (OPEN and OPENDIR answer ENOSYS) and FORGET forgets nothing.

// hasResend is FUSE_HAS_RESEND (protocol 7.40, Linux 6.9): the kernel can
// re-send the requests a dead server had read but not answered
// (FUSE_NOTIFY_RESEND).
const hasResend = 1 << 39

// notifyResend is FUSE_NOTIFY_RESEND, a notification code.
const notifyResend = 7

// initReadBuffer is enough for any INIT request, and at least what
// /dev/fuse demands of a read buffer (FUSE_MIN_READ_BUFFER).
const initReadBuffer = 64 << 10

// ErrNoResend is wrapped when a FUSE connection cannot be taken over
// safely because its kernel cannot re-send the requests in flight.
var ErrNoResend = errors.New("lazyfs: the kernel cannot re-send FUSE requests (FUSE_HAS_RESEND, Linux 6.9 or later)")

// NewInitServer is NewFDServer for a connection whose INIT the caller wants
// to keep: it reads the INIT request from dev, has go-fuse answer it, and
// returns the server with that request, which AdoptServer needs to serve
// the connection again from another process. It fails, wrapping
// ErrNoResend, if the kernel could not re-send requests then; the
// connection is answered and served all the same. The server takes a
// duplicate of dev over; the caller keeps dev.
func (f *FS) NewInitServer(dev int) (*fuse.Server, []byte, error) {
	buf := make([]byte, initReadBuffer)
	n, err := readEINTR(dev, buf)
	if err != nil {
		return nil, nil, fmt.Errorf("boot: read FUSE INIT: %w", err)
	}
	init := buf[:n]
	if _, err := initFlags(init); err != nil {
		return nil, nil, err
	}
	srv, reply, err := f.replayInit(dev, init)
	if err != nil {
		return nil, nil, err
	}
	if _, err := unix.Write(dev, reply); err != nil {
		return nil, nil, fmt.Errorf("boot: answer FUSE INIT: %w", err)
	}
	if flags, _ := initFlags(init); flags&hasResend == 0 {
		return srv, init, ErrNoResend
	}
	return srv, init, nil
}

// AdoptServer returns a server of the filesystem on dev, an open
// /dev/fuse whose connection another server answered the INIT request
// init of (NewInitServer), and which may have died with requests read and
// unanswered. The caller runs its Serve, then calls Resend. It fails,
// wrapping ErrNoResend, if the kernel cannot re-send those requests. The
// server takes a duplicate of dev over; the caller keeps dev.
func (f *FS) AdoptServer(dev int, init []byte) (*fuse.Server, error) {
	flags, err := initFlags(init)
	if err != nil {
		return nil, err
	}
	if flags&hasResend == 0 {
		return nil, fmt.Errorf("take over the FUSE connection: %w", ErrNoResend)
	}
	srv, _, err := f.replayInit(dev, init)
	return srv, err
}

// Resend asks the kernel to send again, on the connection of dev, every
// request a server had read and not answered: the requests of a server
// that died. It needs FUSE_HAS_RESEND.
func Resend(dev int) error {
	var h [16]byte // fuse_out_header: len, error (the code), unique 0
	binary.NativeEndian.PutUint32(h[0:], uint32(len(h)))
	binary.NativeEndian.PutUint32(h[4:], notifyResend)
	if _, err := unix.Write(dev, h[:]); err != nil {
		return fmt.Errorf("boot: FUSE_NOTIFY_RESEND: %w", err)
	}
	return nil
}

// replayInit starts a go-fuse server of f on a socketpair, hands it init
// there and returns its reply; then it puts a duplicate of dev in place of
// the server's socket, so that Serve reads the connection of dev.
func (f *FS) replayInit(dev int, init []byte) (*fuse.Server, []byte, error) {
	// Blocking, as /dev/fuse is: go-fuse reads its fd directly,
	// not through Go's poller.
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("boot: socketpair: %w", err)
	}
	ours, theirs := sp[0], sp[1]
	defer unix.Close(ours)
	if _, err := unix.Write(ours, init); err != nil {
		unix.Close(theirs)
		return nil, nil, fmt.Errorf("boot: replay FUSE INIT: %w", err)
	}
	srv, err := f.NewFDServer(theirs) // reads the INIT, answers on the socket
	if err != nil {
		return nil, nil, err
	}
	reply := make([]byte, 4096)
	n, err := readEINTR(ours, reply)
	if err != nil {
		// The server owns theirs; without Serve it is never closed,
		// but this cannot fail once the INIT was answered.
		return nil, nil, fmt.Errorf("boot: read the replayed INIT's answer: %w", err)
	}
	reply = reply[:n]
	if len(reply) < 16 || int32(binary.NativeEndian.Uint32(reply[4:])) != 0 {
		return nil, nil, fmt.Errorf("boot: the FUSE server refused the replayed INIT (%d-byte answer)", len(reply))
	}
	if err := unix.Dup3(dev, theirs, unix.O_CLOEXEC); err != nil {
		return nil, nil, fmt.Errorf("boot: take over the FUSE connection: dup3: %w", err)
	}
	return srv, reply, nil
}

// initFlags returns the capability flags of an INIT request (fuse_in_header,
// then fuse_init_in: major, minor, max_readahead, flags, flags2).
func initFlags(init []byte) (uint64, error) {
	const hdr = 40
	const opInit = 26
	if len(init) < hdr+20 || binary.NativeEndian.Uint32(init[4:]) != opInit {
		return 0, fmt.Errorf("boot: not a FUSE INIT request (%d bytes)", len(init))
	}
	flags := uint64(binary.NativeEndian.Uint32(init[hdr+12:]))
	flags |= uint64(binary.NativeEndian.Uint32(init[hdr+16:])) << 32
	return flags, nil
}

func readEINTR(fd int, buf []byte) (int, error) {
	for {
		n, err := unix.Read(fd, buf)
		if !errors.Is(err, unix.EINTR) {
			return n, err
		}
	}
}
