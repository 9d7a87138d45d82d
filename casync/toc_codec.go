package casync

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"strings"
)

// tocState is what a record inherits from the records before it. The
// encoder and the decoder step through the same states.
type tocState struct {
	perm       [16]uint32 // last permission bits per file type
	uid, gid   uint32
	mtime      uint64
	flags      uint64
	cursor     int64
	stack      []tocOpen // directories whose children are still coming
	kidsFilled uint32    // kids assigned to directories so far
}

type tocOpen struct {
	dir  int32
	left uint32 // children not yet started
}

func newTOCState(features uint64) tocState {
	s := tocState{flags: features}
	for i := range s.perm {
		s.perm[i] = 0o644
	}
	s.perm[ModeDir>>12] = 0o755
	s.perm[ModeSymlink>>12] = 0o777
	return s
}

// tocValidType reports whether typ (Mode>>12) is a file type casync stores.
func tocValidType(typ uint64) bool {
	switch typ << 12 {
	case ModeSocket, ModeSymlink, ModeRegular, ModeBlock, ModeDir, ModeChar, ModeFIFO:
		return true
	}
	return false
}

// tocCheckName reports what is wrong with name as a path element, or "".
// It takes a string or a byte slice, and allocates only to report.
func tocCheckName[S ~string | ~[]byte](name S) string {
	switch {
	case len(name) == 0:
		return "empty name"
	case len(name) > tocMaxName:
		return fmt.Sprintf("name of %d bytes, longer than %d", len(name), tocMaxName)
	case string(name) == "." || string(name) == "..":
		return fmt.Sprintf("name %q", string(name))
	}
	for i := 0; i < len(name); i++ {
		switch name[i] {
		case '/':
			return fmt.Sprintf("name %q contains a slash", string(name))
		case 0:
			return fmt.Sprintf("name %q contains a NUL byte", string(name))
		}
	}
	return ""
}

func tocCommonPrefix(a, b string) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// MarshalBinary encodes t in the TOC format (see TOCVersion). It fails if
// t is inconsistent: a zero TOC, an ArchiveSize that is not the root's End,
// or offsets out of archive order.
func (t *TOC) MarshalBinary() ([]byte, error) {
	if len(t.nodes) == 0 {
		return nil, fmt.Errorf("%w: marshal TOC: no entries (a TOC needs at least the root)", ErrFormat)
	}
	if t.ArchiveSize != t.nodes[0].end {
		return nil, fmt.Errorf("%w: marshal TOC: ArchiveSize %d is not the root's End %d", ErrFormat, t.ArchiveSize, t.nodes[0].end)
	}
	if uint64(len(t.nodes)) > math.MaxUint32 || uint64(len(t.strs)) > math.MaxUint32 {
		return nil, fmt.Errorf("%w: marshal TOC: %d entries and %d string bytes exceed the format's 32-bit counts", ErrFormat, len(t.nodes), len(t.strs))
	}
	b := make([]byte, tocHeaderSize, tocHeaderSize+24*len(t.nodes)+len(t.strs)+len(t.xblob)+tocTrailer)
	copy(b, tocMagic)
	binary.LittleEndian.PutUint32(b[8:], TOCVersion)
	binary.LittleEndian.PutUint64(b[16:], uint64(t.ArchiveSize))
	binary.LittleEndian.PutUint64(b[24:], t.Features)
	binary.LittleEndian.PutUint32(b[32:], uint32(len(t.nodes)))
	binary.LittleEndian.PutUint32(b[36:], uint32(len(t.strs)))

	s := newTOCState(t.Features)
	for i := range t.nodes {
		var err error
		if b, err = t.appendRecord(b, &s, i); err != nil {
			return nil, err
		}
	}
	if len(s.stack) != 0 {
		return nil, t.errAt(int(s.stack[len(s.stack)-1].dir), "directory lacks %d children", s.stack[len(s.stack)-1].left)
	}
	sum := sha256.Sum256(b)
	return append(b, sum[:]...), nil
}

func (t *TOC) errAt(i int, format string, args ...any) error {
	return fmt.Errorf("%w: TOC entry %d (%s): %s", ErrFormat, i, quotePath(t.Path(i)), fmt.Sprintf(format, args...))
}

func (t *TOC) appendRecord(b []byte, s *tocState, i int) ([]byte, error) {
	n := &t.nodes[i]
	typ := n.mode >> 12
	head := uint64(typ)
	prevName := ""
	if i > 0 {
		if len(s.stack) == 0 {
			return nil, t.errAt(i, "entry after the root's end")
		}
		top := &s.stack[len(s.stack)-1]
		d := &t.nodes[top.dir]
		if slot := d.nkids - top.left; slot > 0 {
			prevName = t.Name(t.kids[d.kids+slot-1])
		}
		top.left--
	}
	perm := n.mode & ModePermMask
	if perm != s.perm[typ] {
		head |= tocHasPerm
	}
	if n.uid != s.uid || n.gid != s.gid {
		head |= tocHasOwner
	}
	if n.mtime != s.mtime {
		head |= tocHasMTime
		if n.mtime%1e9 != 0 {
			head |= tocHasNsec
		}
	}
	if n.flags != s.flags {
		head |= tocHasFlags
	}
	var x *tocExtra
	if n.extra != 0 {
		x = &t.extras[n.extra-1]
		if x.nxattr > 0 {
			head |= tocHasXattrs
		}
		if x.nfcaps > 0 {
			head |= tocHasFCaps
		}
	}
	b = binary.AppendUvarint(b, head)
	isDir := typ == ModeDir>>12
	if isDir {
		b = binary.AppendUvarint(b, uint64(n.nkids))
	}
	if i > 0 {
		name := t.Name(i)
		p := tocCommonPrefix(prevName, name)
		b = binary.AppendUvarint(b, uint64(p))
		b = binary.AppendUvarint(b, uint64(len(name)-p))
		b = append(b, name[p:]...)
	}
	if head&tocHasPerm != 0 {
		b = binary.AppendUvarint(b, uint64(perm))
		s.perm[typ] = perm
	}
	if head&tocHasOwner != 0 {
		b = binary.AppendUvarint(b, uint64(n.uid))
		b = binary.AppendUvarint(b, uint64(n.gid))
		s.uid, s.gid = n.uid, n.gid
	}
	if head&tocHasMTime != 0 {
		b = binary.AppendVarint(b, int64(n.mtime/1e9)-int64(s.mtime/1e9))
		if head&tocHasNsec != 0 {
			b = binary.AppendUvarint(b, n.mtime%1e9)
		}
		s.mtime = n.mtime
	}
	if head&tocHasFlags != 0 {
		b = binary.AppendUvarint(b, n.flags)
		s.flags = n.flags
	}
	if head&tocHasXattrs != 0 {
		b = binary.AppendUvarint(b, uint64(x.nxattr))
		for _, a := range t.xattrs[x.xattr : x.xattr+x.nxattr] {
			b = binary.AppendUvarint(b, uint64(a.nameLen))
			b = append(b, t.xblob[a.name:a.name+a.nameLen]...)
			b = binary.AppendUvarint(b, uint64(a.valueLen))
			b = append(b, t.xblob[a.value:a.value+a.valueLen]...)
		}
	}
	if head&tocHasFCaps != 0 {
		b = binary.AppendUvarint(b, uint64(x.nfcaps))
		b = append(b, t.xblob[x.fcaps:x.fcaps+x.nfcaps]...)
	}
	switch typ << 12 {
	case ModeRegular:
		b = binary.AppendUvarint(b, n.size)
	case ModeSymlink:
		b = binary.AppendUvarint(b, uint64(x.linkLen))
		b = append(b, t.strs[x.link:x.link+x.linkLen]...)
	case ModeBlock, ModeChar:
		b = binary.AppendUvarint(b, x.major)
		b = binary.AppendUvarint(b, x.minor)
	}

	// Offsets, as deltas that a valid archive keeps non-negative.
	switch {
	case i == 0 && n.offset != 0:
		return nil, t.errAt(i, "root at offset %d, not 0", n.offset)
	case i > 0 && n.offset <= s.cursor:
		return nil, t.errAt(i, "offset %d not after %d, the end of what precedes it", n.offset, s.cursor)
	}
	b = binary.AppendUvarint(b, uint64(n.offset-s.cursor))
	s.cursor = n.offset
	switch {
	case isDir:
		if n.nkids > 0 {
			s.stack = append(s.stack, tocOpen{dir: int32(i), left: n.nkids})
			return b, nil
		}
		if n.end <= n.offset {
			return nil, t.errAt(i, "end %d not after offset %d", n.end, n.offset)
		}
		b = binary.AppendUvarint(b, uint64(n.end-s.cursor))
	case typ<<12 == ModeRegular:
		if n.payload <= n.offset || n.end < n.payload || uint64(n.end-n.payload) < n.size {
			return nil, t.errAt(i, "payload [%d, +%d) not within (%d, %d]", n.payload, n.size, n.offset, n.end)
		}
		b = binary.AppendUvarint(b, uint64(n.payload-n.offset))
		b = binary.AppendUvarint(b, uint64(n.end-n.payload)-n.size)
	default:
		if n.end <= n.offset {
			return nil, t.errAt(i, "end %d not after offset %d", n.end, n.offset)
		}
		b = binary.AppendUvarint(b, uint64(n.end-n.offset))
	}
	s.cursor = n.end
	// Close the directories that node i completes.
	for len(s.stack) > 0 && s.stack[len(s.stack)-1].left == 0 {
		dir := int(s.stack[len(s.stack)-1].dir)
		s.stack = s.stack[:len(s.stack)-1]
		end := t.nodes[dir].end
		if end < s.cursor {
			return nil, t.errAt(dir, "end %d before its last child's end %d", end, s.cursor)
		}
		b = binary.AppendUvarint(b, uint64(end-s.cursor))
		s.cursor = end
	}
	return b, nil
}

// UnmarshalTOC decodes a TOC written by MarshalBinary. It checks the
// trailing digest and validates every record: the tree shape, name order,
// field ranges, and that offsets nest and stay within the archive. Errors
// wrap ErrFormat, or ErrUnsupported for another format version. The TOC
// does not retain data. Memory use is bounded by a constant factor of
// len(data).
func UnmarshalTOC(data []byte) (*TOC, error) {
	if len(data) < len(tocMagic)+4 {
		return nil, fmt.Errorf("%w: TOC of %d bytes is truncated: the header alone is %d", ErrFormat, len(data), tocHeaderSize)
	}
	if string(data[:len(tocMagic)]) != tocMagic {
		return nil, fmt.Errorf("%w: not a TOC: magic %q, want %q", ErrFormat, data[:len(tocMagic)], tocMagic)
	}
	if v := binary.LittleEndian.Uint32(data[8:]); v != TOCVersion {
		return nil, fmt.Errorf("%w: TOC format version %d; this build reads version %d (rebuild the TOC from the catar)", ErrUnsupported, v, TOCVersion)
	}
	if len(data) < tocHeaderSize+tocTrailer {
		return nil, fmt.Errorf("%w: TOC of %d bytes is truncated: header and digest alone are %d", ErrFormat, len(data), tocHeaderSize+tocTrailer)
	}
	body := data[:len(data)-tocTrailer]
	if sum := sha256.Sum256(body); !bytes.Equal(sum[:], data[len(body):]) {
		return nil, fmt.Errorf("%w: TOC digest mismatch: the file is corrupt or truncated", ErrFormat)
	}
	if r := binary.LittleEndian.Uint32(data[12:]); r != 0 {
		return nil, fmt.Errorf("%w: TOC header: reserved field is %#x, want 0", ErrFormat, r)
	}
	size := binary.LittleEndian.Uint64(data[16:])
	count := binary.LittleEndian.Uint32(data[32:])
	strsLen := binary.LittleEndian.Uint32(data[36:])
	records := len(body) - tocHeaderSize
	switch {
	case size > math.MaxInt64:
		return nil, fmt.Errorf("%w: TOC header: archive size %d is out of range", ErrFormat, size)
	case int64(len(data)) > MaxTOCSize(int64(size)):
		return nil, fmt.Errorf("%w: TOC of %d bytes for a %d-byte archive: no TOC is larger than %d (casync.MaxTOCSize)", ErrFormat, len(data), size, MaxTOCSize(int64(size)))
	case count == 0:
		return nil, fmt.Errorf("%w: TOC header: no entries (a TOC needs at least the root)", ErrFormat)
	case uint64(count) > uint64(records)/2:
		// Every record takes at least two bytes.
		return nil, fmt.Errorf("%w: TOC header: %d entries cannot fit in %d bytes of records", ErrFormat, count, records)
	case uint64(strsLen) > uint64(count)*tocMaxName+uint64(records):
		return nil, fmt.Errorf("%w: TOC header: %d string bytes cannot come from %d entries in %d bytes", ErrFormat, strsLen, count, records)
	}
	t := &TOC{
		ArchiveSize: int64(size),
		Features:    binary.LittleEndian.Uint64(data[24:]),
		nodes:       make([]tocNode, count),
		kids:        make([]int, count-1),
	}
	d := tocDecoder{
		t:     t,
		buf:   body,
		off:   tocHeaderSize,
		strs:  make([]byte, 0, strsLen),
		state: newTOCState(t.Features),
	}
	for i := range t.nodes {
		if err := d.record(i); err != nil {
			return nil, err
		}
	}
	switch {
	case len(d.state.stack) != 0:
		top := d.state.stack[len(d.state.stack)-1]
		return nil, d.errAt(int(top.dir), "directory lacks %d children after the last entry", top.left)
	case d.off != len(body):
		return nil, fmt.Errorf("%w: TOC: %d bytes of garbage after the last entry", ErrFormat, len(body)-d.off)
	case len(d.strs) != int(strsLen):
		return nil, fmt.Errorf("%w: TOC header: %d string bytes, but the entries hold %d", ErrFormat, strsLen, len(d.strs))
	}
	t.strs = string(d.strs)
	return t, nil
}

// UnmarshalBinary implements encoding.BinaryUnmarshaler with UnmarshalTOC.
func (t *TOC) UnmarshalBinary(data []byte) error {
	u, err := UnmarshalTOC(data)
	if err != nil {
		return err
	}
	*t = *u
	return nil
}

type tocDecoder struct {
	t     *TOC
	buf   []byte
	off   int
	strs  []byte
	state tocState
	err   error
	at    int // node being decoded, for errors
}

// errAt reports a problem with node i; its path is known as far as it has
// been decoded.
func (d *tocDecoder) errAt(i int, format string, args ...any) error {
	var elems []string
	for j := i; j > 0; j = int(d.t.nodes[j].parent) {
		n := &d.t.nodes[j]
		if int(n.name+n.nameLen) > len(d.strs) {
			break
		}
		elems = append(elems, string(d.strs[n.name:n.name+n.nameLen]))
	}
	for l, r := 0, len(elems)-1; l < r; l, r = l+1, r-1 {
		elems[l], elems[r] = elems[r], elems[l]
	}
	return fmt.Errorf("%w: TOC entry %d (%s) at byte %d: %s", ErrFormat, i, quotePath(strings.Join(elems, "/")), d.off, fmt.Sprintf(format, args...))
}

// fail records the first error; later reads then return zero values.
func (d *tocDecoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = d.errAt(d.at, format, args...)
	}
}

// uv reads a shortest-form unsigned varint.
func (d *tocDecoder) uv() uint64 {
	if d.err != nil {
		return 0
	}
	if d.off < len(d.buf) && d.buf[d.off] < 0x80 {
		v := d.buf[d.off]
		d.off++
		return uint64(v)
	}
	v, n := binary.Uvarint(d.buf[d.off:])
	switch {
	case n == 0:
		d.fail("truncated varint")
		return 0
	case n < 0:
		d.fail("varint overflows 64 bits")
		return 0
	case n > 1 && d.buf[d.off+n-1] == 0:
		d.fail("varint not in shortest form")
		return 0
	}
	d.off += n
	return v
}

// uv32 reads a varint that must fit in 32 bits.
func (d *tocDecoder) uv32(what string) uint32 {
	v := d.uv()
	if v > math.MaxUint32 {
		d.fail("%s %d exceeds 32 bits", what, v)
		return 0
	}
	return uint32(v)
}

// bytes reads n bytes, checking n against what is left.
func (d *tocDecoder) bytes(n uint64, what string) []byte {
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.buf)-d.off) {
		d.fail("%s of %d bytes runs past the end", what, n)
		return nil
	}
	b := d.buf[d.off : d.off+int(n)]
	d.off += int(n)
	return b
}

// str appends b to the string table and returns its position.
func (d *tocDecoder) str(b []byte) uint32 {
	if len(b) > cap(d.strs)-len(d.strs) {
		d.fail("string bytes exceed the %d the header declares", cap(d.strs))
		return 0
	}
	p := uint32(len(d.strs))
	d.strs = append(d.strs, b...)
	return p
}

// delta reads an offset delta and adds it to base, keeping the sum within
// the archive.
func (d *tocDecoder) delta(base int64, what string) int64 {
	v := d.uv()
	if d.err == nil && v > uint64(d.t.ArchiveSize-base) {
		d.fail("%s %d+%d is past the archive's end %d", what, base, v, d.t.ArchiveSize)
		return 0
	}
	return base + int64(v)
}

func (d *tocDecoder) record(i int) error {
	t, s := d.t, &d.state
	d.at = i
	n := &t.nodes[i]
	n.parent = -1
	head := d.uv()
	if d.err != nil {
		return d.err
	}
	typ := head & 0xf
	switch {
	case head>>tocHeadBits != 0:
		return d.errAt(i, "unknown head bits %#x", head)
	case !tocValidType(typ):
		return d.errAt(i, "unknown file type %#o", typ<<12)
	case head&tocHasNsec != 0 && head&tocHasMTime == 0:
		return d.errAt(i, "nanoseconds without an mtime")
	}
	isDir := typ<<12 == ModeDir

	// Place the node in the tree.
	prevName := []byte(nil)
	if i > 0 {
		if len(s.stack) == 0 {
			return d.errAt(i, "entry after the root's end")
		}
		if depth := len(s.stack); depth > MaxCatarDepth {
			return d.errAt(int(s.stack[len(s.stack)-1].dir), "its child, entry %d, is %s", i, depthMsg(depth))
		}
		top := &s.stack[len(s.stack)-1]
		p := &t.nodes[top.dir]
		slot := p.nkids - top.left
		if slot > 0 {
			prev := &t.nodes[t.kids[p.kids+slot-1]]
			prevName = d.strs[prev.name : prev.name+prev.nameLen]
		}
		t.kids[p.kids+slot] = i
		top.left--
		n.parent = top.dir
	}
	if isDir {
		nk := d.uv()
		if d.err != nil {
			return d.err
		}
		switch {
		case nk > uint64(len(t.nodes)-1-i):
			return d.errAt(i, "%d children, but only %d entries follow", nk, len(t.nodes)-1-i)
		case nk > uint64(len(t.kids))-uint64(s.kidsFilled):
			return d.errAt(i, "%d children: the children of all directories exceed the %d non-root entries", nk, len(t.kids))
		}
		n.kids, n.nkids = s.kidsFilled, uint32(nk)
		s.kidsFilled += uint32(nk)
	}
	if i > 0 {
		p := d.uv()
		sfx := d.uv()
		if d.err != nil {
			return d.err
		}
		switch {
		case p > uint64(len(prevName)):
			return d.errAt(i, "name shares %d bytes with the %d-byte previous name", p, len(prevName))
		case sfx == 0:
			return d.errAt(i, "name does not follow the previous name %q", prevName)
		case p+sfx > tocMaxName:
			return d.errAt(i, "name of %d bytes, longer than %d", p+sfx, tocMaxName)
		}
		suffix := d.bytes(sfx, "name")
		if d.err != nil {
			return d.err
		}
		if int(p) < len(prevName) && suffix[0] <= prevName[p] {
			if suffix[0] == prevName[p] {
				return d.errAt(i, "shared name prefix %d is not the longest", p)
			}
			return d.errAt(i, "name %q does not follow the previous name %q in strcmp order", string(prevName[:p])+string(suffix), prevName)
		}
		n.name = uint32(len(d.strs))
		n.nameLen = uint32(p + sfx)
		if uint64(cap(d.strs)-len(d.strs)) < p+sfx {
			return d.errAt(i, "string bytes exceed the %d the header declares", cap(d.strs))
		}
		d.strs = append(d.strs, prevName[:p]...)
		d.strs = append(d.strs, suffix...)
		if msg := tocCheckName(d.strs[n.name:]); msg != "" {
			return d.errAt(i, "%s", msg)
		}
	}
	if head&tocHasPerm != 0 {
		perm := d.uv()
		switch {
		case d.err != nil:
			return d.err
		case perm > ModePermMask:
			return d.errAt(i, "permission bits %#o out of range", perm)
		case uint32(perm) == s.perm[typ]:
			return d.errAt(i, "permission bits %#o repeat the inherited ones", perm)
		}
		s.perm[typ] = uint32(perm)
	}
	n.mode = uint32(typ<<12) | s.perm[typ]
	if head&tocHasOwner != 0 {
		uid, gid := d.uv32("uid"), d.uv32("gid")
		switch {
		case d.err != nil:
			return d.err
		case uid == s.uid && gid == s.gid:
			return d.errAt(i, "owner %d:%d repeats the inherited one", uid, gid)
		}
		s.uid, s.gid = uid, gid
	}
	n.uid, n.gid = s.uid, s.gid
	if head&tocHasMTime != 0 {
		z := d.uv()
		var nsec uint64
		if head&tocHasNsec != 0 {
			nsec = d.uv()
		}
		if d.err != nil {
			return d.err
		}
		delta := int64(z>>1) ^ -int64(z&1)
		sec := int64(s.mtime / 1e9)
		const maxSec = int64(math.MaxUint64 / 1_000_000_000)
		if (delta > 0 && delta > maxSec-sec) || (delta < 0 && delta < -sec) {
			return d.errAt(i, "mtime seconds %d%+d out of range", sec, delta)
		}
		sec += delta
		switch {
		case head&tocHasNsec != 0 && (nsec == 0 || nsec >= 1e9):
			return d.errAt(i, "mtime nanoseconds %d out of range 1 to 999999999", nsec)
		case uint64(sec) > (math.MaxUint64-nsec)/1e9:
			return d.errAt(i, "mtime %d.%09d s overflows 64-bit nanoseconds", sec, nsec)
		}
		mtime := uint64(sec)*1e9 + nsec
		if mtime == s.mtime {
			return d.errAt(i, "mtime %d repeats the inherited one", mtime)
		}
		s.mtime = mtime
	}
	n.mtime = s.mtime
	if head&tocHasFlags != 0 {
		f := d.uv()
		switch {
		case d.err != nil:
			return d.err
		case f == s.flags:
			return d.errAt(i, "entry flags %#x repeat the inherited ones", f)
		}
		s.flags = f
	}
	n.flags = s.flags

	typeBits := typ << 12
	var x tocExtra
	extra := typeBits == ModeSymlink || typeBits == ModeBlock || typeBits == ModeChar
	if head&tocHasXattrs != 0 {
		extra = true
		if err := d.xattrs(&x); err != nil {
			return err
		}
	}
	if head&tocHasFCaps != 0 {
		extra = true
		l := d.uv()
		b := d.bytes(l, "fcaps")
		switch {
		case d.err != nil:
			return d.err
		case l == 0:
			return d.errAt(i, "empty fcaps")
		case uint64(len(t.xblob))+l > math.MaxUint32:
			return d.errAt(i, "xattr bytes exceed 32 bits")
		}
		x.fcaps, x.nfcaps = uint32(len(t.xblob)), uint32(l)
		t.xblob = append(t.xblob, b...)
	}
	switch typeBits {
	case ModeRegular:
		n.size = d.uv()
	case ModeSymlink:
		l := d.uv()
		b := d.bytes(l, "symlink target")
		switch {
		case d.err != nil:
			return d.err
		case l == 0:
			return d.errAt(i, "symlink with an empty target")
		case bytes.IndexByte(b, 0) >= 0:
			return d.errAt(i, "symlink target %q contains a NUL byte", b)
		}
		x.link, x.linkLen = d.str(b), uint32(l)
	case ModeBlock, ModeChar:
		x.major = d.uv()
		x.minor = d.uv()
	}
	if d.err != nil {
		return d.err
	}
	if extra {
		t.extras = append(t.extras, x)
		n.extra = uint32(len(t.extras))
	}

	// Offsets.
	n.offset = d.delta(s.cursor, "offset")
	if d.err != nil {
		return d.err
	}
	switch {
	case i == 0 && n.offset != 0:
		return d.errAt(i, "root at offset %d, not 0", n.offset)
	case i > 0 && n.offset == s.cursor:
		return d.errAt(i, "offset %d not after %d, the end of what precedes it", n.offset, s.cursor)
	}
	s.cursor = n.offset
	switch {
	case isDir:
		if n.nkids > 0 {
			s.stack = append(s.stack, tocOpen{dir: int32(i), left: n.nkids})
			return nil
		}
		n.end = d.delta(n.offset, "end")
		if d.err == nil && n.end == n.offset {
			return d.errAt(i, "end %d not after offset %d", n.end, n.offset)
		}
	case typeBits == ModeRegular:
		n.payload = d.delta(n.offset, "payload offset")
		if d.err != nil {
			return d.err
		}
		if n.payload == n.offset {
			return d.errAt(i, "payload offset %d not after offset %d", n.payload, n.offset)
		}
		if n.size > uint64(t.ArchiveSize-n.payload) {
			return d.errAt(i, "payload [%d, +%d) runs past the archive's end %d", n.payload, n.size, t.ArchiveSize)
		}
		n.end = d.delta(n.payload+int64(n.size), "end")
	default:
		n.end = d.delta(n.offset, "end")
		if d.err == nil && n.end == n.offset {
			return d.errAt(i, "end %d not after offset %d", n.end, n.offset)
		}
	}
	if d.err != nil {
		return d.err
	}
	s.cursor = n.end
	// Close the directories that node i completes.
	for len(s.stack) > 0 && s.stack[len(s.stack)-1].left == 0 {
		dir := int(s.stack[len(s.stack)-1].dir)
		s.stack = s.stack[:len(s.stack)-1]
		d.at = dir
		end := d.delta(s.cursor, "end")
		if d.err != nil {
			return d.err
		}
		t.nodes[dir].end = end
		s.cursor = end
	}
	if len(s.stack) == 0 && s.cursor != t.ArchiveSize {
		return d.errAt(0, "root ends at %d, not at the archive's end %d", s.cursor, t.ArchiveSize)
	}
	return nil
}

// xattrs reads a node's xattr list into t.xattrs and t.xblob.
func (d *tocDecoder) xattrs(x *tocExtra) error {
	t := d.t
	count := d.uv()
	switch {
	case d.err != nil:
		return d.err
	case count == 0:
		return d.errAt(d.at, "empty xattr list")
	case count > uint64(len(d.buf)-d.off)/2:
		return d.errAt(d.at, "%d xattrs cannot fit in the %d bytes left", count, len(d.buf)-d.off)
	}
	x.xattr, x.nxattr = uint32(len(t.xattrs)), uint32(count)
	var prev []byte
	for k := uint64(0); k < count; k++ {
		name := d.bytes(d.uv(), "xattr name")
		value := d.bytes(d.uv(), "xattr value")
		switch {
		case d.err != nil:
			return d.err
		case len(name) == 0:
			return d.errAt(d.at, "xattr %d has an empty name", k)
		case bytes.IndexByte(name, 0) >= 0:
			return d.errAt(d.at, "xattr name %q contains a NUL byte", name)
		case k > 0 && bytes.Compare(prev, name) >= 0:
			return d.errAt(d.at, "xattr %q does not follow %q in strcmp order", name, prev)
		case uint64(len(t.xblob))+uint64(len(name))+uint64(len(value)) > math.MaxUint32:
			return d.errAt(d.at, "xattr bytes exceed 32 bits")
		}
		prev = name
		a := tocXattr{name: uint32(len(t.xblob)), nameLen: uint32(len(name))}
		t.xblob = append(t.xblob, name...)
		a.value, a.valueLen = uint32(len(t.xblob)), uint32(len(value))
		t.xblob = append(t.xblob, value...)
		t.xattrs = append(t.xattrs, a)
	}
	return nil
}
