package lazyfs

import "sync"

// The parts of a Reader's state that its files of behaviour share: a
// chunk's one load, the sequential streams read-ahead follows and the
// windows of large files.

// fetchKind says who started a load.
type fetchKind uint8

const (
	kindRead     fetchKind = iota // a read that needs the chunk
	kindAhead                     // read-ahead of a sequential stream
	kindPrefetch                  // the prefetch list
)

// A load gets one chunk into memory, once: a read that needs a chunk
// being loaded waits for that load instead of reading the chunk again.
// Read-ahead from the cache loads only from the local cache (localOnly);
// the other loads ask the store too.
type load struct {
	done      chan struct{}
	localOnly bool
	kind      fetchKind
	// parent is the Reader's chainTop when the load started.
	parent int64
	// Under Reader.loadsMu: waiters counts the pending chunks that wait
	// for the load; when it finishes, each of them gets a reference on
	// buf. used says a read has waited for it. The other fields are set
	// before done is closed. net says the chunk came from the network.
	// next is the load that a failed local-only, read-ahead or prefetch
	// load started for its waiters, who then wait for it.
	waiters  int32
	used     bool
	finished bool
	net      bool
	buf      *chunkBuf
	err      error
	next     *load
}

// stream is a sequential stream of reads of the archive, which read-ahead
// follows: within a file, and on into the next files, which come next in
// the archive (a catar is in directory order).
type stream struct {
	next    int64 // where a sequential read would start
	aheadTo int64 // read-ahead has been started up to here
	depth   int64 // read-ahead kept in front of the reads; 0 until the stream is sequential
	tick    int64 // when it was last read, to replace the oldest
	fileEnd int64 // where the file of the last read ends
	crossed bool  // a read went on past the end of a file
}

const (
	// maxStreams is how many sequential streams read-ahead follows at
	// once: processes reading files side by side.
	maxStreams = 8
	// minAheadDepth is where a stream's read-ahead starts, and what a
	// wasteful one shrinks back to: two chunks of casync's average.
	minAheadDepth = 128 << 10
	// streamGap is how far past a stream's end a read may start and
	// still continue it: over the entry headers between files, and
	// files nobody reads, in archive order.
	streamGap = 64 << 10
)

const (
	// maxFileWindows is how many large files the windows follow.
	maxFileWindows = 8
	// minFileWindow is a file's first window: four of the kernel's
	// fault read-arounds.
	minFileWindow = 512 << 10
	// fileWindowLog is how many of the chunks a file's windows fetched
	// the Reader remembers, to judge how much of them is read.
	fileWindowLog = 256
	// fileWindowAge is how many misses of its file later a window is
	// judged: a program reads a window in the order its code runs, not
	// at once, and a window that works makes the misses rarer.
	fileWindowAge = 2
)

// fileWindows is the state of the windows of the files followed.
type fileWindows struct {
	mu    sync.Mutex
	files [maxFileWindows]fileWindow
	tick  int64
}

// fileWindow is the window of one file, the archive's start..end.
type fileWindow struct {
	start, end int64
	tick       int64 // when it last missed, to replace the oldest; 0: free
	misses     int
	size       int64 // the next window's bytes; 0: stopped, or not started
	log        [fileWindowLog]windowChunk
	logN       int // chunks logged in all; the last ones are in log
}

// windowChunk is a chunk a file's window fetched: index i of the index,
// at the file's miss number miss.
type windowChunk struct{ i, miss int32 }
