package casync

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
)

// This file parses the records of one node, for both the streaming
// Decoder and the random-access ArchiveReader.

// recReader reads catar records in sequence.
type recReader interface {
	// header returns the next record's header without consuming it.
	// At the end of the input it returns io.EOF, or io.ErrUnexpectedEOF
	// for a partial header.
	header() (size, typ uint64, err error)
	// record consumes the next record, whose header announced size
	// (bounded by the caller), and returns its body. The body may be
	// overwritten by the next call.
	record(size uint64) ([]byte, error)
	// skipHeader consumes only the next record's 16-byte header.
	skipHeader() error
	// pos is the offset of the next unread byte.
	pos() int64
}

func formatErr(off int64, format string, args ...any) error {
	return fmt.Errorf("%w: offset %d: %s", ErrFormat, off, fmt.Sprintf(format, args...))
}

// eofErr turns the end of input in the middle of an archive into a format
// error.
func eofErr(off int64, what string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return formatErr(off, "archive truncated in %s", what)
	}
	return fmt.Errorf("casync: read catar at offset %d: %w", off, err)
}

// featureState holds the feature flags of an archive: the first ENTRY
// decides them, and every other ENTRY must repeat them.
type featureState struct {
	set   bool
	flags uint64
}

func (fs *featureState) check(off int64, f uint64) error {
	if fs.set {
		if f != fs.flags {
			return formatErr(off, "ENTRY feature flags %#x differ from the archive's %#x", f, fs.flags)
		}
		return nil
	}
	if f&^featureFlagsMax != 0 {
		return fmt.Errorf("%w: offset %d: unknown feature flags %#x", ErrUnsupported, off, f&^featureFlagsMax)
	}
	if !featuresNormalized(f) {
		return formatErr(off, "feature flags %#x are not normalized", f)
	}
	fs.set, fs.flags = true, f
	return nil
}

// featuresNormalized reports whether f has no redundant bits, as casync
// requires of an archive.
func featuresNormalized(f uint64) bool {
	has := func(b uint64) bool { return f&b != 0 }
	switch {
	case has(FeatureWithNsecTime) && has(FeatureWithUsecTime|FeatureWithSecTime|FeatureWith2SecTime),
		has(FeatureWithUsecTime) && has(FeatureWithSecTime|FeatureWith2SecTime),
		has(FeatureWithSecTime) && has(FeatureWith2SecTime),
		f&featureAnyUIDs == featureAnyUIDs,
		has(FeatureWithPermissions) && has(FeatureWithReadOnly),
		has(FeatureWithACL) && has(FeatureWithPermissions|FeatureWithReadOnly),
		has(FeatureWithACL) && !has(featureAnyUIDs|FeatureWithUserNames),
		has(FeatureExcludeNodump) && has(featureWithFlagNodump),
		has(FeatureWithSubvolumeRO) && !has(FeatureWithSubvolume):
		return false
	}
	return true
}

func validMode(f, m, entryFlags uint64) bool {
	if m&^(ModeTypeMask|ModePermMask) != 0 {
		return false
	}
	typ := m & ModeTypeMask
	switch typ {
	case ModeRegular, ModeDir:
	case ModeSocket:
		if f&FeatureWithSockets == 0 {
			return false
		}
	case ModeFIFO:
		if f&FeatureWithFIFOs == 0 {
			return false
		}
	case ModeBlock, ModeChar:
		if f&FeatureWithDeviceNodes == 0 {
			return false
		}
	case ModeSymlink:
		if f&FeatureWithSymlinks == 0 {
			return false
		}
	default:
		return false
	}
	if typ != ModeDir && entryFlags&FeatureWithSubvolume != 0 {
		return false
	}
	perm := m & ModePermMask
	if typ == ModeSymlink {
		return perm == 0o777
	}
	if f&featurePermissionsOrACL != 0 {
		return true
	}
	full, ro := uint64(0o666), uint64(0o444)
	if typ == ModeDir {
		full, ro = 0o777, 0o555
	}
	return perm == full || (f&FeatureWithReadOnly != 0 && perm == ro)
}

func validOwner(f, u uint64) bool {
	switch {
	case f&FeatureWith16BitUIDs != 0:
		return u < uidInvalid16
	case f&FeatureWith32BitUIDs != 0:
		return validUID(u)
	}
	return u == 0
}

func validMTime(f, t uint64) bool {
	switch {
	case t == math.MaxUint64:
		return false
	case f&FeatureWithNsecTime != 0:
		return true
	case f&FeatureWithUsecTime != 0:
		return t%1000 == 0
	case f&FeatureWithSecTime != 0:
		return t%nanosPerSecond == 0
	case f&FeatureWith2SecTime != 0:
		return t%(2*nanosPerSecond) == 0
	}
	return t == 0
}

// validUserName is casync's rule for USER and GROUP records.
func validUserName(b []byte) bool {
	name, ok := cstring(b)
	if !ok || len(name)+1 != len(b) || name == "" || name == "root" || name == "0" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alpha := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_'
		if !alpha && (i == 0 || !(c >= '0' && c <= '9' || c == '-')) {
			return false
		}
	}
	return true
}

// readNode reads the records of one node, from its ENTRY record up to and
// including its PAYLOAD header, SYMLINK or DEVICE record. For a directory,
// FIFO or socket it stops before the next FILENAME or GOODBYE record. The
// returned Entry has Path, Offset and, except for a directory, End set; a
// regular file's content starts at rr.pos().
func readNode(rr recReader, fs *featureState, path string) (*Entry, error) {
	off := rr.pos()
	size, typ, err := rr.header()
	if err != nil {
		return nil, eofErr(off, "ENTRY", err)
	}
	if typ != recEntry {
		return nil, formatErr(off, "got %s, want ENTRY", recordName(typ))
	}
	if size != entryRecordSize {
		return nil, formatErr(off, "ENTRY record of %d bytes, want %d", size, entryRecordSize)
	}
	b, err := rr.record(size)
	if err != nil {
		return nil, eofErr(off, "ENTRY", err)
	}
	e := &Entry{
		Path:   path,
		Offset: off,
		Flags:  le64(b[0:]),
		Mode:   le64(b[8:]),
		MTime:  le64(b[40:]),
	}
	entryFlags, uid, gid := le64(b[16:]), le64(b[24:]), le64(b[32:])
	if err := fs.check(off, e.Flags); err != nil {
		return nil, err
	}
	f := e.Flags
	switch {
	case !validMode(f, e.Mode, entryFlags):
		return nil, formatErr(off, "invalid mode %#o for feature flags %#x", e.Mode, f)
	case entryFlags&^(f&featureEntryFlagsAllowed) != 0:
		return nil, formatErr(off, "invalid ENTRY flags %#x", entryFlags)
	case entryFlags != 0 && !e.IsDir() && !e.IsRegular():
		return nil, formatErr(off, "ENTRY flags %#x on a node that is neither file nor directory", entryFlags)
	case !validOwner(f, uid) || !validOwner(f, gid):
		return nil, formatErr(off, "invalid uid %d or gid %d", uid, gid)
	case !validMTime(f, e.MTime):
		return nil, formatErr(off, "invalid mtime %d", e.MTime)
	}
	e.UID, e.GID = uint32(uid), uint32(gid)

	var (
		rank                   int
		hasUser, hasGroup      bool
		hasACLEntries, hasGObj bool
		hasXattrOrACL          bool
		lastX                  string
	)
	for {
		off := rr.pos()
		size, typ, err := rr.header()
		if err == io.EOF && (e.Type() == ModeFIFO || e.Type() == ModeSocket) {
			// An ArchiveReader reads a node up to its end; the
			// Decoder will fail to find the next record.
			e.End = off
			break
		}
		if err != nil {
			return nil, eofErr(off, "the records of "+quotePath(path), err)
		}
		if size < headerSize {
			return nil, formatErr(off, "record size %d is smaller than its header", size)
		}
		if r, repeatable, ok := metaRank(typ); ok {
			if r < rank || r == rank && !repeatable {
				return nil, formatErr(off, "%s record out of order", recordName(typ))
			}
			rank = r
			if err := readMeta(rr, e, off, size, typ, &lastX); err != nil {
				return nil, err
			}
			if r >= 3 && r <= 9 {
				hasXattrOrACL = true
			}
			switch typ {
			case recUser:
				hasUser = true
			case recGroup:
				hasGroup = true
			case recACLUser, recACLGroup:
				hasACLEntries = true
			case recACLGroupObj:
				hasGObj = true
			}
			continue
		}
		t := e.Type()
		switch typ {
		case recPayload:
			if t != ModeRegular {
				return nil, formatErr(off, "PAYLOAD record for mode %#o", e.Mode)
			}
			if size-headerSize > math.MaxInt64-uint64(off)-headerSize {
				return nil, formatErr(off, "PAYLOAD of %d bytes", size-headerSize)
			}
			if err := rr.skipHeader(); err != nil {
				return nil, eofErr(off, "PAYLOAD", err)
			}
			e.Size = size - headerSize
			e.PayloadOffset = rr.pos()
			e.End = e.PayloadOffset + int64(e.Size)
		case recSymlink:
			if t != ModeSymlink {
				return nil, formatErr(off, "SYMLINK record for mode %#o", e.Mode)
			}
			if size < headerSize+2 || size > maxSymlinkRecord {
				return nil, formatErr(off, "SYMLINK record of %d bytes", size)
			}
			b, err := rr.record(size)
			if err != nil {
				return nil, eofErr(off, "SYMLINK", err)
			}
			target, ok := cstring(b)
			if !ok || len(target) != len(b)-1 || target == "" {
				return nil, formatErr(off, "malformed symlink target")
			}
			e.LinkTarget = target
			e.End = rr.pos()
		case recDevice:
			if t != ModeBlock && t != ModeChar {
				return nil, formatErr(off, "DEVICE record for mode %#o", e.Mode)
			}
			if size != deviceRecordSize {
				return nil, formatErr(off, "DEVICE record of %d bytes", size)
			}
			b, err := rr.record(size)
			if err != nil {
				return nil, eofErr(off, "DEVICE", err)
			}
			e.RdevMajor, e.RdevMinor = le64(b), le64(b[8:])
			if e.RdevMajor >= maxDeviceMajor || e.RdevMinor >= maxDeviceMinor {
				return nil, formatErr(off, "device number %d:%d out of range", e.RdevMajor, e.RdevMinor)
			}
			e.End = rr.pos()
		case recFilename, recGoodbye:
			switch t {
			case ModeDir:
			case ModeFIFO, ModeSocket:
				e.End = off
			default:
				return nil, formatErr(off, "%s record where mode %#o needs its content record", recordName(typ), e.Mode)
			}
		default:
			return nil, formatErr(off, "unexpected %s record", recordName(typ))
		}
		break
	}
	switch {
	case (hasUser || hasGroup) && f&FeatureWithUserNames == 0:
		return nil, formatErr(off, "USER or GROUP record without the user-names feature")
	case f&FeatureWithUserNames != 0 && f&featureAnyUIDs == 0 && !(hasUser && hasGroup):
		return nil, formatErr(off, "USER and GROUP records missing")
	case hasACLEntries && !hasGObj:
		return nil, formatErr(off, "ACL entries without ACL_GROUP_OBJ")
	case e.Type() == ModeSymlink && hasXattrOrACL:
		return nil, formatErr(off, "xattrs or ACLs on a symlink")
	}
	return e, nil
}

// quotePath quotes p for an error message. A path too long to read is
// shortened to its start and end, with its length, so that an error about
// a hostile 100,000-level path stays one line.
func quotePath(p string) string {
	const head, tail = 96, 64
	switch {
	case p == "":
		return "the root"
	case len(p) <= head+tail+16:
		return fmt.Sprintf("%q", p)
	}
	return fmt.Sprintf("%q…%q (a path of %d bytes)", p[:head], p[len(p)-tail:], len(p))
}

// readMeta reads one metadata record (USER to QUOTA_PROJID) into e.
func readMeta(rr recReader, e *Entry, off int64, size, typ uint64, lastX *string) error {
	f := e.Flags
	need := func(feature uint64, min, max uint64) error {
		if feature != 0 && f&feature == 0 {
			return formatErr(off, "%s record without its feature flag", recordName(typ))
		}
		if size < min || size > max {
			return formatErr(off, "%s record of %d bytes", recordName(typ), size)
		}
		return nil
	}
	var err error
	switch typ {
	case recUser, recGroup:
		err = need(FeatureWithUserNames, headerSize+2, maxUserNameRecord)
	case recXattr:
		err = need(FeatureWithXattrs, headerSize+4, maxXattrRecord)
	case recACLUser, recACLGroup, recACLDefaultUser, recACLDefaultGroup:
		err = need(FeatureWithACL, aclUserFixedSize, maxACLNamedRecord)
	case recACLGroupObj:
		err = need(FeatureWithACL, aclGroupObjSize, aclGroupObjSize)
	case recACLDefault:
		err = need(FeatureWithACL, aclDefaultSize, aclDefaultSize)
	case recSELinux:
		err = need(FeatureWithSELinux, headerSize+2, maxSELinuxRecord)
	case recFCaps:
		err = need(0, headerSize, maxFCapsRecord) // casync does not tie FCAPS to its flag
		if err == nil && !e.IsRegular() {
			err = formatErr(off, "FCAPS record for mode %#o", e.Mode)
		}
	case recQuotaProjID:
		err = need(0, quotaProjIDSize, quotaProjIDSize)
		if err == nil && !e.IsRegular() && !e.IsDir() {
			err = formatErr(off, "QUOTA_PROJID record for mode %#o", e.Mode)
		}
	}
	if err != nil {
		return err
	}
	b, err := rr.record(size)
	if err != nil {
		return eofErr(off, recordName(typ), err)
	}
	switch typ {
	case recUser, recGroup:
		if !validUserName(b) {
			return formatErr(off, "invalid %s name", recordName(typ))
		}
	case recXattr:
		i := bytes.IndexByte(b[:min(len(b), maxXattrNameLen+1)], 0)
		if i < 0 {
			return formatErr(off, "XATTR name not terminated")
		}
		name := string(b[:i])
		if !validXattrName(name) {
			return formatErr(off, "invalid XATTR name %q", name)
		}
		if *lastX != "" && name <= *lastX {
			return formatErr(off, "XATTR %q after %q: not sorted", name, *lastX)
		}
		*lastX = name
		e.Xattrs = append(e.Xattrs, Xattr{Name: name, Value: bytes.Clone(b[i+1:])})
	case recACLUser, recACLGroup, recACLDefaultUser, recACLDefaultGroup:
		if perm := le64(b[8:]); perm&^7 != 0 {
			return formatErr(off, "invalid ACL permissions %#x", perm)
		}
		if len(b) > aclUserFixedSize-headerSize && (f&FeatureWithUserNames == 0 || !validUserName(b[16:])) {
			return formatErr(off, "invalid ACL name")
		}
		if !validOwner(f, le64(b)) {
			return formatErr(off, "invalid ACL id %d", le64(b))
		}
	case recACLGroupObj:
		if le64(b)&^7 != 0 {
			return formatErr(off, "invalid ACL permissions %#x", le64(b))
		}
	case recACLDefault:
		for i := 0; i < 4; i++ {
			p := le64(b[8*i:])
			if p&^7 != 0 && !(i == 3 && p == math.MaxUint64) {
				return formatErr(off, "invalid default ACL permissions %#x", p)
			}
		}
	case recSELinux:
		if s, ok := cstring(b); !ok || len(s) != len(b)-1 {
			return formatErr(off, "malformed SELINUX label")
		}
	case recFCaps:
		e.FCaps = bytes.Clone(b)
	case recQuotaProjID:
		if p := le64(b); p == 0 || p > math.MaxUint32 {
			return formatErr(off, "invalid quota project ID %d", p)
		}
	}
	return nil
}

// readFilename reads a FILENAME record and returns the name.
func readFilename(rr recReader) (string, error) {
	off := rr.pos()
	size, typ, err := rr.header()
	if err != nil {
		return "", eofErr(off, "FILENAME", err)
	}
	if typ != recFilename {
		return "", formatErr(off, "got %s, want FILENAME", recordName(typ))
	}
	if size < headerSize+2 || size > maxFilenameRecord {
		return "", formatErr(off, "FILENAME record of %d bytes", size)
	}
	b, err := rr.record(size)
	if err != nil {
		return "", eofErr(off, "FILENAME", err)
	}
	name, ok := cstring(b)
	if !ok || len(name) != len(b)-1 || !validName(name) {
		return "", formatErr(off, "invalid file name %q", b)
	}
	return name, nil
}

// goodbyeTail is the last item of a GOODBYE record.
type goodbyeTail struct {
	entryOffset, size uint64
}

func parseGoodbyeTail(b []byte) goodbyeTail {
	return goodbyeTail{entryOffset: le64(b), size: le64(b[8:])}
}

// checkGoodbyeTail validates a tail read at off (the offset of the tail
// itself), and returns the start of its GOODBYE record.
func checkGoodbyeTail(b []byte, off int64) (goodbyeTail, int64, error) {
	t := parseGoodbyeTail(b)
	if le64(b[16:]) != goodbyeTailMarker {
		return t, 0, formatErr(off, "no GOODBYE tail marker")
	}
	end := uint64(off) + goodbyeItemSize
	if t.size < uint64(goodbyeSize(0)) || (t.size-uint64(goodbyeSize(0)))%goodbyeItemSize != 0 || t.size > end {
		return t, 0, formatErr(off, "GOODBYE size %d", t.size)
	}
	start := end - t.size
	if t.entryOffset < entryRecordSize || t.entryOffset > start {
		return t, 0, formatErr(off, "GOODBYE entry offset %d", t.entryOffset)
	}
	return t, int64(start), nil
}
