package inputfile

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"

	"syscall"
)

// ErrNotRegular is wrapped by the error for a file that is not a regular
// file: a FIFO, a device, a socket, a directory or, for Open, a symlink.
var ErrNotRegular = errors.New("not a regular file")

// ErrTooLarge is wrapped by the error for a file larger than its limit.
var ErrTooLarge = errors.New("file too large")

// Open opens name for reading and checks it before any read: it must be a
// regular file of at most max bytes, and not a symlink. The open itself
// cannot block (O_NONBLOCK, so a FIFO without a writer opens at once and
// is then refused) and does not follow a final symlink (O_NOFOLLOW). A
// caller that reads the file to its end should still stop after max
// bytes, as ReadFile does, in case the file grows.
func Open(name string, max int64) (*os.File, error) {
	return open(name, max, syscall.O_NOFOLLOW)
}

// OpenFollow is Open for a name whose symlinks are part of what it means,
// such as /etc/passwd inside the image's root: a final symlink is followed,
// and what it leads to must pass Open's checks.
func OpenFollow(name string, max int64) (*os.File, error) {
	return open(name, max, 0)
}

func open(name string, max int64, flags int) (*os.File, error) {
	f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY|flags, 0)
	if errors.Is(err, syscall.ELOOP) && flags&syscall.O_NOFOLLOW != 0 {
		return nil, fmt.Errorf("%s: %w: it is a symlink (give the file it points to)", name, ErrNotRegular)
	}
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	switch {
	case !st.Mode().IsRegular():
		f.Close()
		return nil, fmt.Errorf("%s: %w: it is a %s", name, ErrNotRegular, kind(st.Mode()))
	case st.Size() > max:
		f.Close()
		return nil, fmt.Errorf("%s: %w: %d bytes, more than the %d it can be", name, ErrTooLarge, st.Size(), max)
	}
	return f, nil
}

func kind(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "FIFO"
	case m&os.ModeCharDevice != 0:
		return "character device"
	case m&os.ModeDevice != 0:
		return "block device"
	case m&os.ModeSocket != 0:
		return "socket"
	case m.IsDir():
		return "directory"
	}
	return "file of mode " + m.String()
}

// ReadFile reads all of name with Open's checks, and fails rather than
// read more than max bytes should the file grow meanwhile.
func ReadFile(name string, max int64) ([]byte, error) {
	f, err := Open(name, max)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readAll(name, f, max)
}

// readAll reads f to its end, at most max bytes; name is for the error.
func readAll(name string, f *os.File, max int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(f, min(max, math.MaxInt64-1)+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: %w: it grew past the %d bytes it can be while being read", name, ErrTooLarge, max)
	}
	return b, nil
}
