package casync

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"math"
	"strings"
	"unsafe"
)

// The TOC file format, version 1.
//
// A TOC lists every node of one catar archive in archive (pre-order) order,
// with everything an Entry holds. All integers are little-endian; "uv" is an
// unsigned LEB128 varint (encoding/binary's Uvarint) in its shortest form,
// and "zz" is a zigzag-encoded signed varint.
//
//	header, 40 bytes:
//	  0  [8]byte  magic "\x89TOC\r\n\x1a\n"
//	  8  uint32   version (TOCVersion)
//	 12  uint32   reserved, 0
//	 16  uint64   archive size: the catar's length, equal to the root's End
//	 24  uint64   archive feature flags
//	 32  uint32   entry count, at least 1 (the root)
//	 36  uint32   string bytes: the total length of all names and link
//	              targets once decoded, so a reader allocates them once
//	entry records, one per node in archive order (below)
//	trailer: [32]byte SHA-256 of every byte before it
//
// Names are stored as a tree, not as paths: every record after the root's
// is a child of the innermost directory still open, and a directory record
// says how many children follow it (in pre-order, interleaved with their
// own descendants). Siblings come in strcmp order, so a name is front-coded
// against its previous sibling: the length of the prefix they share, then
// the rest.
//
// Fields that usually repeat are left out and inherited: the permission
// bits from the last node of the same file type (initially 0755 for
// directories, 0777 for symlinks, 0644 otherwise), the owner, modification
// time and entry flags from the previous record (the flags of the first
// record from the header's feature flags). Archive offsets are deltas from a
// cursor that walks through the catar: after a directory's record it is the
// directory's Offset, after any other node (or a closed directory) its End.
//
//	record:
//	  uv   head: bits 0-3 file type (Mode>>12); bit 4 permissions follow;
//	       bit 5 owner follows; bit 6 mtime follows; bit 7 mtime has
//	       nanoseconds; bit 8 entry flags follow; bit 9 xattrs follow;
//	       bit 10 fcaps follow; higher bits 0
//	  uv   child count                        directories
//	  uv   shared prefix length               all but the root
//	  uv   suffix length, then suffix bytes   all but the root
//	  uv   permission bits (Mode & 07777)     bit 4
//	  uv   UID, uv GID                        bit 5
//	  zz   seconds minus the previous record's seconds     bit 6
//	  uv   nanoseconds, 1 to 999999999        bit 7
//	  uv   entry flags                        bit 8
//	  uv   xattr count, then per xattr: uv name length, name,
//	       uv value length, value (names strictly increasing)  bit 9
//	  uv   fcaps length, then fcaps bytes     bit 10
//	  uv   size                               regular files
//	  uv   target length, then target         symlinks
//	  uv   major, uv minor                    block and char devices
//	  uv   Offset minus cursor (0 for the root, else at least 1)
//	  uv   PayloadOffset minus Offset         regular files
//	  uv   End minus PayloadOffset+Size       regular files
//	  uv   End minus Offset                   other non-directories
//	then, for each directory this record completes, innermost first
//	(an empty directory completes itself):
//	  uv   End minus cursor
//
// A record sets a presence bit only for a value that differs from the
// inherited one, and a shared prefix is always the longest, so every TOC
// has exactly one encoding: decoding and re-encoding gives the same bytes,
// and Digest identifies the content.

// MaxTOCSize is the largest TOC an archive of archiveSize bytes can have:
// twice the archive, plus the TOC's header and digest. UnmarshalTOC
// refuses a larger one, and a reader can refuse to read more than this
// from a file before it parses anything.
//
// The bound holds because a TOC stores nothing the archive lacks: a name,
// link target or xattr it holds is in the archive too (in FILENAME,
// SYMLINK and XATTR records), and the rest of an entry's record, at most
// 11 varints of 10 bytes and a shared-prefix length, is under the 104
// bytes of fixed records (ENTRY, FILENAME header, GOODBYE item) that every
// entry costs the archive.
func MaxTOCSize(archiveSize int64) int64 {
	if archiveSize < 0 || archiveSize > (math.MaxInt64-tocHeaderSize-tocTrailer)/2 {
		return math.MaxInt64
	}
	return 2*archiveSize + tocHeaderSize + tocTrailer
}

// TOCVersion is the version of the TOC format that MarshalBinary writes
// and UnmarshalTOC reads.
const TOCVersion = 1

const (
	tocMagic      = "\x89TOC\r\n\x1a\n"
	tocHeaderSize = 40
	tocTrailer    = sha256.Size
	// tocMaxName is the longest name a TOC holds, Linux's NAME_MAX.
	tocMaxName = 255
)

// Head bits of an entry record.
const (
	tocHasPerm = 1 << (4 + iota)
	tocHasOwner
	tocHasMTime
	tocHasNsec
	tocHasFlags
	tocHasXattrs
	tocHasFCaps
	tocHeadBits = 11
)

// TOC is the metadata index of a catar archive: every node's Entry, and
// the tree they form. Nodes are numbered in archive (pre-order) order;
// node 0 is the root. A TOC is immutable and safe for concurrent use.
//
// Lookup, Child, Children, Parent and Name do not allocate, so a FUSE
// server can answer lookup and readdir from them directly. Entry builds a
// fresh Entry on each call: a TOC keeps its nodes in flat arrays rather
// than as one Entry each, which is what makes UnmarshalTOC fast (a handful
// of allocations for the whole archive).
type TOC struct {
	// ArchiveSize is the length of the catar in bytes.
	ArchiveSize int64
	// Features are the archive's catar feature flags.
	Features uint64

	nodes  []tocNode
	kids   []int  // children of every directory, each run in strcmp order
	strs   string // names and link targets
	extras []tocExtra
	xattrs []tocXattr
	xblob  []byte // xattr names and values, fcaps
}

type tocNode struct {
	mtime, size, flags   uint64
	offset, payload, end int64
	mode, uid, gid       uint32
	parent               int32
	name, nameLen        uint32 // in strs
	kids, nkids          uint32 // in kids
	extra                uint32 // 1 + index in extras, or 0
}

// tocExtra holds what only some nodes have.
type tocExtra struct {
	link, linkLen uint32 // in strs
	major, minor  uint64
	xattr, nxattr uint32 // in xattrs
	fcaps, nfcaps uint32 // in xblob
}

type tocXattr struct {
	name, nameLen, value, valueLen uint32 // in xblob
}

// MemSize returns the bytes of memory the TOC holds, for a caller that
// budgets memory across many TOCs (a node agent serving many images).
func (t *TOC) MemSize() int64 {
	return int64(unsafe.Sizeof(*t)) +
		int64(cap(t.nodes))*int64(unsafe.Sizeof(tocNode{})) +
		int64(cap(t.kids))*int64(unsafe.Sizeof(int(0))) +
		int64(len(t.strs)) +
		int64(cap(t.extras))*int64(unsafe.Sizeof(tocExtra{})) +
		int64(cap(t.xattrs))*int64(unsafe.Sizeof(tocXattr{})) +
		int64(cap(t.xblob))
}

// Len returns the number of nodes, at least 1.
func (t *TOC) Len() int { return len(t.nodes) }

// Name returns the last element of node i's path; "" for the root.
func (t *TOC) Name(i int) string {
	n := &t.nodes[i]
	return t.strs[n.name : n.name+n.nameLen]
}

// Parent returns the index of node i's directory, or -1 for the root.
func (t *TOC) Parent(i int) int { return int(t.nodes[i].parent) }

// Children returns the children of node i in strcmp order, or nil if it
// is not a directory or is empty. The slice is shared: do not modify it.
func (t *TOC) Children(i int) []int {
	n := &t.nodes[i]
	if n.nkids == 0 {
		return nil
	}
	return t.kids[n.kids : n.kids+n.nkids : n.kids+n.nkids]
}

// Mode returns node i's Mode (file type and permission bits), as Entry
// would, without allocating: enough for a directory listing.
func (t *TOC) Mode(i int) uint64 { return uint64(t.nodes[i].mode) }

// IsDir reports whether node i is a directory.
func (t *TOC) IsDir(i int) bool { return t.nodes[i].mode&ModeTypeMask == ModeDir }

// Child returns the index of the child of directory dir called name.
func (t *TOC) Child(dir int, name string) (int, bool) {
	n := &t.nodes[dir]
	lo, hi := n.kids, n.kids+n.nkids
	for lo < hi {
		mid := lo + (hi-lo)/2
		k := &t.nodes[t.kids[mid]]
		switch c := strings.Compare(t.strs[k.name:k.name+k.nameLen], name); {
		case c == 0:
			return t.kids[mid], true
		case c < 0:
			lo = mid + 1
		default:
			hi = mid
		}
	}
	return -1, false
}

// Lookup returns the index of the node at path, relative to the archive
// root. "" and "/" name the root; leading, trailing and repeated slashes
// are ignored. "." and ".." are not resolved and are never found.
func (t *TOC) Lookup(path string) (int, bool) {
	i := 0
	for path != "" {
		if path[0] == '/' {
			path = path[1:]
			continue
		}
		name := path
		if j := strings.IndexByte(path, '/'); j >= 0 {
			name, path = path[:j], path[j:]
		} else {
			path = ""
		}
		c, ok := t.Child(i, name)
		if !ok {
			return -1, false
		}
		i = c
	}
	return i, true
}

// Path returns node i's slash-separated path relative to the archive root,
// without a leading slash; "" for the root.
func (t *TOC) Path(i int) string {
	size := -1
	for j := i; j > 0; j = int(t.nodes[j].parent) {
		size += int(t.nodes[j].nameLen) + 1
	}
	if size <= 0 {
		return ""
	}
	b := make([]byte, size)
	end := size
	for j := i; j > 0; j = int(t.nodes[j].parent) {
		n := &t.nodes[j]
		end -= copy(b[end-int(n.nameLen):end], t.strs[n.name:n.name+n.nameLen])
		if end > 0 {
			end--
			b[end] = '/'
		}
	}
	return string(b)
}

// Attr returns node i as an Entry without its Path and its Xattrs, and
// without copies: LinkTarget and FCaps share the TOC's memory and must not
// be modified. It never allocates, which makes it cheap enough for every
// stat and read a filesystem answers; Xattr and Xattrs give the rest.
func (t *TOC) Attr(i int) Entry {
	n := &t.nodes[i]
	e := Entry{
		Mode:          uint64(n.mode),
		Flags:         n.flags,
		UID:           n.uid,
		GID:           n.gid,
		MTime:         n.mtime,
		Size:          n.size,
		Offset:        n.offset,
		PayloadOffset: n.payload,
		End:           n.end,
	}
	if n.extra == 0 {
		return e
	}
	x := &t.extras[n.extra-1]
	e.LinkTarget = t.strs[x.link : x.link+x.linkLen]
	e.RdevMajor, e.RdevMinor = x.major, x.minor
	if x.nfcaps > 0 {
		e.FCaps = t.xblob[x.fcaps : x.fcaps+x.nfcaps : x.fcaps+x.nfcaps]
	}
	return e
}

// nodeXattrs returns node i's extended attributes as stored.
func (t *TOC) nodeXattrs(i int) []tocXattr {
	n := &t.nodes[i]
	if n.extra == 0 {
		return nil
	}
	x := &t.extras[n.extra-1]
	return t.xattrs[x.xattr : x.xattr+x.nxattr]
}

func (t *TOC) xattrValue(a *tocXattr) []byte {
	return t.xblob[a.value : a.value+a.valueLen : a.value+a.valueLen]
}

// Xattr returns the value of node i's extended attribute name (FCaps, not
// this, holds security.capability). The value shares the TOC's memory and
// must not be modified. It does not allocate.
func (t *TOC) Xattr(i int, name string) ([]byte, bool) {
	stored := t.nodeXattrs(i)
	for k := range stored {
		if a := &stored[k]; string(t.xblob[a.name:a.name+a.nameLen]) == name {
			return t.xattrValue(a), true
		}
	}
	return nil, false
}

// Xattrs returns node i's extended attributes in archive order, as Entry
// has them, with values that share the TOC's memory.
func (t *TOC) Xattrs(i int) []Xattr {
	stored := t.nodeXattrs(i)
	if len(stored) == 0 {
		return nil
	}
	out := make([]Xattr, len(stored))
	for k := range stored {
		a := &stored[k]
		out[k] = Xattr{Name: string(t.xblob[a.name : a.name+a.nameLen]), Value: t.xattrValue(a)}
	}
	return out
}

// Entry returns node i as a new Entry, with Path set. The caller owns it.
func (t *TOC) Entry(i int) *Entry {
	e := t.Attr(i)
	e.Path = t.Path(i)
	e.Xattrs = t.Xattrs(i)
	for k := range e.Xattrs {
		e.Xattrs[k].Value = bytes.Clone(e.Xattrs[k].Value)
	}
	if e.FCaps != nil {
		e.FCaps = bytes.Clone(e.FCaps)
	}
	return &e
}

// Digest returns "sha256:<hex>" of MarshalBinary's output, the form
// recorded in config.json, or "" if t cannot be marshalled. Because a TOC
// has a single encoding, a TOC read by UnmarshalTOC has the digest of the
// bytes it was read from.
func (t *TOC) Digest() string {
	b, err := t.MarshalBinary()
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}
