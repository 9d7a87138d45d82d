package casync

import "io/fs"

// Mode bits as stored in a catar ENTRY record (Linux st_mode).
const (
	ModeTypeMask = 0o170000
	ModeSocket   = 0o140000
	ModeSymlink  = 0o120000
	ModeRegular  = 0o100000
	ModeBlock    = 0o060000
	ModeDir      = 0o040000
	ModeChar     = 0o020000
	ModeFIFO     = 0o010000
	ModePermMask = 0o7777
)

// Xattr is one extended attribute. Values are stored as is, with no
// trailing NUL.
type Xattr struct {
	Name  string
	Value []byte
}

// Entry describes one node of a catar archive: everything casync records
// about it, and where its records lie in the archive.
//
// The catar encoder reports an Entry for every node it writes, the decoder
// yields one for every node it reads, and the TOC stores a list of them.
type Entry struct {
	// Path is the node's slash-separated path relative to the archive
	// root, without a leading slash. The root itself is "".
	Path string
	// Mode is the Linux st_mode: file type and permission bits.
	Mode uint64
	// Flags are the catar feature flags of the ENTRY record.
	Flags    uint64
	UID, GID uint32
	// MTime is the modification time in nanoseconds since the Unix epoch.
	MTime uint64
	// Size is the payload size of a regular file, else 0.
	Size uint64
	// LinkTarget is the target of a symlink.
	LinkTarget string
	// RdevMajor and RdevMinor are set for block and character devices.
	RdevMajor, RdevMinor uint64
	// Xattrs are the extended attributes in archive (sorted) order, not
	// including security.capability, which is in FCaps.
	Xattrs []Xattr
	// FCaps is the raw value of the security.capability xattr, if any.
	FCaps []byte
	// Offset is where the node's ENTRY record starts in the catar. For
	// the root that is 0; for other nodes the FILENAME record precedes it.
	Offset int64
	// PayloadOffset is where a regular file's content starts in the catar
	// (just after the PAYLOAD record header). It is 0 for other nodes.
	PayloadOffset int64
	// End is the offset just past the node's last record: its goodbye
	// table for a directory, its PAYLOAD, SYMLINK or DEVICE record
	// otherwise.
	End int64
}

// Type returns the node's file type bits.
func (e *Entry) Type() uint64 { return e.Mode & ModeTypeMask }

// IsDir reports whether the node is a directory.
func (e *Entry) IsDir() bool { return e.Type() == ModeDir }

// IsRegular reports whether the node is a regular file.
func (e *Entry) IsRegular() bool { return e.Type() == ModeRegular }

// FileMode converts Mode into an io/fs.FileMode.
func (e *Entry) FileMode() fs.FileMode {
	m := fs.FileMode(e.Mode & 0o777)
	if e.Mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if e.Mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if e.Mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	switch e.Type() {
	case ModeDir:
		m |= fs.ModeDir
	case ModeSymlink:
		m |= fs.ModeSymlink
	case ModeBlock:
		m |= fs.ModeDevice
	case ModeChar:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case ModeFIFO:
		m |= fs.ModeNamedPipe
	case ModeSocket:
		m |= fs.ModeSocket
	}
	return m
}
