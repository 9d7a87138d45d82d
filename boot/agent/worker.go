package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bootfs/bootfs/boot/lazyfs"
	"github.com/bootfs/bootfs/internal/bootconfig"
)

// hold hands m's connection (dev, whose INIT was init) to the holder, with
// what a worker to come needs to serve it. A mount the holder does not
// get still works; it only does not outlive this worker.
func (a *Agent) hold(m *mount, dev int, init []byte, files *imageFiles, log *slog.Logger) {
	memfd, err := a.images.memfd(m.image, files)
	if err == nil {
		st := &mountState{NS: m.peer.mntNS, Conn: m.conn, Init: init, Index: m.image.key.index, TOC: m.image.key.toc}
		a.holderMu.Lock()
		err = send(a.opts.Holder, message{Op: opHold, Mount: st}, dev, m.peer.pidfd, memfd)
		a.holderMu.Unlock()
	}
	if err != nil {
		log.Warn("this container's reads will fail if the worker restarts: cannot hand its mount to the holder", "err", err)
		return
	}
	m.held = true
}

// tellHolder sends m to the holder, logging a failure.
func (a *Agent) tellHolder(m message) {
	a.holderMu.Lock()
	defer a.holderMu.Unlock()
	if err := send(a.opts.Holder, m); err != nil {
		a.log.Warn("cannot tell the holder", "op", m.Op, "err", err)
	}
}

// adoptAll serves the mounts the holder holds, which earlier workers made,
// until the holder says it has handed all over. A mount that cannot be
// served is dropped (the holder lets go of its connection, which fails
// its container's reads) and the others go on.
func (a *Agent) adoptAll() error {
	n := 0
	for {
		msg, fds, err := receive(a.opts.Holder)
		if err != nil {
			return fmt.Errorf("bootfs-agent: take over from the holder: %w", err)
		}
		switch msg.Op {
		case opReady:
			if n > 0 {
				a.log.Info("took over the running containers", "mounts", n)
			}
			return nil
		case opHold:
			if err := a.adopt(msg.Mount, fds); err != nil {
				a.log.Error("cannot serve a running container's mount; its reads fail", "ns", msg.Mount.NS, "err", err)
				a.tellHolder(message{Op: opDrop, NS: msg.Mount.NS})
				continue
			}
			n++
		default:
			closeFDs(fds)
		}
	}
}

// adopt serves the mount of st, whose connection an earlier worker served:
// fds are its /dev/fuse, the caller's pidfd and the image's memfd.
func (a *Agent) adopt(st *mountState, fds []int) (err error) {
	dev, pidfd, memfd := fds[fdDev], fds[fdPid], fds[fdImage]
	defer unix.Close(dev) // the server takes a duplicate
	p := &peer{pidfd: pidfd, mntNS: st.NS}
	if p.pid, err = pidfdPID(pidfd); err != nil {
		p.pid = -1 // exited: serve what is left until the mount goes
	}
	log := a.log.With("pid", p.pid)
	m := &mount{peer: p, served: make(chan struct{}), conn: st.Conn, held: true}
	a.mu.Lock()
	if a.mounts[st.NS] != nil {
		err = errors.New("a mount of this namespace is served already")
	} else {
		a.mounts[st.NS] = m
		a.wg.Add(1)
	}
	a.mu.Unlock()
	if err != nil {
		closeFDs([]int{pidfd, memfd})
		return err
	}
	serving := false
	defer func() {
		if !serving {
			m.held = false // adoptAll tells the holder
			a.drop(m)
		}
	}()
	index, toc, err := readImageMemfd(memfd, st)
	if err != nil {
		unix.Close(memfd)
		return err
	}
	files := &imageFiles{
		cfg:   &bootconfig.Config{Index: bootconfig.Blob{Digest: st.Index}, TOC: bootconfig.Blob{Digest: st.TOC}},
		index: index, toc: toc,
	}
	if m.image, err = a.images.acquire(files); err != nil {
		unix.Close(memfd)
		return err
	}
	a.images.setMemfd(m.image, memfd)
	a.budgetMemory()
	store, err := a.store(m.image.idx.Digest())
	if err != nil {
		return err
	}
	ro := a.opts.Reader
	ro.LRU = a.lru
	ro.Logger = log
	if ro.StoreName == "" {
		ro.StoreName = strings.Join(a.opts.Stores, ",")
	}
	m.reader = lazyfs.NewReader(m.image.idx, store.Store, ro)
	fsys, err := lazyfs.NewFS(m.image.toc, m.reader, lazyfs.FSOptions{Logger: log, AllowSuidDev: true})
	if err != nil {
		return err
	}
	srv, err := fsys.AdoptServer(dev, st.Init)
	if err != nil {
		return err
	}
	serving = true
	go func() {
		srv.Serve()
		close(m.served)
	}()
	// The requests the last worker read and never answered; those it
	// never read wait in the connection's queue for this one.
	if err := lazyfs.Resend(dev); err != nil {
		log.Warn("cannot have the kernel re-send the requests under way; they may hang", "err", err)
	}
	go a.watch(m, log)
	return nil
}
