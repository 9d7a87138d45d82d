package lazyfs

import (
	"bytes"
	"strings"

	"github.com/bootfs/bootfs/casync"
)

// Finding an object's libraries as ld.so would, in the image's TOC.

// maxSymlinkHops bounds the symlinks followed in resolving one path, as
// the kernel's 40.
const maxSymlinkHops = 40

// lookupFollow resolves p in toc as the kernel would within the image:
// ".." and "." and symlinks, absolute ones from the image's root, in
// every component; at most maxSymlinkHops symlinks.
func lookupFollow(toc *casync.TOC, p string) (int, bool) {
	cur, hops := 0, 0
	rest := p
	for rest != "" {
		if rest[0] == '/' {
			rest = rest[1:]
			continue
		}
		name := rest
		if j := strings.IndexByte(rest, '/'); j >= 0 {
			name, rest = rest[:j], rest[j:]
		} else {
			rest = ""
		}
		switch name {
		case ".":
			continue
		case "..":
			if p := toc.Parent(cur); p >= 0 {
				cur = p
			}
			continue
		}
		if !toc.IsDir(cur) {
			return 0, false
		}
		c, ok := toc.Child(cur, name)
		if !ok {
			return 0, false
		}
		if toc.Mode(c)&casync.ModeTypeMask == casync.ModeSymlink {
			hops++
			target := toc.Attr(c).LinkTarget
			if hops > maxSymlinkHops || len(target)+len(rest) > 4096 || target == "" {
				return 0, false
			}
			if target[0] == '/' {
				cur = 0
			}
			rest = target + rest
			continue
		}
		cur = c
	}
	return cur, true
}

// defaultLibDirs are the directories ld.so searches after an object's
// own paths, for its machine and class: those of the image's
// ld.so.cache on Debian (/usr/local/lib and the multiarch dirs) and of
// musl, then the system dirs.
func defaultLibDirs(machine uint16, class byte) []string {
	var triple string
	switch machine {
	case 62: // EM_X86_64
		triple = "x86_64-linux-gnu"
	case 183: // EM_AARCH64
		triple = "aarch64-linux-gnu"
	case 3: // EM_386
		triple = "i386-linux-gnu"
	case 40: // EM_ARM
		triple = "arm-linux-gnueabihf"
	case 21: // EM_PPC64
		triple = "powerpc64le-linux-gnu"
	case 22: // EM_S390
		triple = "s390x-linux-gnu"
	case 243: // EM_RISCV
		triple = "riscv64-linux-gnu"
	}
	var dirs []string
	if triple != "" {
		dirs = append(dirs, "/usr/local/lib/"+triple, "/lib/"+triple, "/usr/lib/"+triple)
	}
	dirs = append(dirs, "/usr/local/lib")
	if class == 2 {
		dirs = append(dirs, "/lib64", "/usr/lib64")
	}
	return append(dirs, "/lib", "/usr/lib")
}

// scriptInterpreter returns the interpreter of a script's #! line.
func scriptInterpreter(head []byte) (string, bool) {
	line, _, ok := bytes.Cut(head[2:], []byte("\n"))
	if !ok {
		return "", false
	}
	f := strings.Fields(string(line))
	if len(f) == 0 || !strings.HasPrefix(f[0], "/") {
		return "", false
	}
	return f[0], true
}
