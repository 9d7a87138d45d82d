package agent

import "runtime/debug"

// The agent's memory budget. Its heap is mostly the shared chunk LRU,
// whose buffers a collection frees at once, so the Go runtime's soft
// limit (debug.SetMemoryLimit) follows what the agent is meant to hold
// rather than letting the heap double (GOGC) past it, as boot does in a
// container.
const (
	// DefaultMemoryBytes is the default size of the chunk LRU every
	// mount shares: the kernel's page cache keeps what containers read,
	// so the LRU bridges read-ahead and the chunks neighbouring files
	// share, for the whole node.
	DefaultMemoryBytes = 32 << 20
	// memoryBase is the budget's part besides the LRU: the runtime, the
	// stores and the first mount.
	memoryBase = 24 << 20
	// memoryPerMount is what each further mount may add: its FUSE
	// server's request buffers, its Reader's loads and its read-ahead
	// state (the index and TOC are its image's, counted once).
	memoryPerMount = 4 << 20
)

// memoryLimit returns the soft limit for mounts mounts of images whose
// indexes and TOCs hold imageBytes: base (Options.MemoryLimit) with the
// first mount, memoryPerMount more for each further one, plus the images.
func memoryLimit(base int64, mounts int, imageBytes int64) int64 {
	return base + int64(max(mounts-1, 0))*memoryPerMount + imageBytes
}

// budgetMemory sets the runtime's soft memory limit for the mounts the
// agent serves now, unless Options.MemoryLimit says to leave it. It is
// called as mounts come and go; memMu keeps two calls from setting their
// limits in the other order.
func (a *Agent) budgetMemory() {
	if a.opts.MemoryLimit < 0 {
		return
	}
	a.memMu.Lock()
	defer a.memMu.Unlock()
	a.mu.Lock()
	mounts := len(a.mounts)
	a.mu.Unlock()
	_, imageBytes := a.images.stats()
	a.memLimit = memoryLimit(a.opts.MemoryLimit, mounts, imageBytes)
	debug.SetMemoryLimit(a.memLimit)
}

// MemoryLimit returns the soft memory limit the agent set last, or 0 if
// it leaves the runtime's alone.
func (a *Agent) MemoryLimit() int64 {
	a.memMu.Lock()
	defer a.memMu.Unlock()
	return a.memLimit
}
