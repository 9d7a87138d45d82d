package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/boot/lazyfs"
	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore/opener"
	"github.com/bootfs/bootfs/internal/bootconfig"
	"github.com/bootfs/bootfs/internal/mountinfo"
)

// Options configure an Agent. Fields map one to one to bootfs-agent's
// flags.
type Options struct {
	// SocketDir is where the agent makes its socket (--socket-dir,
	// default DefaultSocketDir).
	SocketDir string
	// Open opens the agent's stores (its --store list) behind the node
	// cache, for chunk IDs of digest d: the caller composes it with
	// chunkstore/opener, whose Options.Cache is Cache and whose
	// CacheOptions.MaxBytes is CacheMax. The agent calls it once per
	// digest and reads every image's chunks through it, whatever store an
	// image's config names. Required.
	Open lazyfs.Opener
	// Stores are the URLs of the --store list, to tell an image's own
	// store apart in the log.
	Stores []string
	// Replace takes the socket over from an agent listening on it
	// (--replace): that one stops taking requests and goes on serving the
	// containers it mounted until they end, so an upgrade breaks none.
	Replace bool
	// Cache is the node's chunk cache directory (--cache), the one Open
	// opens its stores behind; the agent measures it for its metrics.
	// Required.
	Cache string
	// CacheMax caps the cache's size in bytes, evicting the least
	// recently used chunks, never one being read (--cache-max), as Open's
	// cache does; the agent evicts down to it after bursts. Zero means no
	// cap.
	CacheMax int64
	// MemoryBytes is the size of the in-memory chunk LRU that every mount
	// shares (--memory, default DefaultMemoryBytes).
	MemoryBytes int64
	// MemoryLimit is the Go runtime's soft memory limit
	// (debug.SetMemoryLimit) with one mount (--memory-limit); each
	// further mount adds 4 MiB, and each image served the size of its
	// parsed index and TOC. The agent sets it as mounts come and go: the
	// limit is process-wide. Zero means MemoryBytes plus 24 MiB;
	// negative leaves the runtime's limit alone (GOMEMLIMIT).
	MemoryLimit int64
	// Listener is the socket to serve, made by the holder; nil means
	// Serve makes it in SocketDir.
	Listener *net.UnixListener
	// Holder is the worker's end of the handover to its holder
	// (RunHolder, WorkerFiles): the agent takes over the mounts it holds
	// as Serve starts, and hands it every mount it makes, so that they
	// outlive this process. Nil means the mounts end with it.
	Holder *net.UnixConn
	// Restarts is how many workers ran before this one, for /metrics.
	Restarts int
	// Reader tunes fetching (its LRU and CacheBytes are the agent's).
	Reader lazyfs.ReaderOptions
	// Logger receives the agent's log; nil discards.
	Logger *slog.Logger
}

// Agent serves the lazy root filesystems of the converted containers on a
// node (see the package doc). Safe for concurrent use.
type Agent struct {
	opts   Options
	log    *slog.Logger
	lru    *lazyfs.LRU
	images *images // the parsed indexes and TOCs, one per image
	ownNS  uint64
	jobs   chan struct{} // bounds the requests being set up
	cacheS cacheSize

	mu     sync.Mutex
	stores map[casync.Digest]*opener.Opened // the node cache over the counted stores, by digest
	mounts map[uint64]*mount                // by mount namespace
	closed bool
	wg     sync.WaitGroup // mounts in a.mounts: Add as one is reserved, Done as it is dropped

	requests, refused, served atomic.Uint64
	handling                  sync.WaitGroup // requests being served
	holderMu                  sync.Mutex     // orders the messages to the holder

	memMu    sync.Mutex // orders budgetMemory's calls
	memLimit int64      // the soft memory limit set last
}

// mount is one container's filesystem.
type mount struct {
	peer   *peer
	image  *image // its index and TOC, shared with the image's other mounts
	reader *lazyfs.Reader
	// reports are the files to write as it ends (BOOTFS_STATS and
	// BOOTFS_RECORD); nil if none. Written by the mount's watcher.
	reports *reports
	served  chan struct{}      // closed when the FUSE server has stopped
	stop    context.CancelFunc // ends the prefetch
	conn    uint64             // the FUSE connection's device minor, for abort
	held    bool               // the holder holds its connection
}

// New returns an Agent. It opens no store until an image needs one.
func New(opts Options) (*Agent, error) {
	if opts.Open == nil {
		return nil, errors.New("bootfs-agent: no chunk store given (pass --store URL[,URL...]: the stores the agent may read)")
	}
	if opts.Cache == "" {
		return nil, errors.New("bootfs-agent: no cache directory given (pass --cache DIR)")
	}
	if opts.SocketDir == "" {
		opts.SocketDir = DefaultSocketDir
	}
	if opts.MemoryBytes <= 0 {
		opts.MemoryBytes = DefaultMemoryBytes
	}
	if opts.MemoryLimit == 0 {
		opts.MemoryLimit = opts.MemoryBytes + memoryBase
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ns, err := ownMountNS()
	if err != nil {
		return nil, fmt.Errorf("bootfs-agent: %w", err)
	}
	a := &Agent{
		opts: opts, log: log, lru: lazyfs.NewLRU(opts.MemoryBytes), images: newImages(), ownNS: ns,
		jobs:   make(chan struct{}, 4),
		stores: make(map[casync.Digest]*opener.Opened),
		mounts: make(map[uint64]*mount),
		cacheS: cacheSize{dir: opts.Cache},
	}
	a.budgetMemory()
	return a, nil
}

// Serve listens on the socket and serves requests until ctx ends. The
// mounts it made go on being served until their containers end; Close
// waits for that.
func (a *Agent) Serve(ctx context.Context) error {
	l := a.opts.Listener
	if l == nil {
		var err error
		if l, err = listen(a.opts.SocketDir, a.opts.Replace, a.log); err != nil {
			return err
		}
	}
	if a.opts.Holder != nil {
		if err := a.adoptAll(); err != nil {
			l.Close()
			return err
		}
	}
	a.log.Info("listening", "socket", l.Addr().String(), "cache", a.opts.Cache, "stores", strings.Join(a.opts.Stores, ","))
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	if a.opts.CacheMax > 0 {
		go a.evictEvery(ctx, evictEvery)
	}
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			a.log.Warn("accept", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		a.handling.Add(1)
		go func() {
			defer a.handling.Done()
			a.handle(c)
		}()
	}
}

// Handover waits for the requests under way, after Serve has returned:
// then a worker may exit and leave its mounts to the next (Options.Holder).
func (a *Agent) Handover() { a.handling.Wait() }

// evictEvery is how often the agent brings the node cache back under its
// cap. The Cache evicts as fetches take it over, but one eviction at a
// time: a burst of fetches during one can leave it over until the next
// fetch, which on a node whose containers all run may be long. Each
// eviction walks the cache directory, hence not more often.
const evictEvery = 30 * time.Second

func (a *Agent) evictEvery(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.mu.Lock()
		stores := slices.Collect(maps.Values(a.stores))
		a.mu.Unlock()
		// One directory: one store's eviction covers every digest's.
		if len(stores) > 0 {
			if _, err := stores[0].Cache.Evict(ctx); err != nil && ctx.Err() == nil {
				a.log.Warn("cannot evict cached chunks", "err", err)
			}
		}
	}
}

// listen makes the socket: the directory if missing, a stale socket of an
// earlier agent replaced, and mode 0600, as only root may ask.
func listen(dir string, replace bool, log *slog.Logger) (*net.UnixListener, error) {
	if dir == "" {
		dir = DefaultSocketDir
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("bootfs-agent: socket directory: %w", err)
	}
	sock := SocketPath(dir)
	if fi, err := os.Lstat(sock); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("bootfs-agent: %s exists and is not a socket; remove it or pick another --socket-dir", sock)
		}
		if c, err := net.Dial("unixpacket", sock); err == nil {
			err := replaceAgent(c.(*net.UnixConn), sock, replace, log)
			c.Close()
			if err != nil {
				return nil, err
			}
		}
		os.Remove(sock)
	}
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("bootfs-agent: listen on %s: %w", sock, err)
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("bootfs-agent: %w", err)
	}
	return l, nil
}

// replace asks the agent on the other end of c, listening on sock, to
// stop taking requests (SIGTERM, by pidfd), and waits until it has let go
// of sock. It keeps serving its containers.
func replaceAgent(c *net.UnixConn, sock string, replace bool, log *slog.Logger) error {
	if !replace {
		return fmt.Errorf("bootfs-agent: another agent is listening on %s (pass --replace to take over from it: it keeps serving its containers until they end)", sock)
	}
	old, err := peerOf(c)
	if err != nil {
		return fmt.Errorf("bootfs-agent: the agent on %s: %w", sock, err)
	}
	defer old.close()
	if err := unix.PidfdSendSignal(old.pidfd, unix.SIGTERM, nil, 0); err != nil {
		return fmt.Errorf("bootfs-agent: stop the agent on %s (pid %d): %w", sock, old.pid, err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Lstat(sock); errors.Is(err, os.ErrNotExist) {
			log.Info("took over from the running agent; it serves its containers until they end", "pid", old.pid)
			return nil
		}
	}
	return fmt.Errorf("bootfs-agent: the agent on %s (pid %d) did not let go of it in 10s", sock, old.pid)
}

// handle serves one connection: one request, one reply.
func (a *Agent) handle(c *net.UnixConn) {
	defer c.Close()
	a.requests.Add(1)
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	var done Reply // what the mount adds to the answer when it succeeds
	reply := func(err error) {
		rep := done
		if err != nil {
			a.refused.Add(1)
			rep = Reply{Error: err.Error()}
		}
		b, _ := json.Marshal(rep)
		if _, werr := c.Write(b); werr != nil && err == nil {
			a.log.Warn("cannot answer the caller", "err", werr)
		}
	}
	defer func() {
		// A bug one container's files reach must not end the agent,
		// and every other container's filesystem with it.
		if v := recover(); v != nil {
			a.log.Error("request failed with a panic", "panic", v)
			reply(fmt.Errorf("the agent failed on this image (a bug: %v)", v))
		}
	}()
	p, err := peerOf(c)
	if err != nil {
		a.log.Warn("refused a caller", "err", err)
		reply(err)
		return
	}
	log := a.log.With("pid", p.pid)
	buf := make([]byte, maxMessage)
	n, err := c.Read(buf)
	var req Request
	if err == nil {
		err = json.Unmarshal(buf[:n], &req)
	}
	if err == nil && req.Version != ProtocolVersion {
		err = fmt.Errorf("protocol version %d, the agent speaks %d (update the agent or the image)", req.Version, ProtocolVersion)
	}
	if err != nil {
		p.close()
		log.Warn("bad request", "err", err)
		reply(fmt.Errorf("bad request: %w", err))
		return
	}
	select {
	case a.jobs <- struct{}{}:
	case <-time.After(time.Minute):
		p.close()
		reply(errors.New("the agent is busy; try again"))
		return
	}
	err = a.mount(p, req, &done, log)
	<-a.jobs
	if err != nil {
		log.Warn("could not mount the caller's image", "err", err)
		reply(err)
		return
	}
	a.served.Add(1)
	log.Info("mounted the caller's image as its root")
	reply(nil)
}

// mount makes p's image the root of p's mount namespace. It owns p: p
// is closed on return or, once the image is served, when the mount ends.
// It adds to rep what the caller is told besides success.
func (a *Agent) mount(p *peer, req Request, rep *Reply, log *slog.Logger) (err error) {
	if p.uid != 0 {
		p.close()
		return fmt.Errorf("the caller runs as uid %d; only a converted image's init, as root, may ask", p.uid)
	}
	if p.mntNS == a.ownNS {
		p.close()
		return errors.New("the caller shares the agent's mount namespace; the agent mounts only into a container's own")
	}
	m := &mount{peer: p, served: make(chan struct{})}
	a.mu.Lock()
	switch {
	case a.closed:
		err = errors.New("the agent is shutting down")
	case a.mounts[p.mntNS] != nil:
		err = errors.New("the caller's mount namespace has its image mounted already")
	default:
		a.mounts[p.mntNS] = m
		a.wg.Add(1) // under mu, so Close never waits before it
	}
	a.mu.Unlock()
	if err != nil {
		p.close()
		return err
	}
	serving := false
	defer func() {
		if !serving {
			a.drop(m)
		}
	}()

	root, err := p.openRoot()
	if err != nil {
		return err
	}
	defer unix.Close(root)
	files, err := readImage(root)
	if err != nil {
		return err
	}
	if m.image, err = a.images.acquire(files); err != nil {
		return err
	}
	idx, toc := m.image.idx, m.image.toc
	a.budgetMemory()
	if a.opts.Holder == nil {
		files.index, files.toc = nil, nil // parsed: let the bytes go
	}
	if s := files.cfg.Store; s != "" && !a.allowed(s) {
		log.Info("the image names a store the agent does not read; it reads its own", "image_store", s)
	}
	mi, err := p.mountInfo()
	if err != nil {
		return err
	}
	mounts, err := mountinfo.Parse(bytes.NewReader(mi))
	if err != nil {
		return err
	}
	binds := containerBinds(mounts)
	upper := -1
	if req.Upper != "" {
		if upper, err = resolve(root, req.Upper, unix.O_PATH|unix.O_DIRECTORY); err != nil {
			return fmt.Errorf("the writable layer %s: %w", req.Upper, err)
		}
	} else if upper, err = newTmpfs(); err != nil {
		return err
	}
	defer unix.Close(upper)

	store, err := a.store(idx.Digest())
	if err != nil {
		return err
	}
	ro := a.opts.Reader
	ro.LRU = a.lru
	ro.Logger = log
	if ro.StoreName == "" {
		ro.StoreName = strings.Join(a.opts.Stores, ",")
	}
	m.reader = lazyfs.NewReader(idx, store.Store, ro)
	m.reports = newReports(req, func() *lazyfs.Recorder { return lazyfs.NewRecorder(toc) })
	fso := lazyfs.FSOptions{Logger: log, AllowSuidDev: true}
	if m.reports != nil {
		fso.Recorder = m.reports.rec
	}
	fsys, err := lazyfs.NewFS(toc, m.reader, fso)
	if err != nil {
		return err
	}
	fm, err := newFuseMount(fsys, "bootfs")
	if err != nil {
		return err
	}
	var srv *fuse.Server
	var init []byte // the connection's INIT, for a worker to come
	if a.opts.Holder != nil {
		srv, init, err = fsys.NewInitServer(fm.dev)
		if errors.Is(err, lazyfs.ErrNoResend) {
			log.Warn("this container's reads will fail if the worker restarts", "err", err)
			init, err = nil, nil
		}
		if srv == nil {
			unix.Close(fm.dev)
		}
	} else {
		srv, err = fsys.NewFDServer(fm.dev) // takes fm.dev over
	}
	if err != nil {
		unix.Close(fm.mnt)
		return err
	}
	// From here the mount's end is the watcher's: once the last
	// reference to the superblock goes (the fds below, or the
	// container's namespace), the server stops.
	serving = true
	go func() {
		srv.Serve()
		close(m.served)
	}()
	if ids := files.cfg.Prefetch; len(ids) > 0 {
		// The image's prefetch list, as boot fetches it in its own mode:
		// into the shared LRU and the node cache, for this mount's reads.
		ctx, stop := context.WithCancel(context.Background())
		m.stop = stop
		go func() {
			n := lazyfs.PrefetchList(ctx, m.reader, ids, log)
			log.Debug("prefetched", "chunks", n, "of", len(ids))
		}()
	}
	var st unix.Stat_t // a GETATTR: only once served
	if err := unix.Fstat(fm.mnt, &st); err == nil {
		m.conn = uint64(unix.Minor(st.Dev))
	} else {
		log.Warn("cannot name the mount's FUSE connection; it is not aborted if the container's namespace lingers", "err", err)
	}
	if init != nil {
		// Before the caller's root is the mount: a worker that dies
		// after leaves a mount that the next one serves.
		a.hold(m, fm.dev, init, files, log)
	}
	if a.opts.Holder != nil {
		unix.Close(fm.dev) // the server has a duplicate, the holder another
	}
	// The watcher reads m.stop, m.conn and m.held: start it once they
	// are set.
	go a.watch(m, log)

	// An upper on one of the container's volumes is a mount of its
	// namespace, which overlayfs clones only from within that namespace
	// ("failed to clone upperpath" in the agent's own). A detached clone
	// of it, made there, serves from anywhere, as the tmpfs and FUSE
	// mounts do, and the overlay's options then name no path of the
	// container's (such as /.bootfs/upper) for the workload to see.
	var ovl int
	if req.Upper != "" {
		err = inMountNamespace(p.pidfd, func() error {
			clone, err := unix.OpenTree(upper, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
			if err != nil {
				return fmt.Errorf("the writable layer %s: %w", req.Upper, err)
			}
			defer unix.Close(clone)
			ovl, err = newOverlay(fm.mnt, clone)
			return err
		})
	} else {
		ovl, err = newOverlay(fm.mnt, upper)
	}
	unix.Close(fm.mnt)
	if err != nil {
		return err
	}
	defer unix.Close(ovl)
	return inMountNamespace(p.pidfd, func() error {
		if err := pivot(ovl, bootconfig.Dir, binds); err != nil {
			return err
		}
		if m.reports != nil {
			rep.Reports = true
			rep.Warnings = m.reports.open(ovl)
		}
		return nil
	})
}

// allowed reports whether url is on the agent's store list.
func (a *Agent) allowed(url string) bool {
	for u := range strings.SplitSeq(url, ",") {
		if !slices.Contains(a.opts.Stores, strings.TrimSpace(u)) {
			return false
		}
	}
	return true
}

// store returns the node's store for digest d, opening it the first time.
func (a *Agent) store(d casync.Digest) (*opener.Opened, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if s := a.stores[d]; s != nil {
		return s, nil
	}
	s, err := a.opts.Open(context.Background(), d)
	if err != nil {
		return nil, fmt.Errorf("open the agent's stores: %w", err)
	}
	if s.Cache == nil {
		s.Close()
		return nil, fmt.Errorf("bootfs-agent: the agent's stores were opened without the node cache %s", a.opts.Cache)
	}
	a.stores[d] = s
	return s, nil
}

// abortAfter is how long the agent waits, once a container's init has
// exited, for its mount to go with its namespace before it aborts the
// FUSE connection.
const abortAfter = 10 * time.Second

// watch drops m when its FUSE server stops, and makes it stop once the
// caller has exited: its namespace normally goes with it, and the mount
// with that; if something keeps the namespace alive, the connection is
// aborted, so no mount or state of a dead container stays in the agent.
func (a *Agent) watch(m *mount, log *slog.Logger) {
	exited := make(chan struct{})
	go func() {
		waitExit(m.peer.pidfd, m.served)
		close(exited)
	}()
	select {
	case <-m.served:
	case <-exited:
		select {
		case <-m.served:
		case <-time.After(abortAfter):
			log.Warn("the caller exited but its mount lives on; aborting the FUSE connection")
			if err := abortConnection(m.conn); err != nil {
				log.Warn("cannot abort the FUSE connection", "err", err)
			}
			<-m.served
		}
	}
	a.drop(m)
	log.Debug("mount ended")
}

// drop forgets m and lets go of what it holds.
func (a *Agent) drop(m *mount) {
	if m.stop != nil {
		m.stop()
	}
	if m.reports != nil { // while m still counts as mounted: they are its last act
		m.reports.write(m.reader, a.log.With("pid", m.peer.pid))
	}
	a.mu.Lock()
	if a.mounts[m.peer.mntNS] == m {
		// Before the namespace is free for another mount: the holder
		// then never drops that one's connection for this one's.
		if m.held {
			a.tellHolder(message{Op: opDrop, NS: m.peer.mntNS})
		}
		delete(a.mounts, m.peer.mntNS)
	}
	a.mu.Unlock()
	if m.reader != nil {
		m.reader.Close()
	}
	if m.image != nil {
		a.images.release(m.image)
	}
	a.budgetMemory()
	m.peer.close()
	a.wg.Done()
}

// waitExit returns when the process pidfd names has exited (a pidfd
// polls readable then) or stop is closed.
func waitExit(pidfd int, stop <-chan struct{}) {
	for {
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 1000)
		if n > 0 || (err != nil && !errors.Is(err, unix.EINTR)) {
			return
		}
		select {
		case <-stop:
			return
		default:
		}
	}
}

// abortConnection aborts the FUSE connection with device minor conn
// through fusectl, mounting it if needed.
func abortConnection(conn uint64) error {
	const dir = "/sys/fs/fuse/connections"
	name := fmt.Sprintf("%s/%d/abort", dir, conn)
	if _, err := os.Stat(name); errors.Is(err, os.ErrNotExist) {
		_ = unix.Mount("fusectl", dir, "fusectl", 0, "")
	}
	return os.WriteFile(name, []byte("1"), 0)
}

// Mounts returns how many containers' filesystems the agent serves.
func (a *Agent) Mounts() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.mounts)
}

// Close stops taking requests and waits for the mounts being served to
// end (their containers' ends), then closes the stores.
func (a *Agent) Close() error {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.wg.Wait()
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []error
	for _, s := range a.stores {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}

// containerBinds returns the caller's mounts its new root gets: /proc,
// /dev, /sys and what Docker mounted (volumes, binds, tmpfs, the /etc
// files), a parent before its children, each with everything below it;
// not the root, /.bootfs (the image's own files and cache) nor the
// agent's socket directory, which the workload has no use for.
func containerBinds(mounts []mountinfo.Mount) []bindMount {
	var binds []bindMount
	for _, m := range mounts {
		p := path.Clean(m.Point)
		if p == "/" || !path.IsAbs(p) || under(p, bootconfig.Dir) || under(p, DefaultSocketDir) {
			continue
		}
		binds = append(binds, bindMount{point: p, volume: m.IsNamedVolume()})
	}
	slices.SortStableFunc(binds, func(a, b bindMount) int {
		return strings.Count(a.point, "/") - strings.Count(b.point, "/")
	})
	var out []bindMount
	for _, b := range binds {
		covered := slices.ContainsFunc(out, func(o bindMount) bool { return under(b.point, o.point) })
		if !covered {
			out = append(out, b)
		}
	}
	return out
}

// under reports whether p is dir or lies below it.
func under(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}
