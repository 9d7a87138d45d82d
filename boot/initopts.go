package boot

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/bootfs/bootfs/chunkstore"
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
	// Upper is a directory for the overlay's writable layer
	// (BOOTFS_UPPER). Empty means a tmpfs. It must not be on an overlayfs
	// (use a volume).
	Upper string
	// Stats is a file to write Stats to as JSON at exit and on SIGUSR1
	// (BOOTFS_STATS).
	Stats string
	// Record is a file to write the list of image files the workload
	// read to, at exit and on SIGUSR1 (BOOTFS_RECORD): the input of
	// mkimage --prefetch. See Recorder.
	Record string
	// CAFile is a PEM file of CA certificates trusted for https stores,
	// besides the system's (BOOTFS_CA_FILE).
	CAFile string
	// Background fetches the whole image into the cache after the
	// workload starts, at low priority (BOOTFS_BACKGROUND=1).
	Background bool
	// User overrides the image's User (BOOTFS_USER): name or uid, with
	// an optional :group, resolved in the image's /etc/passwd and
	// /etc/group. docker run --user UID[:GID] works too (see Caller); a
	// --user NAME fails in Docker before boot runs, as the boot image has
	// no /etc/passwd.
	User string
	// Caller is who started boot, if a non-root user did and boot runs
	// setuid root (docker run --user; see SetuidCaller). The workload then
	// runs as Caller, and ConfineToCaller must have checked the options.
	Caller *Caller
	// confined records that ConfineToCaller accepted the options.
	confined bool
	// WorkingDir overrides the image's working directory. Init takes it
	// from its own working directory when that is not "/": docker run -w
	// sets that.
	WorkingDir string
	// SSHKeys and SSHKnownHosts configure ssh:// stores
	// (BOOTFS_SSH_KEY, a comma-separated list, and
	// BOOTFS_SSH_KNOWN_HOSTS).
	SSHKeys       []string
	SSHKnownHosts string
	// Dialers open stores of schemes chunkstore does not know, such as
	// ssh (see chunkstore.Options); cmd/boot sets one for ssh built from
	// SSHKeys and SSHKnownHosts.
	Dialers map[string]chunkstore.Dialer
	// Workdir is where init makes its mounts (default /.bootfs).
	Workdir string
	// Reader tunes fetching.
	Reader ReaderOptions
	// Logger receives init's log; nil discards.
	Logger *slog.Logger
	// Debug is BOOTFS_LOG=debug: the caller builds Logger at debug level.
	Debug bool
}

// Environment variables boot reads as init. All of them are removed
// from the workload's environment.
const (
	EnvStore         = "BOOTFS_STORE"
	EnvCache         = "BOOTFS_CACHE"
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
		Store:         strings.TrimSpace(getenv(EnvStore)),
		Cache:         getenv(EnvCache),
		Upper:         getenv(EnvUpper),
		Stats:         getenv(EnvStats),
		Record:        getenv(EnvRecord),
		CAFile:        getenv(EnvCAFile),
		SSHKnownHosts: getenv(EnvSSHKnownHosts),
		User:          getenv(EnvUser),
	}
	switch v := getenv(EnvLog); v {
	case "", "info":
	case "debug":
		o.Debug = true
	default:
		return InitOptions{}, fmt.Errorf("boot: %s=%q: want debug or info", EnvLog, v)
	}
	switch v := getenv(EnvBackground); v {
	case "", "0", "false":
	case "1", "true":
		o.Background = true
	default:
		return InitOptions{}, fmt.Errorf("boot: %s=%q: want 1 or 0", EnvBackground, v)
	}
	o.SSHKeys = sshstore.ParseKeyList(getenv(EnvSSHKey))
	if v := getenv(EnvTimeout); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return InitOptions{}, fmt.Errorf("boot: %s=%q: want a positive duration such as 30s", EnvTimeout, v)
		}
		o.Reader.Timeout = d
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

// workloadEnv returns the container's environment for the workload:
// without BOOTFS_* variables, and with HOME set to the user's home when
// it is missing, or when it is "/" only because the boot image has no
// /etc/passwd for the runtime to take it from (imageEnv, the original
// image's Env, does not set it).
func workloadEnv(environ, imageEnv []string, home string) []string {
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
		if kv == "HOME=/" && !imageHome && home != "/" {
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
