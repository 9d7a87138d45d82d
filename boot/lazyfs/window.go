package lazyfs

// File windows: read-ahead for the page faults of large mapped files.
//
// A program maps its binary, a large library or a data file (libicudata)
// and touches it in the order its code runs: each page fault is a read of
// the kernel's fault read-around (128 KiB) somewhere in the file, not
// after the previous one. Sequential streams (readAhead) do not start
// for that, fileAhead takes only files up to fileAheadBytes, and so every
// fault that misses waits for a round trip of its own, one after the
// other: the longest chain of dependent fetches of a cold start.
//
// A file window answers the misses of one such file. From the file's
// second miss on (the first is often a read of its header), a miss that
// does not continue a sequential stream also fetches, as read-ahead, a
// window of the file centred on the read. The window starts at
// minFileWindow and doubles with each miss while at most a quarter of
// what the file's windows fetched is unread, up to maxFileWindow; it
// halves while more is, and stops once at least two first windows' worth
// can be judged and more than half of it is unread. What is unread is
// judged over the last fileWindowLog chunks the windows fetched, from the
// Reader's unread set (the chunks that count as read-ahead waste), and
// only for chunks that have arrived and were fetched fileWindowAge misses
// ago or more: a program reads a window in the order its code runs, not
// at once. So window bytes a program gets to a little later count as
// read once it does, a stopped file's windows start again when its reads
// catch up, and random reads of a large file cost the first window or
// two, not one per read.
//
// Fetching the whole of a mapped file after a few misses would suit a
// binary that is mostly read (postgres reads most of its 8.9 MB) but not
// a data file of which a program reads a fifth (libicudata, 3 of 16 MB),
// and a file larger than the LRU (8 MiB by default) fetched whole would
// be evicted before it is read and fetched again. Windows find either
// case from what is read, without knowing the file's kind, and bound the
// waste of the second.
//
// Windows are read-ahead: they take read-ahead's room (ReadAhead bytes in
// flight, clipping a window to what is left), never the reads' slots, so
// a read never waits behind one; what they fetch waits in the LRU until
// read, as all read-ahead does. The Reader follows maxFileWindows files,
// replacing the one whose last miss is the oldest.

// windowAhead notes a read of n bytes at off, in a file that is the
// archive's fileStart..fileEnd, that found a chunk not in memory and does
// not continue a sequential stream, and fetches the file's window around
// it when the file is larger than fileAheadBytes (see fileWindows).
func (r *Reader) windowAhead(off, n, fileStart, fileEnd int64) {
	if r.opts.ReadAhead <= 0 || fileEnd >= r.size || fileEnd-fileStart <= r.fileAheadBytes() {
		return
	}
	w := &r.windows
	w.mu.Lock()
	defer w.mu.Unlock()
	w.tick++
	f := w.file(fileStart, fileEnd)
	f.tick = w.tick
	f.misses++
	if f.misses < 2 {
		return
	}
	read := r.windowRead(f)
	switch {
	case read.arrived >= 2*minFileWindow && 2*read.unread > read.arrived:
		if f.size != 0 {
			r.log.Debug("file window stopped: most of it unread", "store", r.opts.StoreName,
				"file_offset", fileStart, "file_bytes", fileEnd-fileStart, "unread_bytes", read.unread, "arrived_bytes", read.arrived)
		}
		f.size = 0
	case 4*read.unread <= read.arrived:
		// Read, or nothing to judge yet: grow.
		f.size = min(max(2*f.size, minFileWindow), r.maxFileWindow())
	default:
		f.size = max(f.size/2, minFileWindow)
	}
	size := min(f.size, r.opts.ReadAhead-r.aheadInFlight.Load(), fileEnd-fileStart)
	if size <= 0 {
		return
	}
	from := max(fileStart, off+n/2-size/2)
	to := min(fileEnd, from+size)
	from = max(fileStart, to-size)
	for _, it := range r.fetchAhead(from, to) {
		f.log[f.logN%fileWindowLog] = windowChunk{i: int32(it.i), miss: int32(f.misses)}
		f.logN++
	}
}

// maxFileWindow is the largest file window: half of ReadAhead, so that
// the LRU (twice ReadAhead at least) holds a window and the read-ahead
// of other files until they are read.
func (r *Reader) maxFileWindow() int64 { return max(r.opts.ReadAhead/2, minFileWindow) }

// file returns the window of the file start..end, taking the slot of the
// file whose last miss is the oldest if it has none.
func (w *fileWindows) file(start, end int64) *fileWindow {
	oldest := &w.files[0]
	for k := range w.files {
		f := &w.files[k]
		if f.tick > 0 && f.start == start && f.end == end {
			return f
		}
		if f.tick < oldest.tick {
			oldest = f
		}
	}
	*oldest = fileWindow{start: start, end: end}
	return oldest
}

// windowBytes are the bytes of chunks a file's windows fetched that have
// arrived (or that a read waits for), and of those the bytes no read has
// used.
type windowBytes struct{ arrived, unread int64 }

// windowRead returns the windowBytes of the chunks f's windows fetched,
// of the last fileWindowLog, that are old enough to judge: fetched
// fileWindowAge misses ago or more.
func (r *Reader) windowRead(f *fileWindow) windowBytes {
	r.loadsMu.Lock()
	defer r.loadsMu.Unlock()
	r.unreadMu.Lock()
	defer r.unreadMu.Unlock()
	var b windowBytes
	for _, wc := range f.log[:min(f.logN, fileWindowLog)] {
		if f.misses-int(wc.miss) < fileWindowAge {
			continue
		}
		c := &r.idx.Chunks[wc.i]
		if l, ok := r.loads[c.ID]; ok && !l.used {
			continue // on its way, and no read waits for it yet
		}
		b.arrived += int64(c.Size)
		if _, ok := r.unread[c.ID]; ok {
			b.unread += int64(c.Size)
		}
	}
	return b
}
