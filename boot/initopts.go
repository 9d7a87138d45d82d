package boot

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/bootfs/bootfs/boot/lazyfs"
	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/opener"
	"github.com/bootfs/bootfs/chunkstore/sshstore"
	"github.com/bootfs/bootfs/internal/bootconfig"
)

// InitOptions configure Init. The zero value runs a standard boot image:
// every path defaults to its place under /.bootfs. Each field maps to one
// BOOTFS_* variable (see InitOptionsFromEnv).
type InitOptions struct {
	// Config is config.json (default bootconfig.Path).
	Config string
	// Index and TOC are the image's caidx and TOC (defaults
	// bootconfig.IndexPath and bootconfig.TOCPath).
	Index, TOC string
	// Store overrides the config's chunk store URL list (BOOTFS_STORE).
	Store string
	// Cache is the chunk cache directory (BOOTFS_CACHE, default
	// bootconfig.CacheDir). "none" disables the cache.
	Cache string
	// CacheMax caps the cache's chunk files, across every container
	// sharing the cache volume (BOOTFS_CACHE_MAX=SIZE, such as 2g). Zero
	// means no cap.
	CacheMax int64
	// Upper is a directory for the overlay's writable layer
	// (BOOTFS_UPPER). Empty means Workdir/upper, the boot image's volume
	// (a tmpfs, with a warning, where no volume is mounted there). It
	// must not be on an overlayfs (use a volume).
	Upper string
	// Stats is a file to write Stats to as JSON at exit and on SIGUSR1
	// (BOOTFS_STATS).
	Stats string
	// Record is a file to write the list of image files the workload
	// read, and the 64 KiB blocks of each read, to, at exit and on
	// SIGUSR1 (BOOTFS_RECORD): the input of mkimage --prefetch. See
	// Recorder.
	Record string
	// Background fetches the whole image into the cache after the
	// workload starts, at low priority (BOOTFS_BACKGROUND=1).
	Background bool
	// User is the workload's user when boot starts as root
	// (BOOTFS_USER): name or uid, with an optional :group, resolved in
	// the image's /etc/passwd and /etc/group. Empty means the user Docker
	// started boot as (see InitOptions.workloadImage).
	User string
	// Caller is who started boot, if a non-root user did and boot runs
	// setuid root (the image's USER or docker run --user; see
	// SetuidCaller). The workload then runs as Caller, and
	// ConfineToCaller must have checked the options.
	Caller *Caller
	// confined records that ConfineToCaller accepted the options.
	confined bool
	// WorkingDir overrides the image's working directory. Init takes it
	// from its own working directory when that is not "/": docker run -w
	// sets that.
	WorkingDir string
	// Credentials let boot into the stores: the CA file trusted for https
	// stores and registries besides the system's (BOOTFS_CA_FILE), and
	// the keys and known_hosts of ssh:// stores (BOOTFS_SSH_KEY, a
	// comma-separated list, and BOOTFS_SSH_KNOWN_HOSTS). cmd/boot adds
	// the registry's (BOOTFS_REGISTRY_AUTH, BOOTFS_REGISTRY_PLAIN_HTTP),
	// which a setuid boot refuses.
	Credentials opener.Credentials
	// Open opens the image's store, the URL list of the config (or
	// Store), with the options Init composes; nil means opener.Open.
	Open func(ctx context.Context, spec string, opts opener.Options) (*opener.Opened, error)
	// Retry configures the store's retries; BOOTFS_TIMEOUT sets its
	// per-attempt Timeout.
	Retry chunkstore.RetryOptions
	// Workdir is where init makes its mounts (default /.bootfs).
	Workdir string
	// Reader tunes fetching.
	Reader lazyfs.ReaderOptions
	// Logger receives init's log; nil discards.
	Logger *slog.Logger
	// LogLevel is the level the caller builds Logger at (BOOTFS_LOG):
	// warnings by default, so a normal run prints nothing of boot's own;
	// info adds the stats line at exit, which BOOTFS_STATS also asks
	// for; debug logs the start-up steps too.
	LogLevel slog.Level
}

// Environment variables boot reads as init. All of them are removed
// from the workload's environment.
const (
	EnvStore         = "BOOTFS_STORE"
	EnvCache         = "BOOTFS_CACHE"
	EnvCacheMax      = "BOOTFS_CACHE_MAX"
	EnvUpper         = "BOOTFS_UPPER"
	EnvLog           = "BOOTFS_LOG"
	EnvStats         = "BOOTFS_STATS"
	EnvBackground    = "BOOTFS_BACKGROUND"
	EnvSSHKey        = sshstore.EnvKeys
	EnvSSHKnownHosts = sshstore.EnvKnownHosts
	EnvTimeout       = "BOOTFS_TIMEOUT"
	EnvUser          = "BOOTFS_USER"
	EnvRecord        = "BOOTFS_RECORD"
	EnvCAFile        = "BOOTFS_CA_FILE"
	envPrefix        = "BOOTFS_"
)

// InitOptionsFromEnv reads the BOOTFS_* variables through getenv
// (os.Getenv in production). An unknown BOOTFS_LOG or a bad value is an
// error naming the variable.
func InitOptionsFromEnv(getenv func(string) string) (InitOptions, error) {
	o := InitOptions{
		Store:       strings.TrimSpace(getenv(EnvStore)),
		Cache:       getenv(EnvCache),
		Upper:       getenv(EnvUpper),
		Stats:       getenv(EnvStats),
		Record:      getenv(EnvRecord),
		Credentials: opener.Credentials{CAFile: getenv(EnvCAFile)}.WithSSHFromEnv(getenv),
		User:        getenv(EnvUser),
	}
	switch v := getenv(EnvLog); v {
	case "":
		o.LogLevel = slog.LevelWarn
		if o.Stats != "" {
			o.LogLevel = slog.LevelInfo
		}
	case "info":
		o.LogLevel = slog.LevelInfo
	case "debug":
		o.LogLevel = slog.LevelDebug
	default:
		return InitOptions{}, fmt.Errorf("boot: %s=%q: want info or debug (the default logs only warnings and errors)", EnvLog, v)
	}
	switch v := getenv(EnvBackground); v {
	case "", "0", "false":
	case "1", "true":
		o.Background = true
	default:
		return InitOptions{}, fmt.Errorf("boot: %s=%q: want 1 or 0", EnvBackground, v)
	}
	if v := getenv(EnvCacheMax); v != "" {
		n, err := casync.ParseSize(v)
		if err != nil || n > 1<<62 {
			return InitOptions{}, fmt.Errorf("boot: %s=%q: want a size in bytes, optionally with a k, m or g suffix, such as 2g", EnvCacheMax, v)
		}
		o.CacheMax = int64(n)
	}
	if v := getenv(EnvTimeout); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return InitOptions{}, fmt.Errorf("boot: %s=%q: want a positive duration such as 30s", EnvTimeout, v)
		}
		o.Retry.Timeout = d
	}
	return o, nil
}

func (o InitOptions) withDefaults() InitOptions {
	if o.Config == "" {
		o.Config = bootconfig.Path
	}
	if o.Index == "" {
		o.Index = bootconfig.IndexPath
	}
	if o.TOC == "" {
		o.TOC = bootconfig.TOCPath
	}
	switch o.Cache {
	case "":
		o.Cache = bootconfig.CacheDir
	case "none":
		o.Cache = ""
	}
	if o.Workdir == "" {
		o.Workdir = bootconfig.Dir
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// ConfineToCaller makes options safe for a boot that o.Caller started
// setuid root; it does nothing when o.Caller is nil. The Caller must get
// no more from boot than mounting the image and running its workload as
// the Caller:
//
//   - BOOTFS_USER is refused: the workload runs as the Caller.
//   - BOOTFS_UPPER is refused: overlayfs empties its work directory with
//     the mounter's (root's) rights, and the Caller could swap the path
//     for a symlink to any directory in between.
//   - BOOTFS_CACHE other than the image's own /.bootfs/cache (or "none")
//     is refused: boot creates, renames and evicts files there as root.
//   - The files BOOTFS_SSH_KEY, BOOTFS_SSH_KNOWN_HOSTS and BOOTFS_CA_FILE
//     name are opened now with the Caller's rights, and the options then
//     name the open files (/proc/self/fd/N), so root never opens a path
//     the Caller chose. An ssh store needs both set explicitly: the
//     defaults under $HOME would be read as root.
//   - BOOTFS_STATS and BOOTFS_RECORD are written with the Caller's rights.
//
// It returns a function that closes the files it opened.
func (o *InitOptions) ConfineToCaller() (closeFiles func(), err error) {
	var files []*os.File
	closeFiles = func() {
		for _, f := range files {
			f.Close()
		}
	}
	c := o.Caller
	if c == nil {
		return closeFiles, nil
	}
	refuse := func(env, why string) error {
		return fmt.Errorf("%w (uid %d, docker run --user): %s is not allowed then: %s", ErrSetuid, c.UID, env, why)
	}
	if o.User != "" {
		return closeFiles, refuse(EnvUser, "the workload runs as the --user that started the container")
	}
	if o.Upper != "" {
		return closeFiles, refuse(EnvUpper, "overlayfs would clean its work directory there with root's rights; run as root (BOOTFS_USER instead of --user) to use it")
	}
	switch filepath.Clean(o.Cache) {
	case ".", "none", filepath.Clean(o.withDefaults().Workdir) + "/cache":
	default:
		return closeFiles, refuse(EnvCache, "boot writes the cache as root; mount the cache volume on /.bootfs/cache instead")
	}
	open := func(env, name string) (string, error) {
		f, err := c.openFile(name)
		if err != nil {
			return "", fmt.Errorf("boot: %s: %w (it is opened with the rights of uid %d, who started the container)", env, err, c.UID)
		}
		files = append(files, f)
		return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())), nil
	}
	keys := make([]string, len(o.Credentials.SSHKeys))
	for i, k := range o.Credentials.SSHKeys {
		if keys[i], err = open(EnvSSHKey, k); err != nil {
			closeFiles()
			return func() {}, err
		}
	}
	o.Credentials.SSHKeys = keys
	for _, p := range []struct {
		env  string
		name *string
	}{{EnvSSHKnownHosts, &o.Credentials.SSHKnownHosts}, {EnvCAFile, &o.Credentials.CAFile}} {
		if *p.name == "" {
			continue
		}
		if *p.name, err = open(p.env, *p.name); err != nil {
			closeFiles()
			return func() {}, err
		}
	}
	o.confined = true
	return closeFiles, nil
}

// checkCallerStore refuses an ssh store for a Caller without explicit
// keys and known_hosts: the ssh client's defaults, under $HOME, would be
// read with root's rights.
func (o *InitOptions) checkCallerStore(store string) error {
	if o.Caller == nil {
		return nil
	}
	if !o.confined {
		return fmt.Errorf("%w: InitOptions.ConfineToCaller was not called", ErrSetuid)
	}
	locs, err := chunkstore.ParseURLs(store)
	if err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	for _, l := range locs {
		if strings.EqualFold(l.Scheme, "ssh") && (len(o.Credentials.SSHKeys) == 0 || o.Credentials.SSHKnownHosts == "") {
			return fmt.Errorf("%w (uid %d, docker run --user): the ssh store %s needs %s and %s set explicitly",
				ErrSetuid, o.Caller.UID, l, EnvSSHKey, EnvSSHKnownHosts)
		}
	}
	return nil
}

// workloadEnv returns the container's environment for the workload:
// without BOOTFS_* variables, and with HOME set to the user's home when
// it is missing, or when it is only what the runtime gave boot's own
// user (imageEnv, the original image's Env, does not set it): "/" where
// the boot image has no /etc/passwd, else rootHome, the home of root,
// whom Docker starts boot as.
func workloadEnv(environ, imageEnv []string, home, rootHome string) []string {
	imageHome := false
	for _, kv := range imageEnv {
		if strings.HasPrefix(kv, "HOME=") {
			imageHome = true
		}
	}
	out := make([]string, 0, len(environ)+1)
	hasHome := false
	for _, kv := range environ {
		if strings.HasPrefix(kv, envPrefix) {
			continue
		}
		if (kv == "HOME=/" || rootHome != "" && kv == "HOME="+rootHome) && !imageHome && kv != "HOME="+home {
			continue
		}
		if strings.HasPrefix(kv, "HOME=") {
			hasHome = true
		}
		out = append(out, kv)
	}
	if !hasHome {
		out = append(out, "HOME="+home)
	}
	return out
}

// getenvFrom looks a variable up in an environment list.
func getenvFrom(env []string, name string) string {
	v := ""
	for _, kv := range env {
		if k, val, ok := strings.Cut(kv, "="); ok && k == name {
			v = val
		}
	}
	return v
}

func orDiscard(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}
