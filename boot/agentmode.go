package boot

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/bootfs/bootfs/boot/agent"
	"github.com/bootfs/bootfs/internal/bootconfig"
)

// agentTimeout bounds the agent's work for one container: reading its
// index and TOC, mounting, pivoting. It fetches no chunk meanwhile.
const agentTimeout = 2 * time.Minute

// initViaAgent runs the workload through the node agent if its socket is
// at /run/bootfs (see DESIGN, "With the node agent"): the agent makes the
// image this container's root, then boot execs the workload in its own
// place, so it becomes PID 1 as in a plain container. done is false when
// there is no agent to ask (no socket, or none listening on it): Init
// then mounts the image itself. Otherwise it returns only on failure,
// with the workload's would-be exit status or an error.
func initViaAgent(argv []string, opts InitOptions) (status int, done bool, err error) {
	start := time.Now()
	log := opts.Logger
	sock := agent.SocketPath("")
	if !waitSocket(sock, agentWait, log) {
		return 0, false, nil
	}
	// Read now, parsed once the agent has checked the image: its old
	// root, and this file, are gone then. The agent reads and checks the
	// image's files itself, in the container's root.
	cfgData, cfgErr := os.ReadFile(opts.Config)
	upper, err := agentUpper(opts.Upper)
	if err != nil {
		return 0, true, err
	}
	req := agent.Request{Upper: upper, Started: start.UnixMilli()}
	if opts.Caller == nil {
		// The agent writes them as root; a --user container's boot
		// writes them with its rights, so only its own mode can.
		req.Stats, req.Record = opts.Stats, opts.Record
	}
	rep, err := agent.MountRoot(sock, req, agentTimeout)
	if errors.Is(err, agent.ErrNoAgent) {
		log.Warn("bootfs: the node agent's socket is there but no agent answers; mounting in the container instead", "err", err)
		return 0, false, nil
	}
	if err != nil {
		return 0, true, fmt.Errorf("boot: %w", err)
	}
	log.Info("bootfs: node-agent mode: the node's bootfs-agent serves this container's image (without -v /run/bootfs:/run/bootfs it mounts its own and needs --privileged --device /dev/fuse)")
	warnAgentReports(rep, opts, log)
	if cfgErr != nil {
		return 0, true, fmt.Errorf("boot: read config: %w", cfgErr)
	}
	cfg, err := bootconfig.Load(cfgData)
	if err != nil {
		return 0, true, fmt.Errorf("boot: %s: %w", opts.Config, err)
	}
	img, extraGroups, err := opts.workloadImage(cfg.Image)
	if err != nil {
		return 0, true, err
	}
	err = execWorkload(workloadSpec{
		Argv: argv, Env: os.Environ(), ImageEnv: img.Env,
		User: img.User, WorkingDir: img.WorkingDir, ExtraGroups: extraGroups,
	})
	var ee *ExitError
	if errors.As(err, &ee) {
		fmt.Fprintln(os.Stderr, err)
		return ee.Status, true, nil
	}
	return 0, true, err
}

// agentWait is how long boot waits for the agent's socket when the
// container has the socket directory mounted but no socket is in it yet:
// an agent started beside the container (Compose's depends_on) or being
// replaced.
const agentWait = 10 * time.Second

// waitSocket reports whether sock is a socket, waiting up to wait for it
// if its directory is a mount point of the container's (docker run -v
// DIR:/run/bootfs says the agent is meant).
func waitSocket(sock string, wait time.Duration, log *slog.Logger) bool {
	isSocket := func() bool {
		fi, err := os.Stat(sock)
		return err == nil && fi.Mode().Type() == os.ModeSocket
	}
	if isSocket() || !isMountPoint(filepath.Dir(sock)) {
		return isSocket()
	}
	log.Info("bootfs: waiting for the node agent's socket", "socket", sock, "for", wait)
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if isSocket() {
			return true
		}
	}
	return false
}

// isMountPoint reports whether dir is a mount point of this process's.
func isMountPoint(dir string) bool {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	mounts, err := ParseMountInfo(bytes.NewReader(mi))
	if err != nil {
		return false
	}
	for _, m := range mounts {
		if filepath.Clean(m.Point) == filepath.Clean(dir) {
			return true
		}
	}
	return false
}

// agentUpper returns the writable layer the agent should use: Upper if
// set, else the boot image's upper volume when Docker mounted one (as it
// does for the volume the image declares), so that writes live on disk
// and survive docker restart as in the in-container mode. It prepares the
// directory as that mode does (an empty work directory, a probe write),
// so a full or read-only volume fails here with a clear error. Empty
// means the agent's tmpfs.
func agentUpper(upper string) (string, error) {
	if upper == "" {
		mi, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			return "", fmt.Errorf("boot: %w", err)
		}
		mounts, err := ParseMountInfo(bytes.NewReader(mi))
		if err != nil {
			return "", fmt.Errorf("boot: %w", err)
		}
		if !slices.ContainsFunc(mounts, func(m MountInfo) bool { return m.Point == bootconfig.UpperDir }) {
			return "", nil
		}
		upper = bootconfig.UpperDir
	}
	if _, _, err := prepareUpper(upper); err != nil {
		return "", fmt.Errorf("boot: %w", err)
	}
	return upper, nil
}

// warnAgentReports says which of the BOOTFS_* reports the agent will not
// write for this container, and why. The agent writes BOOTFS_STATS and
// BOOTFS_RECORD as the container ends (boot has exec'd the workload by
// then), on a volume only.
func warnAgentReports(rep agent.Reply, opts InitOptions, log *slog.Logger) {
	asked := opts.Stats != "" || opts.Record != ""
	switch {
	case asked && opts.Caller != nil:
		log.Warn("bootfs: BOOTFS_STATS and BOOTFS_RECORD are not written in node-agent mode for a docker run --user container (the agent would write them as root); run it as root with BOOTFS_USER instead")
	case asked && !rep.Reports:
		log.Warn("bootfs: this node's bootfs-agent does not write BOOTFS_STATS or BOOTFS_RECORD; update it (its /metrics has the node's figures)")
	}
	for _, w := range rep.Warnings {
		log.Warn("bootfs: " + w)
	}
	if opts.Background {
		log.Warn("bootfs: BOOTFS_BACKGROUND is not supported in node-agent mode: the agent fetches only what the node's containers read (in-container mode fills the cache)")
	}
}
