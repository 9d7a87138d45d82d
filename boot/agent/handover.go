package agent

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// A worker and its holder talk over a SOCK_SEQPACKET socketpair, one JSON
// message a packet, with file descriptors beside it (SCM_RIGHTS):
//
//   - worker → holder, opHold with a mount's state and its fds (the
//     /dev/fuse connection, the caller's pidfd, the image's index and TOC
//     in a memfd) once it serves the mount; opDrop when the mount ends;
//   - holder → new worker, opHold for every mount it holds, then opReady.
//
// The holder keeps only the fds and the state, which it never reads: it
// needs nothing of the image to hand it over again.
const (
	opHold  = "hold"
	opDrop  = "drop"
	opReady = "ready"
)

// message is one packet between holder and worker.
type message struct {
	Op    string      `json:"op"`
	Mount *mountState `json:"mount,omitempty"`
	NS    uint64      `json:"ns,omitempty"` // opDrop: the mount's namespace
}

// mountState is what a new worker needs, besides the fds, to serve a
// mount that another worker made: the caller's mount namespace (the
// mount's key), the FUSE connection's device minor (to abort it) and INIT
// request (lazyfs.FS.AdoptServer), and the digests of the image's index
// and TOC, which the memfd must match.
type mountState struct {
	NS    uint64 `json:"ns"`
	Conn  uint64 `json:"conn"`
	Init  []byte `json:"init"`
	Index string `json:"index"`
	TOC   string `json:"toc"`
}

// The fds of an opHold message, in order.
const (
	fdDev = iota
	fdPid
	fdImage
	holdFDs
)

// maxHandover bounds a packet: the state is small, the INIT request 104
// bytes.
const maxHandover = 16 << 10

// send writes m with fds on c.
func send(c *net.UnixConn, m message, fds ...int) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix(b, oob, nil); err != nil {
		return fmt.Errorf("bootfs-agent: hand over %s: %w", m.Op, err)
	}
	return nil
}

// errHandoverEnd is returned by receive when the other end closed, and
// errBadMessage wrapped when one message was wrong (the next may be
// right).
var (
	errHandoverEnd = errors.New("bootfs-agent: the other end of the handover closed")
	errBadMessage  = errors.New("bad handover message")
)

// receive reads one message and its fds (close-on-exec) from c. It
// checks what it can of the message alone: the op is known, and opHold
// carries a state and exactly its fds; on an error every fd received is
// closed.
func receive(c *net.UnixConn) (message, []int, error) {
	buf := make([]byte, maxHandover)
	oob := make([]byte, unix.CmsgSpace(4*8))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if errors.Is(err, io.EOF) || (err == nil && n == 0 && oobn == 0) {
		return message{}, nil, errHandoverEnd
	}
	if err != nil {
		return message{}, nil, fmt.Errorf("bootfs-agent: read the handover: %w", err)
	}
	if n == 0 && oobn == 0 {
		return message{}, nil, errHandoverEnd
	}
	var fds []int
	if oobn > 0 {
		cms, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return message{}, nil, fmt.Errorf("bootfs-agent: the handover's fds: %w", err)
		}
		for _, cm := range cms {
			got, err := unix.ParseUnixRights(&cm)
			if err == nil {
				fds = append(fds, got...)
			}
		}
	}
	m, err := decodeMessage(buf[:n], len(fds))
	if err != nil {
		closeFDs(fds)
		return message{}, nil, fmt.Errorf("bootfs-agent: %w: %w", errBadMessage, err)
	}
	return m, fds, nil
}

// decodeMessage parses a packet that came with nfds fds.
func decodeMessage(b []byte, nfds int) (message, error) {
	var m message
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%d bytes of no JSON: %w (is bootfs-agent on disk of another version than the running holder? start it with --replace)", len(b), err)
	}
	want := 0
	switch m.Op {
	case opHold:
		if m.Mount == nil || len(m.Mount.Init) == 0 || m.Mount.NS == 0 {
			return m, errors.New("a held mount without its state (is bootfs-agent on disk of another version than the running holder? start it with --replace)")
		}
		want = holdFDs
	case opDrop:
		if m.NS == 0 {
			return m, errors.New("a drop without its mount namespace")
		}
	case opReady:
	default:
		return m, fmt.Errorf("unknown op %q (is bootfs-agent on disk of another version than the running holder? start it with --replace)", m.Op)
	}
	if nfds != want {
		return m, fmt.Errorf("%s with %d fds, want %d", m.Op, nfds, want)
	}
	return m, nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// imageMemfd returns a sealed memfd holding index and toc, for a worker
// to come: an 8-byte length of the index, the index, the TOC.
func imageMemfd(index, toc []byte) (int, error) {
	fd, err := unix.MemfdCreate("bootfs-image", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, fmt.Errorf("memfd for the image's index and TOC: %w", err)
	}
	f := os.NewFile(uintptr(fd), "bootfs-image")
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(index)))
	for _, b := range [][]byte{n[:], index, toc} {
		if _, err := f.Write(b); err != nil {
			f.Close()
			return -1, fmt.Errorf("memfd for the image's index and TOC: %w", err)
		}
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL); err != nil {
		f.Close()
		return -1, fmt.Errorf("seal the image's memfd: %w", err)
	}
	dup, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	f.Close()
	if err != nil {
		return -1, err
	}
	return dup, nil
}

// readImageMemfd reads what imageMemfd wrote, checking the index and TOC
// against the digests st records. It does not close fd.
func readImageMemfd(fd int, st *mountState) (index, toc []byte, err error) {
	var size int64
	var s unix.Stat_t
	if err := unix.Fstat(fd, &s); err != nil {
		return nil, nil, fmt.Errorf("the held image: %w", err)
	}
	size = s.Size
	if size < 8 || size > 8+maxIndex+maxTOC {
		return nil, nil, fmt.Errorf("the held image has %d bytes, not an index and a TOC", size)
	}
	b := make([]byte, size)
	if _, err := unix.Pread(fd, b, 0); err != nil {
		return nil, nil, fmt.Errorf("read the held image: %w", err)
	}
	n := binary.LittleEndian.Uint64(b)
	if n > uint64(size-8) {
		return nil, nil, fmt.Errorf("the held image's index length %d is past its %d bytes", n, size)
	}
	index, toc = b[8:8+n], b[8+n:]
	for _, c := range []struct {
		what, want string
		b          []byte
	}{{"index", st.Index, index}, {"TOC", st.TOC, toc}} {
		sum := sha256.Sum256(c.b)
		if got := "sha256:" + hex.EncodeToString(sum[:]); got != c.want {
			return nil, nil, fmt.Errorf("the held image's %s is %s, the mount's state says %s", c.what, got, c.want)
		}
	}
	return index, toc, nil
}
