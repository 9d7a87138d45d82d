package agent

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// peer is the process on the other end of a connection, held by a pidfd:
// a PID can be reused once its process is gone, a pidfd never names
// another process.
type peer struct {
	pidfd int
	pid   int    // in the agent's PID namespace, valid while the process lives
	uid   uint32 // effective uid at connect
	mntNS uint64 // inode of its mount namespace
}

// peerOf identifies the process that connected c, from the kernel's
// record of it (SO_PEERPIDFD, SO_PEERCRED), never from anything it sent.
func peerOf(c *net.UnixConn) (*peer, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	p := &peer{pidfd: -1}
	var serr error
	err = rc.Control(func(fd uintptr) {
		var cred *unix.Ucred
		if cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); serr != nil {
			serr = fmt.Errorf("SO_PEERCRED: %w", serr)
			return
		}
		p.uid = cred.Uid
		if p.pidfd, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD); serr != nil {
			serr = fmt.Errorf("SO_PEERPIDFD: %w (the agent needs Linux 6.5 or later)", serr)
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return nil, fmt.Errorf("identify the caller: %w", err)
	}
	if p.pid, err = pidfdPID(p.pidfd); err != nil {
		p.close()
		return nil, fmt.Errorf("identify the caller: %w", err)
	}
	var st unix.Stat_t
	if err := p.check(func() error { return unix.Stat(p.proc("ns/mnt"), &st) }); err != nil {
		p.close()
		return nil, fmt.Errorf("identify the caller's mount namespace: %w", err)
	}
	p.mntNS = st.Ino
	return p, nil
}

// errGone is wrapped when the caller exited.
var errGone = errors.New("the caller exited")

// pidfdPID returns the PID of the process pidfd names, from the Pid line
// of its fdinfo: -1 once it has exited, 0 if it is in a PID namespace the
// agent cannot see.
func pidfdPID(pidfd int) (int, error) {
	f, err := os.Open(fmt.Sprintf("/proc/self/fdinfo/%d", pidfd))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, 64<<10))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Pid:"); ok {
			pid, err := strconv.Atoi(strings.TrimSpace(v))
			switch {
			case err != nil:
				return 0, fmt.Errorf("pidfd fdinfo: Pid %q: %w", v, err)
			case pid < 0:
				return 0, errGone
			case pid == 0:
				return 0, errors.New("the caller is in a PID namespace the agent cannot see (run the agent in the host's PID namespace)")
			}
			return pid, nil
		}
	}
	return 0, errors.New("pidfd fdinfo has no Pid line (the agent needs Linux 5.10 or later)")
}

// proc returns the path of name in the peer's /proc directory. Use it only
// inside check.
func (p *peer) proc(name string) string { return fmt.Sprintf("/proc/%d/%s", p.pid, name) }

// check runs f, which opens something of /proc/PID, and then checks that
// the peer is still alive: if it is, PID was its own when f ran, since a
// PID is not reused while its process lives.
func (p *peer) check(f func() error) error {
	if err := f(); err != nil {
		if !p.alive() {
			return errGone
		}
		return err
	}
	if !p.alive() {
		return errGone
	}
	return nil
}

// alive reports whether the peer has not exited.
func (p *peer) alive() bool {
	return unix.PidfdSendSignal(p.pidfd, 0, nil, 0) == nil
}

// openRoot returns an O_PATH fd of the peer's root directory.
func (p *peer) openRoot() (int, error) {
	var fd int
	err := p.check(func() (err error) {
		fd, err = unix.Open(p.proc("root"), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		return err
	})
	if err != nil {
		if fd > 0 {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("open the caller's root: %w", err)
	}
	return fd, nil
}

// mountInfo returns the peer's /proc/PID/mountinfo.
func (p *peer) mountInfo() ([]byte, error) {
	var b []byte
	err := p.check(func() (err error) {
		f, err := os.Open(p.proc("mountinfo"))
		if err != nil {
			return err
		}
		defer f.Close()
		b, err = io.ReadAll(io.LimitReader(f, 4<<20))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read the caller's mounts: %w", err)
	}
	return b, nil
}

func (p *peer) close() {
	closeFD(p.pidfd)
	p.pidfd = -1
}

// ownMountNS returns the inode of the agent's own mount namespace.
func ownMountNS() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/mnt", &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}
