package agent

import (
	"bytes"
	"fmt"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/internal/bootconfig"
)

// images holds the parsed index and TOC of every image the agent serves:
// one copy per image, however many of its containers run. The containers
// of one image on a node are many more than its images, and the two
// parsed structures are most of what a mount holds besides the shared
// LRU. Safe for concurrent use.
type images struct {
	mu sync.Mutex
	m  map[imageKey]*image
}

// imageKey names an image by the digests of its index and TOC, as its
// config records them and as readImage has checked them against the
// bytes the container holds: two containers with one key have the same
// index and TOC, whatever else they differ in.
type imageKey struct{ index, toc string }

// image is an index and TOC that mounts share. They are immutable; refs
// counts the mounts that hold it, under images.mu.
type image struct {
	key  imageKey
	idx  *casync.Index
	toc  *casync.TOC
	size int64 // what idx and toc hold in memory
	refs int
	// memfd holds the index and TOC for a worker to come (hold); -1
	// until a mount is handed to the holder.
	memfd int
}

func newImages() *images { return &images{m: make(map[imageKey]*image)} }

// acquire returns the parsed index and TOC of files, parsing them only if
// no mount holds them yet. The caller releases it when its mount ends. A
// parse error is this caller's only: nothing of files is kept then, so a
// crafted index or TOC affects no other container.
func (s *images) acquire(files *imageFiles) (*image, error) {
	key := imageKey{index: files.cfg.Index.Digest, toc: files.cfg.TOC.Digest}
	s.mu.Lock()
	if im := s.m[key]; im != nil {
		im.refs++
		s.mu.Unlock()
		return im, nil
	}
	s.mu.Unlock()

	// Parsed outside the lock: a big image's TOC takes a while, and
	// other images' mounts need not wait for it. Two containers of a new
	// image may both parse it; the second keeps the first's.
	idx, err := casync.ReadIndex(bytes.NewReader(files.index))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", bootconfig.IndexPath, err)
	}
	toc, err := casync.UnmarshalTOC(files.toc)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", bootconfig.TOCPath, err)
	}
	if toc.ArchiveSize != int64(idx.Length()) {
		return nil, fmt.Errorf("%s describes a %d-byte archive, %s a %d-byte one (the image's files do not belong together; convert it again)", bootconfig.TOCPath, toc.ArchiveSize, bootconfig.IndexPath, idx.Length())
	}
	size := int64(cap(idx.Chunks))*int64(unsafe.Sizeof(casync.IndexChunk{})) + toc.MemSize()

	s.mu.Lock()
	defer s.mu.Unlock()
	im := s.m[key]
	if im == nil {
		im = &image{key: key, idx: idx, toc: toc, size: size, memfd: -1}
		s.m[key] = im
	}
	im.refs++
	return im, nil
}

// release drops a mount's hold on im, and forgets im with the last one.
func (s *images) release(im *image) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if im.refs--; im.refs == 0 && s.m[im.key] == im {
		delete(s.m, im.key)
		closeFD(im.memfd)
		im.memfd = -1
	}
}

// memfd returns im's memfd (imageMemfd) of files' index and TOC, making
// it the first time. The caller does not close it.
func (s *images) memfd(im *image, files *imageFiles) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if im.memfd >= 0 {
		return im.memfd, nil
	}
	fd, err := imageMemfd(files.index, files.toc)
	if err != nil {
		return -1, err
	}
	im.memfd = fd
	return fd, nil
}

// setMemfd gives im the memfd fd, an adopted mount's, unless it has one;
// it owns fd either way.
func (s *images) setMemfd(im *image, fd int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if im.memfd < 0 {
		im.memfd = fd
		return
	}
	unix.Close(fd)
}

// stats returns how many images are held and the memory their indexes
// and TOCs take.
func (s *images) stats() (n int, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, im := range s.m {
		bytes += im.size
	}
	return len(s.m), bytes
}
