package lazyfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// A minimal ELF reader for read-ahead along a program's libraries
// (elfahead.go): the program headers, PT_INTERP and the dynamic section's
// DT_NEEDED, DT_RPATH, DT_RUNPATH and the tables ld.so reads. debug/elf
// would do it too, but it adds 180 KB to boot (which must stay under
// 10 MB) and wants the section headers, which sit at the end of a file
// that has not been fetched yet. Every count and offset is bounded, so a
// truncated or hostile object costs a few small reads and an error.

const (
	// maxPhdrs bounds the program headers read (ld.so's objects have
	// about a dozen).
	maxPhdrs = 64
	// maxDynBytes bounds the dynamic section read: 4096 entries of 16
	// bytes, where libraries have a few dozen.
	maxDynBytes = 64 << 10
	// maxNeeded bounds the DT_NEEDED names taken from one object.
	maxNeeded = 128
	// maxELFName bounds a library name, a search path and PT_INTERP.
	maxELFName = 1024
	// maxELFTable bounds the bytes of one dynamic table read ahead.
	maxELFTable = 1 << 20
)

// errNotELF is the error of a file that does not start with an ELF
// identification of a class and byte order it knows.
var errNotELF = errors.New("not an ELF object")

// elfSource reads an object's bytes at a file offset, failing when they
// are out of its range or cannot be had.
type elfSource interface {
	readAt(p []byte, off int64) error
	size() int64
}

// bytesSource is an elfSource over bytes in memory.
type bytesSource []byte

func (b bytesSource) size() int64 { return int64(len(b)) }

func (b bytesSource) readAt(p []byte, off int64) error {
	if off < 0 || off > int64(len(b)) || int64(len(p)) > int64(len(b))-off {
		return fmt.Errorf("read %d bytes at offset %d of a %d-byte object: out of range", len(p), off, len(b))
	}
	copy(p, b[off:])
	return nil
}

// elfSpan is a range of an object's bytes, off..off+n.
type elfSpan struct{ off, n int64 }

// elfInfo is what read-ahead wants of an ELF object.
type elfInfo struct {
	machine uint16
	class   byte // 1: 32-bit, 2: 64-bit
	interp  string
	needed  []string
	rpath   []string // DT_RPATH, split at ':'
	runpath []string // DT_RUNPATH, split at ':'
	// tables are the file ranges of the dynamic section and the tables
	// its entries point to (string and symbol tables, hashes,
	// relocations, versions): what ld.so reads of a library it loads,
	// before it runs any of its code.
	tables []elfSpan
}

// ELF constants, from the System V ABI and glibc's elf.h.
const (
	ptLoad    = 1
	ptDynamic = 2
	ptInterp  = 3

	dtNull     = 0
	dtNeeded   = 1
	dtPltRelSz = 2
	dtHash     = 4
	dtStrtab   = 5
	dtSymtab   = 6
	dtRela     = 7
	dtRelaSz   = 8
	dtStrSz    = 10
	dtRpath    = 15
	dtRel      = 17
	dtRelSz    = 18
	dtJmpRel   = 23
	dtRunpath  = 29
	dtGNUHash  = 0x6ffffef5
	dtVersym   = 0x6ffffff0
	dtVerneed  = 0x6ffffffe
)

// elfLoad is a PT_LOAD segment: file bytes off..off+filesz at vaddr.
type elfLoad struct{ off, vaddr, filesz uint64 }

// parseELF reads the ELF object src: its identification, program
// headers, interpreter and dynamic section. An object with no dynamic
// section (static, or not an executable or library) has no names.
func parseELF(src elfSource) (*elfInfo, error) {
	var ident [64]byte
	hdr := ident[:52]
	if src.size() >= 64 {
		hdr = ident[:64]
	}
	if src.size() < 52 {
		return nil, errNotELF
	}
	if err := src.readAt(hdr, 0); err != nil {
		return nil, err
	}
	if !bytes.HasPrefix(hdr, []byte("\x7fELF")) {
		return nil, errNotELF
	}
	var bo binary.ByteOrder
	switch hdr[5] {
	case 1:
		bo = binary.LittleEndian
	case 2:
		bo = binary.BigEndian
	default:
		return nil, errNotELF
	}
	info := &elfInfo{class: hdr[4], machine: bo.Uint16(hdr[18:])}
	var phoff uint64
	var phentsize, phnum int
	switch info.class {
	case 1:
		phoff = uint64(bo.Uint32(hdr[28:]))
		phentsize, phnum = int(bo.Uint16(hdr[42:])), int(bo.Uint16(hdr[44:]))
		if phentsize < 32 {
			return nil, fmt.Errorf("ELF program header entries of %d bytes", phentsize)
		}
	case 2:
		if len(hdr) < 64 {
			return nil, errNotELF
		}
		phoff = bo.Uint64(hdr[32:])
		phentsize, phnum = int(bo.Uint16(hdr[54:])), int(bo.Uint16(hdr[56:]))
		if phentsize < 56 {
			return nil, fmt.Errorf("ELF program header entries of %d bytes", phentsize)
		}
	default:
		return nil, errNotELF
	}
	if phnum > maxPhdrs {
		return nil, fmt.Errorf("ELF object with %d program headers (at most %d)", phnum, maxPhdrs)
	}
	if phoff > uint64(src.size()) {
		return nil, fmt.Errorf("ELF program headers at %d, past the end", phoff)
	}
	ph := make([]byte, phentsize*phnum)
	if err := src.readAt(ph, int64(phoff)); err != nil {
		return nil, err
	}
	var loads []elfLoad
	var dyn, interp elfSpan
	for k := range phnum {
		p := ph[k*phentsize:]
		var typ uint32
		var off, vaddr, filesz uint64
		if info.class == 1 {
			typ, off, vaddr, filesz = bo.Uint32(p), uint64(bo.Uint32(p[4:])), uint64(bo.Uint32(p[8:])), uint64(bo.Uint32(p[16:]))
		} else {
			typ, off, vaddr, filesz = bo.Uint32(p), bo.Uint64(p[8:]), bo.Uint64(p[16:]), bo.Uint64(p[32:])
		}
		if off > uint64(src.size()) || filesz > uint64(src.size())-off {
			continue // past the end: ld.so would refuse it; read none of it
		}
		switch typ {
		case ptLoad:
			loads = append(loads, elfLoad{off: off, vaddr: vaddr, filesz: filesz})
		case ptDynamic:
			dyn = elfSpan{int64(off), int64(filesz)}
		case ptInterp:
			interp = elfSpan{int64(off), int64(filesz)}
		}
	}
	if interp.n > 0 {
		b := make([]byte, min(interp.n, maxELFName))
		if err := src.readAt(b, interp.off); err != nil {
			return nil, err
		}
		if s, ok := cString(b); ok {
			info.interp = s
		}
	}
	if dyn.n == 0 {
		return info, nil
	}
	return info, info.parseDynamic(src, bo, dyn, loads)
}

// parseDynamic reads the dynamic section dyn of src, whose segments are
// loads, into info.
func (info *elfInfo) parseDynamic(src elfSource, bo binary.ByteOrder, dyn elfSpan, loads []elfLoad) error {
	entsize := int64(16)
	if info.class == 1 {
		entsize = 8
	}
	b := make([]byte, min(dyn.n, maxDynBytes)/entsize*entsize)
	if err := src.readAt(b, dyn.off); err != nil {
		return err
	}
	info.tables = append(info.tables, elfSpan{dyn.off, int64(len(b))})
	var needed []uint64
	var strtab, strsz, rpath, runpath uint64
	hasRpath, hasRunpath := false, false
	addrs := map[uint64]uint64{} // table tag -> address
	sizes := map[uint64]uint64{} // table tag -> its size, where an entry gives one
	for k := int64(0); k+entsize <= int64(len(b)); k += entsize {
		var tag, val uint64
		if entsize == 8 {
			tag, val = uint64(bo.Uint32(b[k:])), uint64(bo.Uint32(b[k+4:]))
		} else {
			tag, val = bo.Uint64(b[k:]), bo.Uint64(b[k+8:])
		}
		switch tag {
		case dtNull:
			k = int64(len(b))
		case dtNeeded:
			if len(needed) < maxNeeded {
				needed = append(needed, val)
			}
		case dtStrtab:
			strtab = val
		case dtStrSz:
			strsz = val
		case dtRpath:
			rpath, hasRpath = val, true
		case dtRunpath:
			runpath, hasRunpath = val, true
		case dtSymtab, dtHash, dtGNUHash, dtVersym, dtVerneed:
			addrs[tag] = val
		case dtRela, dtRel, dtJmpRel:
			addrs[tag] = val
		case dtRelaSz:
			sizes[dtRela] = val
		case dtRelSz:
			sizes[dtRel] = val
		case dtPltRelSz:
			sizes[dtJmpRel] = val
		}
	}
	stroff, ok := fileOffset(loads, strtab)
	if !ok || strsz == 0 {
		return fmt.Errorf("ELF string table at address %#x is in no loaded segment", strtab)
	}
	strsz = min(strsz, uint64(src.size())-stroff)
	info.tables = append(info.tables, elfSpan{int64(stroff), int64(min(strsz, maxELFTable))})
	str := func(o uint64) (string, bool) {
		if o >= strsz {
			return "", false
		}
		b := make([]byte, min(strsz-o, maxELFName))
		if src.readAt(b, int64(stroff+o)) != nil {
			return "", false
		}
		return cString(b)
	}
	for _, o := range needed {
		if s, ok := str(o); ok && s != "" {
			info.needed = append(info.needed, s)
		}
	}
	if s, ok := str(rpath); hasRpath && ok {
		info.rpath = splitPath(s)
	}
	if s, ok := str(runpath); hasRunpath && ok {
		info.runpath = splitPath(s)
	}
	for tag, a := range addrs {
		off, ok := fileOffset(loads, a)
		if !ok {
			continue
		}
		n, ok := sizes[tag]
		switch {
		case ok:
		case tag == dtSymtab && strtab > a:
			n = strtab - a // the symbol table comes right before its strings
		default:
			n = 64 << 10 // a hash or version table: mostly smaller
		}
		n = min(n, maxELFTable, uint64(src.size())-off)
		info.tables = append(info.tables, elfSpan{int64(off), int64(n)})
	}
	return nil
}

// fileOffset returns the file offset of address a, through the PT_LOAD
// segment that maps it.
func fileOffset(loads []elfLoad, a uint64) (uint64, bool) {
	for _, l := range loads {
		if a >= l.vaddr && a-l.vaddr < l.filesz {
			return l.off + (a - l.vaddr), true
		}
	}
	return 0, false
}

// cString returns b up to its first NUL, if it has one.
func cString(b []byte) (string, bool) {
	n := bytes.IndexByte(b, 0)
	if n < 0 {
		return "", false
	}
	return string(b[:n]), true
}

// splitPath splits a colon-separated search path, dropping empty
// elements, and keeps at most 16 of them.
func splitPath(s string) []string {
	var dirs []string
	for d := range bytes.SplitSeq([]byte(s), []byte(":")) {
		if len(d) > 0 && len(dirs) < 16 {
			dirs = append(dirs, string(d))
		}
	}
	return dirs
}
