package casync

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
)

// A catar archive is a sequence of records, each a 16-byte header (size,
// type; both little-endian uint64, size counting the header) and a body. A
// node is serialized as
//
//	ENTRY [USER] [GROUP] XATTR* ACL* [SELINUX] [FCAPS] [QUOTA_PROJID]
//	  then PAYLOAD (regular file), SYMLINK, DEVICE (block or char device),
//	  or, for a directory, (FILENAME node)* GOODBYE
//
// with the children of a directory sorted by strcmp of their names. The
// GOODBYE record is a lookup table over the children: see catar_goodbye.go.

// Record types of the catar format (casync's src/caformat.h).
const (
	recEntry           = 0x1396fabcea5bbb51
	recUser            = 0xf453131aaeeaccb3
	recGroup           = 0x25eb6ac969396a52
	recXattr           = 0xb8157091f80bc486
	recACLUser         = 0x297dc88b2ef12faf
	recACLGroup        = 0x36f2acb56cb3dd0b
	recACLGroupObj     = 0x23047110441f38f3
	recACLDefault      = 0xfe3eeda6823c8cd0
	recACLDefaultUser  = 0xbdf03df9bd010a91
	recACLDefaultGroup = 0xa0cb1168782d1f51
	recFCaps           = 0xf7267db0afed0629
	recQuotaProjID     = 0x161baf2d8772a72b
	recSELinux         = 0x46faf0602fd26c59
	recSymlink         = 0x664a6fb6830e0d6c
	recDevice          = 0xac3dace369dfe643
	recPayload         = 0x8b9e1d93d6dcffc9
	recFilename        = 0x6dbb6ebcb3161f0b
	recGoodbye         = 0xdfd35c5e8327c403
	goodbyeTailMarker  = 0x57446fa533702943
	headerSize         = 16
	entryRecordSize    = headerSize + 6*8
	deviceRecordSize   = headerSize + 2*8
	goodbyeItemSize    = 3 * 8
	quotaProjIDSize    = headerSize + 8
	aclGroupObjSize    = headerSize + 8
	aclDefaultSize     = headerSize + 4*8
	aclUserFixedSize   = headerSize + 2*8
	maxNameLen         = 255  // NAME_MAX
	maxSymlinkTarget   = 4095 // PATH_MAX without the NUL
	maxXattrNameLen    = 255
	maxXattrValueLen   = 64 << 10
	maxFCapsLen        = 64 << 10
	maxUserNameRecord  = headerSize + 256
	maxSELinuxRecord   = headerSize + 4096
	maxACLNamedRecord  = aclUserFixedSize + 256
	maxXattrRecord     = headerSize + maxXattrNameLen + 1 + maxXattrValueLen
	maxFCapsRecord     = headerSize + maxFCapsLen
	maxSymlinkRecord   = headerSize + maxSymlinkTarget + 1
	maxFilenameRecord  = headerSize + maxNameLen + 1
	maxDeviceMajor     = 1 << 12
	maxDeviceMinor     = 1 << 20
	uidInvalid16       = 0xffff
	uidInvalid32       = 0xffffffff
	nanosPerSecond     = 1_000_000_000
)

// Feature flags, as stored in every ENTRY record and in a caidx header
// (casync's CA_FORMAT_WITH_* and related bits).
const (
	FeatureWith16BitUIDs     uint64 = 0x1
	FeatureWith32BitUIDs     uint64 = 0x2
	FeatureWithUserNames     uint64 = 0x4
	FeatureWithSecTime       uint64 = 0x8
	FeatureWithUsecTime      uint64 = 0x10
	FeatureWithNsecTime      uint64 = 0x20
	FeatureWith2SecTime      uint64 = 0x40
	FeatureWithReadOnly      uint64 = 0x80
	FeatureWithPermissions   uint64 = 0x100
	FeatureWithSymlinks      uint64 = 0x200
	FeatureWithDeviceNodes   uint64 = 0x400
	FeatureWithFIFOs         uint64 = 0x800
	FeatureWithSockets       uint64 = 0x1000
	FeatureWithFATAttrs      uint64 = 0x2000 | 0x4000 | 0x8000 // hidden, system, archive
	FeatureWithChattr        uint64 = 0x3ff0000                // append, noatime, ..., projinherit
	featureWithFlagNodump    uint64 = 0x100000
	FeatureWithSubvolume     uint64 = 0x4000000
	FeatureWithSubvolumeRO   uint64 = 0x8000000
	FeatureWithXattrs        uint64 = 0x10000000
	FeatureWithACL           uint64 = 0x20000000
	FeatureWithSELinux       uint64 = 0x40000000
	FeatureWithFCaps         uint64 = 0x80000000
	FeatureWithQuotaProjID   uint64 = 0x100000000
	FeatureExcludeFile       uint64 = 0x1000000000000000
	FeatureSHA512_256        uint64 = 0x2000000000000000
	FeatureExcludeSubmounts  uint64 = 0x4000000000000000
	FeatureExcludeNodump     uint64 = 0x8000000000000000
	featureWithMask          uint64 = 0x1ffffffff
	featureFlagsMax          uint64 = featureWithMask | FeatureExcludeFile | FeatureSHA512_256 | FeatureExcludeSubmounts | FeatureExcludeNodump
	featureEntryFlagsAllowed uint64 = FeatureWithFATAttrs | FeatureWithChattr | FeatureWithSubvolume | FeatureWithSubvolumeRO
	featureAnyUIDs           uint64 = FeatureWith16BitUIDs | FeatureWith32BitUIDs
	featurePermissionsOrACL  uint64 = FeatureWithPermissions | FeatureWithACL
)

// CatarFeatures is the feature set of every archive this package encodes:
// nanosecond mtimes, 32-bit uids and gids, full permission bits, symlinks,
// device nodes, FIFOs, sockets, user.* and trusted.* xattrs, and file
// capabilities. It leaves out what a container rootfs does not need or
// cannot carry through a tar stream: user and group names, ACLs, SELinux
// labels, chattr(1) and FAT flags, btrfs subvolumes and quota project IDs.
//
// It includes FeatureSHA512_256, as casync does for its default chunk
// digest; CatarFeatureFlags gives the value for another digest. casync
// produces the same ENTRY records with
//
//	casync make --with=32bit-uids --with=nsec-time --with=permissions \
//	  --with=symlinks --with=device-nodes --with=fifos --with=sockets \
//	  --with=xattrs --with=fcaps --exclude-nodump=no --exclude-file=no
//
// (see CasyncMakeArgs), and the caidx header of such an archive carries the
// same value.
const CatarFeatures = FeatureWith32BitUIDs | FeatureWithNsecTime | FeatureWithPermissions |
	FeatureWithSymlinks | FeatureWithDeviceNodes | FeatureWithFIFOs | FeatureWithSockets |
	FeatureWithXattrs | FeatureWithFCaps | FeatureSHA512_256

// CasyncMakeArgs are the arguments that make `casync make` encode with
// CatarFeatures, so that its output is byte-identical to this package's for
// the same tree (add "--digest=sha256" for SHA256).
var CasyncMakeArgs = []string{
	"--with=32bit-uids", "--with=nsec-time", "--with=permissions",
	"--with=symlinks", "--with=device-nodes", "--with=fifos", "--with=sockets",
	"--with=xattrs", "--with=fcaps", "--exclude-nodump=no", "--exclude-file=no",
}

// CatarFeatureFlags returns the feature flags that the encoder writes for
// chunk digest d: CatarFeatures, without FeatureSHA512_256 for SHA256.
func CatarFeatureFlags(d Digest) uint64 {
	if d == SHA256 {
		return CatarFeatures &^ FeatureSHA512_256
	}
	return CatarFeatures
}

// recordName names a record type for error messages.
func recordName(t uint64) string {
	switch t {
	case recEntry:
		return "ENTRY"
	case recUser:
		return "USER"
	case recGroup:
		return "GROUP"
	case recXattr:
		return "XATTR"
	case recACLUser:
		return "ACL_USER"
	case recACLGroup:
		return "ACL_GROUP"
	case recACLGroupObj:
		return "ACL_GROUP_OBJ"
	case recACLDefault:
		return "ACL_DEFAULT"
	case recACLDefaultUser:
		return "ACL_DEFAULT_USER"
	case recACLDefaultGroup:
		return "ACL_DEFAULT_GROUP"
	case recFCaps:
		return "FCAPS"
	case recQuotaProjID:
		return "QUOTA_PROJID"
	case recSELinux:
		return "SELINUX"
	case recSymlink:
		return "SYMLINK"
	case recDevice:
		return "DEVICE"
	case recPayload:
		return "PAYLOAD"
	case recFilename:
		return "FILENAME"
	case recGoodbye:
		return "GOODBYE"
	}
	return fmt.Sprintf("unknown record type %#016x", t)
}

// metaRank orders the metadata records that may follow an ENTRY. A node's
// records must appear with non-decreasing rank; only ranks in repeatable
// may appear more than once.
func metaRank(t uint64) (rank int, repeatable, ok bool) {
	switch t {
	case recUser:
		return 1, false, true
	case recGroup:
		return 2, false, true
	case recXattr:
		return 3, true, true
	case recACLUser:
		return 4, true, true
	case recACLGroup:
		return 5, true, true
	case recACLGroupObj:
		return 6, false, true
	case recACLDefault:
		return 7, false, true
	case recACLDefaultUser:
		return 8, true, true
	case recACLDefaultGroup:
		return 9, true, true
	case recSELinux:
		return 10, false, true
	case recFCaps:
		return 11, false, true
	case recQuotaProjID:
		return 12, false, true
	}
	return 0, false, false
}

func le64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }

func putHeader(b []byte, size, typ uint64) {
	binary.LittleEndian.PutUint64(b[0:8], size)
	binary.LittleEndian.PutUint64(b[8:16], typ)
}

// validName reports whether name may be a FILENAME: 1 to 255 bytes, no
// NUL or slash, not "." or "..".
func validName(name string) bool {
	return len(name) > 0 && len(name) <= maxNameLen && name != "." && name != ".." &&
		!strings.ContainsAny(name, "/\x00")
}

// validXattrName is casync's rule for xattr names: non-empty, at most 255
// bytes, with a dot that is neither the first nor the last character.
func validXattrName(name string) bool {
	dot := strings.IndexByte(name, '.')
	return dot > 0 && dot < len(name)-1 && len(name) <= maxXattrNameLen &&
		strings.IndexByte(name, 0) < 0
}

// storedXattr reports whether casync stores xattr name in XATTR records:
// valid names in the user. and trusted. namespaces only. The other
// namespaces have records of their own (security.capability is FCAPS) or are
// not archived.
func storedXattr(name string) bool {
	return validXattrName(name) && (strings.HasPrefix(name, "user.") || strings.HasPrefix(name, "trusted."))
}

// fcapsXattr is the xattr that casync stores as an FCAPS record.
const fcapsXattr = "security.capability"

// validUID is casync's rule for 32-bit uids and gids: (uid_t)-1 and the
// 16-bit (uid_t)-1 are reserved.
func validUID(u uint64) bool { return u < uidInvalid32 && u != uidInvalid16 }

// cstring returns b up to its first NUL, and whether there was one.
func cstring(b []byte) (string, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", false
	}
	return string(b[:i]), true
}
