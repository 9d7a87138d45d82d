// Package opener is the one place that turns a store spec (a store URL,
// or a comma-separated failover list of them) and the credentials to
// reach it into a chunk store: each member's backend (local, HTTP, SSH,
// OCI registry), failover over the members, retry, counting and, if
// asked, the node cache, composed once, in that order from the inside
// out.
//
// cmd/* builds the Credentials from flags and the environment; libraries
// take the opened store and never see URLs, files of secrets or the
// environment. It depends on chunkstore, chunkstore/sshstore and
// chunkstore/registry.
package opener

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/registry"
	"github.com/bootfs/bootfs/chunkstore/sshstore"
)

// Credentials are what the stores of a spec need to let a client in.
type Credentials struct {
	// TokenFile holds the bearer token sent to HTTP stores (the file that
	// chunkstore serve --write-token-file reads). Empty sends none.
	TokenFile string
	// CAFile is a PEM file of CA certificates trusted for https stores
	// and registries, besides the system's.
	CAFile string
	// SSHKeys are the private keys that ssh:// stores log in with, and
	// SSHKnownHosts the known_hosts file their host keys are checked
	// against; empty means the files in ~/.ssh.
	SSHKeys       []string
	SSHKnownHosts string
	// RegistryAuthFile is a docker config.json-format file with the
	// credentials of oci:// stores (boot's BOOTFS_REGISTRY_AUTH,
	// mkimage --registry-auth); empty means anonymous.
	RegistryAuthFile string
	// RegistryPlainHTTP allows plain HTTP to a registry that is not on a
	// loopback address (BOOTFS_REGISTRY_PLAIN_HTTP=1,
	// mkimage --registry-plain-http).
	RegistryPlainHTTP bool
}

// WithSSHFromEnv returns c with the ssh keys and known_hosts file that
// BOOTFS_SSH_KEY (a comma-separated list) and BOOTFS_SSH_KNOWN_HOSTS
// name, looked up with getenv (os.Getenv in cmd/*): the variables that
// mkimage and boot both take. A variable that is unset leaves its field
// as it is.
func (c Credentials) WithSSHFromEnv(getenv func(string) string) Credentials {
	if keys := sshstore.ParseKeyList(getenv(sshstore.EnvKeys)); len(keys) > 0 {
		c.SSHKeys = keys
	}
	if kh := getenv(sshstore.EnvKnownHosts); kh != "" {
		c.SSHKnownHosts = kh
	}
	return c
}

// Options configure Open. The zero value opens a store for reading, with
// the default retries and no cache.
type Options struct {
	Credentials Credentials
	// Digest is the hash that chunk IDs are checked against.
	Digest casync.Digest
	// Write opens the stores for a writer that computed every chunk ID
	// from the bytes it stores (mkimage): a local directory is created if
	// missing and not synced chunk by chunk (see chunkstore.Sync), and the
	// clients do not hash what they send again. Every server and every
	// reader still verifies.
	Write bool
	// Retry configures retries and the per-attempt timeout.
	Retry chunkstore.RetryOptions
	// Cache, if set, is a directory in which chunks read are cached
	// (chunkstore.Cache), configured by CacheOptions (whose Digest and
	// Logger Open sets; a zero LockWait is Retry's Timeout).
	Cache        string
	CacheOptions chunkstore.CacheOptions
	// SSH tunes ssh:// stores (sessions, timeouts); Open sets the keys,
	// known_hosts, digest, trusted writes and logger.
	SSH sshstore.ClientOptions
	// Registry tunes oci:// stores (packs, parallel uploads, the spool
	// directory, DeferKeepAlive for mkimage --push); Open sets the
	// credentials, the CA file, the digest, Write, trusted writes and
	// the logger (see RegistryOptions).
	Registry registry.Options
	// Logger is passed on to the stores; nil discards.
	Logger *slog.Logger
}

// Opened is a store that Open composed, with the layers a caller reports
// on.
type Opened struct {
	// Store is the whole composition: Cache if there is one, else Remote.
	// It is a WriteStore; a store that cannot be written gives errors
	// wrapping chunkstore.ErrReadOnly.
	Store chunkstore.WriteStore
	// Remote is the counted, retried remote: its Stats count the calls
	// made of it (for a cache, the chunks that crossed the network) and
	// the retries under them.
	Remote *chunkstore.Counted
	// Cache is the cache, or nil.
	Cache *chunkstore.Cache
}

// Close closes the stores.
func (o *Opened) Close() error { return o.Store.Close() }

// Open opens the store or failover list of stores that spec names. A
// member of a list that cannot be opened now (an ssh server that is
// down) is opened again when the failover next turns to it: a backup
// store that is down must not stop the others from serving. Only when
// none opens is that an error.
func Open(ctx context.Context, spec string, opts Options) (*Opened, error) {
	locs, err := chunkstore.ParseURLs(spec)
	if err != nil {
		return nil, err
	}
	b, err := newBackends(opts)
	if err != nil {
		return nil, err
	}
	var remote chunkstore.Store
	if len(locs) == 1 {
		if remote, err = b.open(ctx, locs[0]); err != nil {
			return nil, err
		}
	} else {
		stores := make([]chunkstore.Store, 0, len(locs))
		var errs []error
		for _, l := range locs {
			s, err := b.open(ctx, l)
			if err != nil {
				errs = append(errs, err)
				s = &reopening{loc: l, b: b}
			}
			stores = append(stores, s)
		}
		if len(errs) == len(locs) {
			return nil, errors.Join(errs...)
		}
		for _, err := range errs {
			b.log.Warn("chunk store unavailable for now; the others serve, and it is tried again", "err", err)
		}
		remote = chunkstore.NewFailover(stores...)
	}
	ro := opts.Retry
	if ro.Logger == nil {
		ro.Logger = opts.Logger
	}
	counted := chunkstore.NewCountedRetry(remote, ro)
	o := &Opened{Store: counted, Remote: counted}
	if opts.Cache != "" {
		co := opts.CacheOptions
		co.Digest = opts.Digest
		if co.LockWait <= 0 {
			co.LockWait = opts.Retry.Timeout
		}
		if co.Logger == nil {
			co.Logger = opts.Logger
		}
		c, err := chunkstore.NewCache(counted, opts.Cache, co)
		if err != nil {
			counted.Close()
			return nil, err
		}
		o.Store, o.Cache = c, c
	}
	return o, nil
}

// Later returns a function that opens spec with opts, with the digest it
// is given: for a caller that learns the digest from an index it has yet
// to read (boot/lazyfs's Opener).
func Later(spec string, opts Options) func(context.Context, casync.Digest) (*Opened, error) {
	return func(ctx context.Context, d casync.Digest) (*Opened, error) {
		opts.Digest = d
		return Open(ctx, spec, opts)
	}
}

// RegistryOptions returns the options that Open opens an oci:// store
// with: o.Registry with o's credentials, CA file, digest, Write (a writer
// is trusted, as for every store) and logger. mkimage --push opens its
// repository with them to push the boot image.
func (o Options) RegistryOptions() registry.Options {
	ro := o.Registry
	ro.AuthFile = o.Credentials.RegistryAuthFile
	ro.CAFile = o.Credentials.CAFile
	ro.PlainHTTP = o.Credentials.RegistryPlainHTTP
	ro.Digest = o.Digest
	ro.Write = o.Write
	ro.TrustWrites = o.Write
	if ro.Logger == nil {
		ro.Logger = o.Logger
	}
	return ro
}

// backends opens the backend of one location.
type backends struct {
	opts  Options
	token string
	log   *slog.Logger
}

// openSSH opens an ssh:// store; tests replace it.
var openSSH = func(ctx context.Context, loc chunkstore.Location, opts sshstore.ClientOptions) (chunkstore.Store, error) {
	return sshstore.Open(ctx, loc, opts)
}

func newBackends(opts Options) (*backends, error) {
	b := &backends{opts: opts, log: opts.Logger}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if f := opts.Credentials.TokenFile; f != "" {
		t, err := chunkstore.ReadTokenFile(f)
		if err != nil {
			return nil, err
		}
		b.token = t
	}
	return b, nil
}

func (b *backends) open(ctx context.Context, loc chunkstore.Location) (chunkstore.Store, error) {
	o := b.opts
	switch loc.Scheme {
	case "file":
		return chunkstore.NewLocal(loc.Path, chunkstore.LocalOptions{
			Digest: o.Digest, Create: o.Write, NoSync: o.Write, TrustWrites: o.Write, Logger: o.Logger,
		})
	case "http", "https":
		return chunkstore.NewHTTP(loc.URL, chunkstore.HTTPOptions{
			Digest: o.Digest, Token: b.token, CAFile: o.Credentials.CAFile, TrustWrites: o.Write,
		})
	case "ssh":
		so := o.SSH
		so.IdentityFiles = o.Credentials.SSHKeys
		so.KnownHostsFile = o.Credentials.SSHKnownHosts
		so.Digest = o.Digest
		so.TrustWrites = o.Write
		if so.Logger == nil {
			so.Logger = o.Logger
		}
		s, err := openSSH(ctx, loc, so)
		if err != nil {
			return nil, fmt.Errorf("open store %s: %w", loc, err)
		}
		return s, nil
	case "oci":
		s, err := registry.New(ctx, loc.String(), o.RegistryOptions())
		if err != nil {
			return nil, fmt.Errorf("open store %s: %w", loc, err)
		}
		return s, nil
	}
	return nil, fmt.Errorf("open store %s: %w: unknown scheme %q", loc, chunkstore.ErrBadURL, loc.Scheme)
}
